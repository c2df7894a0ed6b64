"""One call's way through a deployment's pool: pick a backend, try it, and on a failure before the first byte try
another eligible one, within the retry budget (`max_attempts`) and a per-try timeout.

Retried: connection errors and timeouts, 5xx, 429 (that backend is cooled for its `retry-after`), and a local
backend whose queue is full. Not retried: the client's own errors (4xx), and anything after the first byte of a
stream has reached the client: a stream that breaks or stalls (`stream_idle_timeout_s`) after that ends with an
error event, and its backend's failure counts towards its circuit breaker.
"""

from __future__ import annotations

import asyncio
import time
from typing import AsyncIterator, Callable

from modelworks.backends.base import Delta, Embeddings, EmbeddingTask, Generation, GenerationTask
from modelworks.errors import (
    ModelworksError, Overloaded, Unavailable, UpstreamError, UpstreamRateLimited, UpstreamTimeout,
)
from modelworks.routing.pool import Member, Pool
from modelworks.settings import RoutingSettings


class Dispatch:
    """Routes one call. After it, `served` is the member that answered (None if none did), `attempts` the tries."""

    __slots__ = ("pool", "config", "metrics", "served", "attempts", "capable", "tracing", "parent_span", "_span",
                 "_task", "last")

    def __init__(self, pool: Pool, config: RoutingSettings, metrics=None,
                 capable: Callable[[Member], bool] | None = None, tracing=None) -> None:
        self.pool = pool
        self.config = config
        self.metrics = metrics
        self.capable = capable
        self.served: Member | None = None
        self.last: Member | None = None  # the member tried last (named on an error answer)
        self.attempts = 0
        self.tracing = tracing  # modelworks.tracing.Tracing, when on: a client span per try
        self.parent_span = None
        self._span = None
        self._task = None

    def headers(self) -> dict[str, str]:
        """The serving backend and its region; on a failed call, the backend tried last."""
        m = self.served or self.last
        if m is None:
            return {}
        return {"x-ms-region": m.region, "x-modelworks-backend": m.name}

    # -- whole answers -----------------------------------------------------------------------------------------------

    async def embed(self, task: EmbeddingTask) -> Embeddings:
        return await self.generate(task, embed=True)

    async def generate(self, task, embed: bool = False):
        """The whole answer (or, with `embed`, the embeddings). One coroutine: every await layer costs on every
        resumption of the call, so the loop is here rather than behind a helper."""
        self._task = task
        tried: set[str] = set()
        last: BaseException | None = None
        while self.attempts < self.config.max_attempts:
            member = self._pick(tried, last)
            tried.add(member.name)
            started = time.monotonic()
            member.taken(started)
            try:
                backend = member.backend
                if backend.honours_deadline:
                    task.deadline = started + self.config.try_timeout_s  # one timer, the backend's own
                    result = await (backend.embed(task) if embed else backend.generate(task))
                else:
                    async with asyncio.timeout(self.config.try_timeout_s):
                        result = await (backend.embed(task) if embed else backend.generate(task))
            except BaseException as exc:  # noqa: BLE001 - classified, then retried or raised
                member.released()
                last = self._failed(member, exc)
                if last is None:
                    raise
                continue
            member.released()
            member.succeeded(time.monotonic() - started)
            self._outcome(member, "ok")
            self.served = member
            return result
        raise last

    # -- streams ---------------------------------------------------------------------------------------------------------

    async def stream(self, task: GenerationTask) -> AsyncIterator[Delta]:
        self._task = task
        tried: set[str] = set()
        last: BaseException | None = None
        while True:
            if self.attempts >= self.config.max_attempts:
                raise last
            member = self._pick(tried, last)
            tried.add(member.name)
            started = time.monotonic()
            member.taken(started)
            deltas = member.backend.stream(task)
            try:
                async with asyncio.timeout(self.config.try_timeout_s):
                    first = await anext(deltas)
            except StopAsyncIteration:
                member.released()
                member.succeeded(time.monotonic() - started)
                self._outcome(member, "ok")
                self.served = member
                return
            except BaseException as exc:  # noqa: BLE001 - before the first byte: another backend may answer
                await _close(deltas)
                member.released()
                last = self._failed(member, exc)
                if last is None:
                    raise
                continue
            break
        member.succeeded(time.monotonic() - started)
        self.served = member
        rest = self._rest(member, first, deltas)
        try:
            async for delta in rest:
                yield delta
        finally:
            await rest.aclose()  # at once, not when the collector finds it: it frees the member and the upstream

    async def _rest(self, member: Member, first: Delta, deltas: AsyncIterator[Delta]) -> AsyncIterator[Delta]:
        idle = self.config.stream_idle_timeout_s
        tbt = self.metrics.time_between_tokens if self.metrics is not None else None
        labels = (self.pool.deployment, member.name)
        outcome = "ok"
        watchdog = _IdleWatchdog(idle)
        try:
            yield first
            last_at = time.monotonic()
            while True:
                watchdog.waiting_since = time.monotonic()  # waiting for the backend (not for the client)
                try:
                    delta = await anext(deltas)
                except StopAsyncIteration:
                    return
                except asyncio.CancelledError:
                    if not watchdog.fired:
                        raise  # the client left
                    asyncio.current_task().uncancel()
                    outcome = "stalled"
                    raise Unavailable(f"The backend '{member.name}' sent nothing for {idle:g}s; the stream was "
                                      f"ended.") from None
                except ModelworksError:
                    outcome = "broken"
                    raise
                except Exception as exc:  # noqa: BLE001 - a backend's bug or garbage: the client gets an error event
                    outcome = "broken"
                    raise UpstreamError(f"The backend '{member.name}' broke off the stream "
                                        f"({exc.__class__.__name__}).") from None
                finally:
                    watchdog.waiting_since = None
                now = time.monotonic()
                if tbt is not None:
                    tbt.observe(labels, now - last_at)
                last_at = now
                yield delta
        finally:
            watchdog.stop()
            await _close(deltas)
            member.released()
            if outcome != "ok":
                member.failed(time.monotonic(), self.config.failure_threshold, self.config.cooldown_s)
            self._outcome(member, outcome)

    # -- shared ----------------------------------------------------------------------------------------------------------

    def _pick(self, tried: set[str], last: BaseException | None) -> Member:
        member = self.pool.pick(tried, self.capable)
        if member is None:
            if last is not None:
                raise last
            wait = self.pool.cooling_wait()
            if wait is not None:
                raise Overloaded(f"Every backend of deployment '{self.pool.deployment}' is rate limited for now; "
                                 f"retry after {wait:.1f}s.", retry_after_s=wait)
            raise Unavailable(f"No healthy backend {self.pool.scope.describe()} is available for deployment "
                              f"'{self.pool.deployment}' ({self.pool.unavailable_reason()}).")
        self.attempts += 1
        self.last = member
        if self.tracing is not None:
            self._span = self.tracing.client_span(self.parent_span, f"backend {member.name}", {
                "modelworks.backend": member.name, "cloud.region": member.region,
                "modelworks.provider": member.place.provider, "modelworks.attempt": self.attempts})
            if self._task is not None:
                self._task.trace_headers = self.tracing.headers_for(self._span)
        return member

    def _failed(self, member: Member, exc: BaseException) -> BaseException | None:
        """Book a failed try; return the error to retry after, or None when it must be raised as it is."""
        now = time.monotonic()
        if isinstance(exc, asyncio.CancelledError):
            self._outcome(member, "cancelled")
            return None
        if isinstance(exc, UpstreamRateLimited):
            member.cool(now, exc.retry_after_s)
            self._outcome(member, "rate_limited")
            return exc
        if isinstance(exc, Overloaded):  # a local backend's queue is full: not a failure of the backend
            self._outcome(member, "busy")
            return exc
        if isinstance(exc, (TimeoutError, UpstreamTimeout)):
            member.failed(now, self.config.failure_threshold, self.config.cooldown_s)
            self._outcome(member, "timeout")
            return Unavailable(f"The backend '{member.name}' did not answer within "
                               f"{self.config.try_timeout_s:g}s.")
        if isinstance(exc, Unavailable) or (isinstance(exc, UpstreamError) and exc.status >= 500):
            member.failed(now, self.config.failure_threshold, self.config.cooldown_s)
            self._outcome(member, "error")
            return exc
        if isinstance(exc, ModelworksError):  # the request's own fault (a 4xx): the backend is fine
            self._outcome(member, "refused")
            return None
        member.failed(now, self.config.failure_threshold, self.config.cooldown_s)
        self._outcome(member, "error")
        return None

    def _outcome(self, member: Member, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.backend_attempts.inc((member.name, outcome))
        span, self._span = self._span, None
        if span is not None:
            span.set_attribute("modelworks.outcome", outcome)
            if outcome not in ("ok", "refused", "cancelled"):
                self.tracing.failed(span)
            span.end()


class _IdleWatchdog:
    """One timer per stream, not one per delta: it wakes every `idle` seconds and cancels the stream's task only
    when the stream has been waiting for its backend (not for a slow client) for `idle` seconds."""

    __slots__ = ("idle", "waiting_since", "fired", "_task", "_loop", "_handle")

    def __init__(self, idle: float) -> None:
        self.idle = idle
        self.waiting_since: float | None = None
        self.fired = False
        self._task = asyncio.current_task()
        self._loop = asyncio.get_running_loop()
        self._handle = self._loop.call_later(idle, self._check)

    def _check(self) -> None:
        since = self.waiting_since
        now = time.monotonic()
        if since is not None and now - since >= self.idle:
            self.fired = True
            self._task.cancel()
            return
        self._handle = self._loop.call_later(self.idle - (now - since) if since is not None else self.idle,
                                             self._check)

    def stop(self) -> None:
        self._handle.cancel()


async def _close(deltas) -> None:
    try:
        await deltas.aclose()
    except Exception:  # noqa: BLE001 - closing a broken stream may fail again; it is being dropped anyway
        pass
