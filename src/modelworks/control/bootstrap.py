"""First start: migrate the store, make the default project, and make sure there is an admin key.

`MODELWORKS_API_KEY` (or `api_key` in the config), when set, is registered as an admin key; otherwise, when no
admin key exists yet, one is generated and returned so that it can be printed once.
"""

from __future__ import annotations

from sqlalchemy.exc import IntegrityError

from modelworks.control.keys import KeyService, key_hash
from modelworks.control.principal import ADMIN
from modelworks.control.projects import DEFAULT_PROJECT, ProjectService
from modelworks.store.db import Database


def bootstrap(db: Database, configured_key: str | None) -> str | None:
    """Return a newly generated admin key (to print once), or None."""
    db.upgrade()
    ProjectService(db).ensure_default()
    keys = KeyService(db)
    if configured_key:
        if not keys.exists(key_hash(configured_key)):
            try:
                keys.create(DEFAULT_PROJECT, ADMIN, "bootstrap (MODELWORKS_API_KEY)", key=configured_key)
            except IntegrityError:
                pass  # another replica registered it at the same moment
        return None
    if keys.any_admin():
        return None
    return keys.create(DEFAULT_PROJECT, ADMIN, "bootstrap (first start)").key
