"""Draining a replica before it stops (SIGTERM): readiness fails at once, new work is refused with a retryable 503,
the answers and streams in flight get up to `drain_timeout_s` to finish, and what is still running then is ended
cleanly (a stream with an SSE error event and its end, an answer with a 503), before the server stops and the
lifespan flushes metering and audit.

The server keeps listening while it drains: a balancer that has not yet seen the failed readiness still reaches it,
and its clients get an answer they can retry (`retry-after`, and `connection: close` so that their next request
opens a connection that the balancer sends elsewhere)."""

from __future__ import annotations

import asyncio
import logging
import time

from modelworks.errors import DRAIN_CUT, Unavailable

log = logging.getLogger("modelworks.drain")

SETTLE_S = 5.0  # how long cut work gets to write its last event and end


def draining() -> Unavailable:
    """What a request refused or cut by a draining replica is told: retry (elsewhere)."""
    return Unavailable("This server is restarting; send the request again.",
                       headers={"retry-after": "1", "connection": "close"})


class Drain:
    """The requests in flight, and the drain's state. One per application; used from the event loop only."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.draining = False
        self.cutting = False
        self.tasks: set[asyncio.Task] = set()
        self._idle: asyncio.Event | None = None

    def enter(self, task: asyncio.Task) -> None:
        self.tasks.add(task)

    def leave(self, task: asyncio.Task) -> None:
        self.tasks.discard(task)
        if not self.tasks and self._idle is not None:
            self._idle.set()

    def track(self, task: asyncio.Task) -> None:
        """Work that is not a request (a background response, a batch line) but that the drain waits for too, and
        cuts at its deadline like a request (its own cancel handling ends or gives it back)."""
        self.enter(task)
        task.add_done_callback(self.leave)

    def was_cut(self, task: asyncio.Task | None) -> bool:
        """Whether this request's task was cancelled by the drain's deadline (not by its client leaving)."""
        return self.cutting and task is not None and task in self.tasks

    async def run(self) -> None:
        """Drain: refuse new work, wait for what runs (up to `timeout_s`), then cut what is left."""
        if self.draining:
            return
        self.draining = True
        self._idle = asyncio.Event()
        if not self.tasks:
            self._idle.set()
        started = time.monotonic()
        log.info("draining: %d request(s) in flight, up to %.0f s for them to finish", len(self.tasks), self.timeout_s)
        try:
            await asyncio.wait_for(self._idle.wait(), self.timeout_s)
        except asyncio.TimeoutError:
            self.cutting = True
            left = list(self.tasks)
            log.warning("drain deadline: ending %d request(s) still running", len(left))
            for task in left:
                task.cancel(DRAIN_CUT)  # the message tells cut work from a client that left
            try:
                await asyncio.wait_for(self._idle.wait(), SETTLE_S)
            except asyncio.TimeoutError:
                log.warning("%d request(s) did not end after the drain's deadline", len(self.tasks))
        log.info("drained in %.1f s", time.monotonic() - started)


def draining_server(config, drain: Drain):
    """A uvicorn server that drains on SIGTERM before it stops, and then exits 0. A second SIGTERM, or SIGINT,
    stops it as uvicorn does (in-flight work gets uvicorn's graceful timeout)."""
    import signal

    import uvicorn

    class DrainingServer(uvicorn.Server):
        _loop: asyncio.AbstractEventLoop | None = None
        _drain_requested = False
        _drain_task: asyncio.Task | None = None

        async def startup(self, sockets=None) -> None:
            self._loop = asyncio.get_running_loop()
            await super().startup(sockets)

        def handle_exit(self, sig: int, frame) -> None:
            if sig == signal.SIGTERM and self._loop is not None and not self._drain_requested and not self.should_exit:
                # not recorded as a captured signal: uvicorn would raise it again once stopped (exit 143)
                self._drain_requested = True  # a second SIGTERM stops at once
                self._loop.call_soon_threadsafe(self._begin)
                return
            super().handle_exit(sig, frame)

        def _begin(self) -> None:
            async def drain_then_stop() -> None:
                try:
                    await drain.run()
                finally:
                    self.should_exit = True
            self._drain_task = asyncio.ensure_future(drain_then_stop())

    return DrainingServer(config)
