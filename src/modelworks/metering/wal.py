"""The usage write-ahead log: `modelworks.store.wal.WriteAheadLog` for usage records (one line each, in
`usage.COLUMNS` order; a line written by an older version as an object is turned into that order on replay)."""

from __future__ import annotations

from pathlib import Path

import orjson

from modelworks.metering.usage import COLUMNS
from modelworks.store.wal import Insert, WriteAheadLog


def _upgrade(record) -> bytes | None:
    if isinstance(record, dict):  # written by an older version
        return orjson.dumps([record.get(c) for c in COLUMNS])
    return None


class UsageWAL(WriteAheadLog):
    def __init__(self, directory: Path, insert: Insert, interval: float = 1.0) -> None:
        super().__init__(directory, insert, interval, what="usage records", upgrade=_upgrade)
