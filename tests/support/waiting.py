"""Waiting on conditions, not on the clock: a test polls what it waits for and fails, after a generous deadline,
saying what it waited for and what it last saw. A busy machine only makes such a test slower, never wrong."""

from __future__ import annotations

import asyncio
import time
from typing import Awaitable, Callable, TypeVar

T = TypeVar("T")

DEADLINE_S = 60.0  # generous: a deadline is reached only when the condition will never hold
POLL_S = 0.05


def wait_until(read: Callable[[], T], until: Callable[[T], object] | None = None, *, timeout: float = DEADLINE_S,
               interval: float = POLL_S, what: str = "the condition") -> T:
    """Call `read` until `until(value)` holds (the value's truth when `until` is None); return that value.
    Raise AssertionError naming `what` and the last value read when `timeout` seconds pass first."""
    deadline = time.monotonic() + timeout
    while True:
        value = read()
        if until(value) if until is not None else value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not so after {timeout:g}s; last saw {_short(value)}")
        time.sleep(interval)


async def wait_until_async(read: Callable[[], Awaitable[T]], until: Callable[[T], object] | None = None, *,
                           timeout: float = DEADLINE_S, interval: float = POLL_S, what: str = "the condition") -> T:
    """`wait_until` for a coroutine `read`, sleeping on the event loop between reads."""
    deadline = time.monotonic() + timeout
    while True:
        value = await read()
        if until(value) if until is not None else value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not so after {timeout:g}s; last saw {_short(value)}")
        await asyncio.sleep(interval)


def _short(value: object, limit: int = 2000) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"
