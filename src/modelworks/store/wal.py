"""A write-ahead log: records reach the store in batches, off the hot path, and none is lost. Usage records
(`metering`) and finished Responses (`responses.journal`) go through one each.

Each finished request adds one JSON line to this process's current segment. The lines of the requests that
finish in one turn of the event loop go out together, in one `write` call at the end of that turn (a group
commit: one `write` per request instead cost a tenth of the proxy's hot path); once written, the operating
system keeps them even if the process is killed the next instant. Nothing is answered before its record is
written: `written()` gives the requests of the turn one future to wait on before they send their last byte
(the policy chain's `complete` waits on it), so a kill at any moment loses no record of an answered request.
Every `interval` the
writer starts a new segment, inserts the old segment's records into the store in one transaction (inserts are
idempotent by record id) and deletes the segment only after that commits. A segment's file is locked while its
process lives; at start-up, segments nobody holds (left by a killed process) are replayed and deleted. What a
power failure can lose is what the OS had not yet put on disk (no fsync per request: that would cost more than
the rest of the request); a process crash or kill loses no record of a request that was answered.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import uuid
from pathlib import Path
from typing import Callable

import orjson

log = logging.getLogger("modelworks.store")

Insert = Callable[[list[bytes]], None]  # records as JSON lines


class WriteAheadLog:
    """`upgrade` turns a record written by an older version into today's (replays only); `stored` is told
    which lines reached the store, after their transaction committed."""

    def __init__(self, directory: Path, insert: Insert, interval: float = 1.0, *, what: str = "records",
                 upgrade: Callable[[object], bytes | None] | None = None,
                 stored: Callable[[list[bytes]], None] | None = None) -> None:
        self.dir = directory
        self.insert = insert
        self.interval = interval
        self.what = what
        self.upgrade = upgrade
        self.stored = stored
        self._flushing = asyncio.Lock()
        self.pending: list[bytes] = []     # lines written, not yet in the store
        self._unwritten: list[bytes] = []  # lines of this loop turn, not yet written
        self._turn: asyncio.Future | None = None  # resolved when the lines of this turn are written
        self._torn = False  # the last write failed: the segment may end in part of a line
        self.done_segments: list[tuple[int, Path]] = []  # written out, waiting for their records to commit
        self.fd = -1
        self.path: Path | None = None
        self._task: asyncio.Task | None = None

    def open(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.replay_orphans()
        self._new_segment()

    def append(self, record) -> None:
        line = orjson.dumps(record)
        self.pending.append(line)
        self._unwritten.append(line)
        if len(self._unwritten) == 1:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no event loop (a tool, a test): write at once
                self.write_out()
                return
            self._turn = loop.create_future()
            loop.call_soon(self.write_out)

    def write(self, line: bytes) -> None:
        """Add a record (a JSON line, made by the caller) and write it at once, with its own `write`, so that
        there is nothing to wait for: for records that come once per request rather than several a turn
        (finished responses), a system call costs less than the loop turn and the future of a group commit."""
        self.pending.append(line)
        self._write(line + b"\n")

    def written(self) -> asyncio.Future | None:
        """What to wait for before answering: the write of this turn's lines (None when nothing is unwritten)."""
        return self._turn if self._unwritten else None

    def write_out(self) -> None:
        """One `write` for the lines added in this turn of the event loop; wakes the requests waiting on it."""
        turn, self._turn = self._turn, None
        try:
            if self._unwritten:
                lines, self._unwritten = self._unwritten, []
                lines.append(b"")
                self._write(b"\n".join(lines))
        finally:
            if turn is not None and not turn.done():
                turn.set_result(None)

    def _write(self, data: bytes) -> None:
        """All of `data`, however many `write` calls it takes. After a failed write (a full disk, say) the
        segment may end in a torn line: the next write starts on a line of its own (replay skips the torn one);
        the lines are still pending and reach the store at the next flush."""
        if self._torn:
            data = b"\n" + data
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self.fd, view):]
            self._torn = False
        except OSError:
            self._torn = True
            log.exception("could not write %s to the write-ahead log", self.what)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        try:
            await self.flush()
        finally:
            if self.fd >= 0:
                os.close(self.fd)
                self.fd = -1
            if self.path is not None and not self.pending and self.path.stat().st_size == 0:
                self.path.unlink(missing_ok=True)

    async def flush(self) -> None:
        """Store what was written so far; returns once it is committed (one flush at a time)."""
        async with self._flushing:
            self.write_out()
            if not self.pending:
                return
            batch, self.pending = self.pending, []
            self.done_segments.append((self.fd, self.path))
            self._new_segment()
            try:
                await asyncio.to_thread(self.insert, batch)
            except BaseException:
                self.pending = batch + self.pending  # the next flush tries again; the files stay until then
                raise
            if self.stored is not None:
                self.stored(batch)
            segments, self.done_segments = self.done_segments, []
            for fd, path in segments:
                os.close(fd)
                path.unlink(missing_ok=True)

    def replay_orphans(self) -> int:
        """Insert the records of segments left by processes that are gone; return how many."""
        replayed = 0
        for path in sorted(self.dir.glob("*.jsonl")):
            fd = os.open(path, os.O_RDWR)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue  # a live process owns it
            try:
                lines = []
                for line in path.read_bytes().splitlines():
                    try:
                        record = orjson.loads(line)
                    except orjson.JSONDecodeError:
                        log.warning("skipping a torn line in %s", path)
                        continue
                    if self.upgrade is not None:  # written by an older version, perhaps
                        line = self.upgrade(record) or line
                    lines.append(line)
                if lines:
                    self.insert(lines)
                    replayed += len(lines)
                path.unlink()
            finally:
                os.close(fd)
        if replayed:
            log.info("replayed %d %s left by a previous process", replayed, self.what)
        return replayed

    def _new_segment(self) -> None:
        self._torn = False
        self.path = self.dir / f"{os.getpid()}-{uuid.uuid4().hex[:12]}.jsonl"
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.flush()
            except Exception:  # noqa: BLE001 - the store may be away for a while: the records wait on disk
                log.warning("could not store %s; will retry", self.what, exc_info=True)

