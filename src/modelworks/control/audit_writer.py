"""Writes audit events that must not slow the request that caused them (failed authentications).

Events wait in a bounded queue and are appended in batches by one task. A flood beyond the queue is not
written entry by entry: it is counted, and one `auth.failed.suppressed` entry records how many were dropped.
"""

from __future__ import annotations

import asyncio
import logging

from modelworks.control.audit import AuditLog, Event

log = logging.getLogger("modelworks.audit")


class AuditWriter:
    def __init__(self, audit: AuditLog, capacity: int = 1000) -> None:
        self.audit = audit
        self.queue: asyncio.Queue[Event] = asyncio.Queue(capacity)
        self.suppressed = 0
        self._task: asyncio.Task | None = None

    def submit(self, event: Event) -> None:
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.suppressed += 1

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def flush(self, first: list[Event] | None = None) -> None:
        batch = list(first or [])
        while not self.queue.empty():
            batch.append(self.queue.get_nowait())
        if self.suppressed:
            batch.append(Event("auth.failed.suppressed", outcome="denied", detail={"count": self.suppressed}))
            self.suppressed = 0
        if batch:
            try:
                await asyncio.to_thread(self.audit.append, batch)
            except BaseException:
                for event in batch:  # keep them for the next try (counted if the queue fills meanwhile)
                    self.submit(event)
                raise

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        await self.flush()

    async def _run(self) -> None:
        while True:
            first = await self.queue.get()
            try:
                await self.flush([first])
            except Exception:  # noqa: BLE001 - the store may be down for a moment; the events wait for the next try
                log.warning("could not write audit events; will retry", exc_info=True)
                await asyncio.sleep(1)
            await asyncio.sleep(0.2)
