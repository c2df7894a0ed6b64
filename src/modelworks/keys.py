"""The bootstrap API key: `MODELWORKS_API_KEY` when set, else generated at first start, stored only hashed."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from modelworks.policies.auth import hash_key

KEY_FILE = "bootstrap-key.sha256"


@dataclass(frozen=True)
class BootstrapKey:
    hash: str
    new_key: str | None  # the clear key, only when it was generated just now (to be printed once)
    source: str


def bootstrap_key(configured: str | None, data_dir: Path) -> BootstrapKey:
    if configured:
        return BootstrapKey(hash_key(configured), None, "MODELWORKS_API_KEY (or api_key in the config)")
    path = data_dir / KEY_FILE
    if path.exists():
        return BootstrapKey(path.read_text().strip(), None, str(path))
    key = "mw-" + secrets.token_urlsafe(32)
    data_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(hash_key(key) + "\n")
    os.replace(tmp, path)
    return BootstrapKey(hash_key(key), key, str(path))
