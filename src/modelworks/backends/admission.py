"""Bounded admission to a pool of workers: a fixed number of slots and a bounded waiting line.

When the line is full a request is refused at once with 429 and a `retry-after` estimated from recent
service times. A waiter that is cancelled (its client left) gives its place back immediately.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import AsyncIterator, Generic, TypeVar

from modelworks.errors import Overloaded

T = TypeVar("T")


class Admission(Generic[T]):
    def __init__(self, name: str, workers: list[T], max_queue: int) -> None:
        self.name = name
        self.max_queue = max_queue
        self.free: asyncio.Queue[T] = asyncio.Queue()
        for worker in workers:
            self.free.put_nowait(worker)
        self.size = len(workers)
        self.waiting = 0
        self.busy = 0
        self.avg_service_s = 1.0

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[T]:
        if self.free.empty() and self.waiting >= self.max_queue:
            depth = (self.waiting + self.busy) / max(1, self.size)
            raise Overloaded(
                f"The model '{self.name}' has {self.waiting} requests waiting, its limit; retry later.",
                retry_after_s=max(1.0, depth * self.avg_service_s))
        self.waiting += 1
        try:
            worker = await self.free.get()
        finally:
            self.waiting -= 1
        self.busy += 1
        started = time.monotonic()
        try:
            yield worker
        finally:
            self.busy -= 1
            self.avg_service_s = 0.8 * self.avg_service_s + 0.2 * (time.monotonic() - started)
            self.free.put_nowait(worker)
