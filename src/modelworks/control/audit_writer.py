"""Writes audit events that must not slow the request that caused them (failed authentications).

Events wait in a bounded queue and are appended in batches by one task; `submit` gives a future that is done
when the event's batch has committed, so a 401 is answered only once its audit entry is stored (the caller waits
a bounded time, and not at all while the store is failing: a flood of bad keys must not hold connections). A
flood beyond the queue is not written
entry by entry: it is counted, and one `auth.failed.suppressed` entry records how many were dropped (the
requests that were counted wait for that entry).
"""

from __future__ import annotations

import asyncio
import logging

from modelworks.control.audit import AuditLog, Event

log = logging.getLogger("modelworks.audit")


class AuditWriter:
    def __init__(self, audit: AuditLog, capacity: int = 1000) -> None:
        self.audit = audit
        self.queue: asyncio.Queue[tuple[Event, asyncio.Future]] = asyncio.Queue(capacity)
        self.suppressed = 0
        self._suppressed_done: asyncio.Future | None = None  # resolved when the count's entry is stored
        self._task: asyncio.Task | None = None
        self.healthy = True  # the last write succeeded: a failed authentication waits for its entry

    def submit(self, event: Event) -> asyncio.Future:
        """Queue the event; the future is done when it (or the count of a flood it was part of) is stored."""
        done = asyncio.get_running_loop().create_future()
        try:
            self.queue.put_nowait((event, done))
        except asyncio.QueueFull:
            self.suppressed += 1
            if self._suppressed_done is None:
                self._suppressed_done = done
            return self._suppressed_done
        return done

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def flush(self, first: tuple[Event, asyncio.Future] | None = None) -> None:
        batch = [first] if first is not None else []
        while not self.queue.empty():
            batch.append(self.queue.get_nowait())
        if self.suppressed:
            done = self._suppressed_done or asyncio.get_running_loop().create_future()
            batch.append((Event("auth.failed.suppressed", outcome="denied", detail={"count": self.suppressed}),
                          done))
            self.suppressed, self._suppressed_done = 0, None
        if not batch:
            return
        writing = asyncio.ensure_future(asyncio.to_thread(self.audit.append, [event for event, _ in batch]))
        try:
            await asyncio.shield(writing)
        except asyncio.CancelledError:  # stopping: the thread may be committing; let it end, never write twice
            try:
                await writing
            except Exception:  # noqa: BLE001 - nothing was written: the events are lost with the process
                log.warning("audit events could not be written at shutdown", exc_info=True)
            else:
                _resolve(batch)
            raise
        except BaseException:
            self.healthy = False
            for item in batch:  # keep them for the next try (counted if the queue fills meanwhile)
                try:
                    self.queue.put_nowait(item)
                except asyncio.QueueFull:
                    self.suppressed += 1
                    if self._suppressed_done is None:
                        self._suppressed_done = item[1]
                    elif not item[1].done():  # its request waits no longer: it is counted
                        item[1].set_result(None)
            raise
        self.healthy = True
        _resolve(batch)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task  # a write under way ends first (see flush)
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 - its failure was logged
                pass
        await self.flush()

    async def _run(self) -> None:
        while True:
            first = await self.queue.get()
            try:
                await self.flush(first)
            except Exception:  # noqa: BLE001 - the store may be down for a moment; the events wait for the next try
                log.warning("could not write audit events; will retry", exc_info=True)
                await asyncio.sleep(1)
            await asyncio.sleep(0.05)


def _resolve(batch: list[tuple[Event, asyncio.Future]]) -> None:
    for _, done in batch:
        if not done.done():
            done.set_result(None)
