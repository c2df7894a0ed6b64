"""Times as the store keeps them (aware UTC datetimes; SQLite gives them back naive) and as the API shows them
(Unix seconds)."""

from __future__ import annotations

from datetime import datetime, timezone


def now() -> datetime:
    return datetime.now(timezone.utc)


def aware(value: datetime) -> datetime:
    """A stored time as an aware UTC datetime (SQLite's come back naive)."""
    return value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)


def ts(value: datetime | None) -> int | None:
    """Unix seconds, or None."""
    return None if value is None else int(aware(value).timestamp())
