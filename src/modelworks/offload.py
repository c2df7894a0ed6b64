"""Per-request work that grows with the input runs off the event loop.

Parsing a large body, templating and tokenising a prompt, building a grammar, screening text: any of these can take
from milliseconds to seconds on a large input, and on the event loop's thread it would stall every other request of
every project. `offload(fn, ...)` runs such work in a pool of worker threads sized for the machine (one per core),
so the loop goes on answering. Small inputs stay on the loop (`inline_below`): a thread hop costs tens of
microseconds, more than the work it would move.

Threads, not processes: what dominates is llama.cpp's tokenizer (C, called through ctypes, which releases the
interpreter lock) and NumPy; the pure-Python parts (templates, n-gram hashing) give the loop the lock back at the
interpreter's switch interval, so a request waiting on the loop waits milliseconds, not the length of the work.
"""

from __future__ import annotations

import asyncio
import functools
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, TypeVar

T = TypeVar("T")

_pool: ThreadPoolExecutor | None = None
_lock = threading.Lock()


def cpu_pool() -> ThreadPoolExecutor:
    """The process's pool for CPU work, made on first use (one thread per core, at least two)."""
    global _pool
    if _pool is None:
        with _lock:
            if _pool is None:
                cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
                _pool = ThreadPoolExecutor(max_workers=max(2, cores or 2), thread_name_prefix="modelworks-cpu")
    return _pool


async def offload(fn: Callable[..., T], *args, **kwargs) -> T:
    """Run `fn(*args, **kwargs)` in the CPU pool and wait for it without blocking the event loop."""
    call = functools.partial(fn, *args, **kwargs) if kwargs else (functools.partial(fn, *args) if args else fn)
    return await asyncio.get_running_loop().run_in_executor(cpu_pool(), call)


async def run_sized(size: int, inline_below: int, fn: Callable[..., T], *args, **kwargs) -> T:
    """`fn(...)` on the loop when the input is small (`size` < `inline_below`), else in the CPU pool."""
    if size < inline_below:
        return fn(*args, **kwargs)
    return await offload(fn, *args, **kwargs)
