"""A bound on how many JSON values a request body may hold, checked without stalling the event loop.

Parsing and validating a body holds the interpreter lock for the whole call, even in a worker thread: 280,000
small messages in an 8 MiB body take about a second of pydantic, 1.7 million token ids almost as long, and every
other request waits that long. Those bodies are refused. A cheap upper bound comes first (commas and brackets,
counted in C: a few milliseconds for 8 MiB); only a body whose bound is over the limit (strings full of commas,
or really that many values) is counted exactly, by `orjson` in a separate process, so the count itself cannot
stall the server either. A body within the limit parses in tens of milliseconds.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import orjson

from modelworks.offload import offload

MAX_VALUES = 100_000  # objects, keys, arrays, strings, numbers and literals: validated in well under 100 ms

_pool: ProcessPoolExecutor | None = None
_lock = threading.Lock()


def upper_bound(body: bytes) -> int:
    """At least as many as the body's values and keys: every value but the first of a container follows a comma,
    every key is followed by a colon."""
    return body.count(b",") + body.count(b":") + body.count(b"{") + body.count(b"[") + 1


def count_values(body: bytes, limit: int) -> int:
    """The body's JSON values, counted up to `limit + 1` (0 when it is not JSON: the parser says why)."""
    try:
        stack = [orjson.loads(body)]
    except orjson.JSONDecodeError:
        return 0
    count = 0
    while stack:
        value = stack.pop()
        count += 1
        if count > limit:
            break
        if isinstance(value, dict):
            stack.extend(value.values())
            count += len(value)  # the keys
        elif isinstance(value, list):
            stack.extend(value)
    return count


async def too_many_values(body: bytes, limit: int = MAX_VALUES) -> int | None:
    """The body's count when it holds more than `limit` values, else None."""
    if len(body) < 2 * limit:  # each value but the last needs at least two bytes ("1,")
        return None
    if await offload(upper_bound, body) <= limit:
        return None
    pool = _counter()
    try:
        count = await asyncio.get_running_loop().run_in_executor(pool, count_values, body, limit)
    except BrokenProcessPool:  # the counting process died (killed, out of memory): a new one next time
        _drop_counter(pool)
        count = await offload(count_values, body, limit)
    return count if count > limit else None


def _drop_counter(broken: ProcessPoolExecutor) -> None:
    """Forget the pool that broke (not a newer one another request has made since)."""
    global _pool
    with _lock:
        if _pool is broken:
            _pool = None
    broken.shutdown(wait=False, cancel_futures=True)


def _counter() -> ProcessPoolExecutor:
    global _pool
    if _pool is None:
        with _lock:
            if _pool is None:  # spawned, not forked: the server has threads (llama.cpp, the CPU pool)
                _pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
    return _pool
