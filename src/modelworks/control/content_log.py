"""The content log: prompt and completion text of the deployments whose policy sets `log_content: true`.

Entries hold the text as the backend and the client saw it (after redaction), expire after the policy's
`content_retention_days`, and are purged by every replica about hourly and at start. They are written in batches
off the request path; a crash can lose the last second's entries (this is a convenience for review, not a
record that must survive: usage and audit are those).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import datetime, timedelta, timezone

import orjson
from sqlalchemy import delete, insert, select

from modelworks.store.db import Database
from modelworks.store.schema import ContentLogEntry

log = logging.getLogger("modelworks.safety")


class ContentLog:
    def __init__(self, db: Database, flush_s: float = 1.0, purge_s: float = 3600.0, leases=None) -> None:
        self.leases = leases  # with leases, one replica at a time purges
        self.db = db
        self.flush_s = flush_s
        self.purge_s = purge_s
        self.pending: list[dict] = []
        self._task: asyncio.Task | None = None

    def record(self, *, project_id: str | None, key_id: str | None, deployment: str, outcome: str | None,
               prompt: list[str], completion: list[str], retention_days: int) -> None:
        at = datetime.now(timezone.utc)
        self.pending.append({"id": "cl_" + uuid.uuid4().hex[:20], "at": at,
                             "expires_at": at + timedelta(days=retention_days), "project_id": project_id,
                             "key_id": key_id, "deployment": deployment, "filter_outcome": outcome,
                             "prompt": orjson.dumps(prompt).decode(), "completion": orjson.dumps(completion).decode()})

    def write(self, rows: list[dict]) -> None:
        with self.db.engine.begin() as conn:
            conn.execute(insert(ContentLogEntry), rows)

    def purge(self, now: datetime | None = None) -> int:
        with self.db.engine.begin() as conn:
            result = conn.execute(delete(ContentLogEntry).where(ContentLogEntry.expires_at <= (now or datetime.now(timezone.utc))))
            return result.rowcount or 0

    def entries(self, project_id: str | None = None, limit: int = 100) -> list[dict]:
        with self.db.session() as s:
            query = select(ContentLogEntry).order_by(ContentLogEntry.at.desc()).limit(limit)
            if project_id is not None:
                query = query.where(ContentLogEntry.project_id == project_id)
            return [{c.name: getattr(r, c.name) for c in ContentLogEntry.__table__.columns} for r in s.scalars(query)]

    async def flush(self) -> None:
        if not self.pending:
            return
        batch, self.pending = self.pending, []
        try:
            await asyncio.to_thread(self.write, batch)
        except BaseException:
            self.pending = batch + self.pending
            raise

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        try:
            await self.flush()
        except Exception:  # noqa: BLE001
            log.warning("could not write the last content log entries", exc_info=True)

    async def _run(self) -> None:
        since_purge = self.purge_s  # purge at start
        while True:
            try:
                if since_purge >= self.purge_s and (self.leases is None or await asyncio.to_thread(
                        self.leases.take, "content_log.purge", timedelta(seconds=2 * self.purge_s + 30))):
                    purged = await asyncio.to_thread(self.purge)
                    if purged:
                        log.info("purged %d expired content log entries", purged)
                    since_purge = 0.0
                await self.flush()
            except Exception:  # noqa: BLE001 - the store may be away for a moment
                log.warning("content log: could not write or purge; will retry", exc_info=True)
            await asyncio.sleep(self.flush_s)
            since_purge += self.flush_s
