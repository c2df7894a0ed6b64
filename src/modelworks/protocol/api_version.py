"""Which `api-version` values the Azure-style paths accept: a real date, not before the first Azure OpenAI
version and not in the future (with or without `-preview`), or `v1`, `latest`, `preview`."""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta, timezone

_DATED = re.compile(r"^(\d{4})-(\d{2})-(\d{2})(-preview)?$")
_NAMED = frozenset({"v1", "latest", "preview"})
FIRST = date(2022, 12, 1)  # the first generally available Azure OpenAI API version


def api_version_supported(version: str) -> bool:
    if version in _NAMED:
        return True
    match = _DATED.match(version)
    if match is None:
        return False
    try:
        day = date(int(match[1]), int(match[2]), int(match[3]))
    except ValueError:  # 2024-13-45
        return False
    # a day of slack for clocks and time zones; a version from the future was never released
    return FIRST <= day <= datetime.now(timezone.utc).date() + timedelta(days=1)
