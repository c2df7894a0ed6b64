"""Finished responses are written in groups: the saves that arrive while a write is in flight go together in
the next one, with one thread hop and one transaction (group commit). Each caller still waits for its own
response to be committed, so an answer never goes out before what it says is stored."""

from __future__ import annotations

import asyncio
import logging

log = logging.getLogger("modelworks.responses")


class ResponseWriter:
    def __init__(self, store) -> None:
        self.store = store
        self._pending: list[tuple[tuple, asyncio.Future]] = []
        self._task: asyncio.Task | None = None

    async def write(self, record: tuple) -> None:
        """(project, body, input items, output items, conversation id): committed when this returns."""
        future = asyncio.get_running_loop().create_future()
        self._pending.append((record, future))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._drain())
        await asyncio.shield(future)  # a caller that is cancelled does not cancel the others' write

    async def _drain(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                await asyncio.to_thread(self.store.insert_finished, [record for record, _ in batch])
            except Exception as exc:  # noqa: BLE001 - one bad record must not fail the others: one by one
                if len(batch) == 1:
                    _settle(batch, exc)
                    continue
                log.warning("a group of %d responses failed to insert; inserting one by one", len(batch))
                for entry in batch:
                    try:
                        await asyncio.to_thread(self.store.insert_finished, [entry[0]])
                    except Exception as exc:  # noqa: BLE001 - that one's caller gets the error
                        _settle([entry], exc)
                    else:
                        _settle([entry])
                continue
            _settle(batch)


def _settle(batch: list, exc: BaseException | None = None) -> None:
    for _, future in batch:
        if future.done():
            continue
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(None)
