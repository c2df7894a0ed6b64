"""A lean HTTP/1.1 client for upstreams: a keep-alive connection pool per upstream, httptools parsing.

It does exactly what relaying to an OpenAI-style upstream needs and no more: requests with a known body
length, responses read whole or chunk by chunk as they arrive (SSE is never buffered), TLS for https, back
pressure when the reader is slower than the upstream, and one retry when a pooled connection turns out to have
been closed by the upstream while idle. Closing a response early closes its connection, which is how an
upstream learns that its client left.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from urllib.parse import urlsplit

import httptools

_HIGH_WATER = 256 * 1024


class UpstreamConnectionError(ConnectionError):
    """The upstream could not be reached, or dropped the connection before answering."""


class _Connection(asyncio.Protocol):
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.reused = False
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.head: asyncio.Future = self.loop.create_future()
        self.chunks: collections.deque[bytes] = collections.deque()
        self.buffered = 0
        self.paused = False
        self.done = False
        self.error: BaseException | None = None
        self.waiter: asyncio.Future | None = None
        self.got_bytes = False

    # -- asyncio.Protocol -----------------------------------------------------------------------------------------

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(UpstreamConnectionError(f"malformed response from upstream: {exc}"))
            self.transport.close()

    def connection_lost(self, exc) -> None:
        self.closed = True
        if not self.done:
            self._fail(UpstreamConnectionError("the upstream closed the connection"))

    # -- httptools callbacks ----------------------------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        if not self.head.done():
            self.head.set_result(None)

    def on_body(self, body: bytes) -> None:
        self.chunks.append(bytes(body))
        self.buffered += len(body)
        if self.buffered > _HIGH_WATER and not self.paused:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        self.done = True
        self.keep_alive = self.parser.should_keep_alive()
        self._wake()

    # -- helpers ------------------------------------------------------------------------------------------------------

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def _fail(self, exc: BaseException) -> None:
        self.error = exc
        if not self.head.done():
            self.head.set_exception(exc)
            self.head.exception()  # mark retrieved
        self._wake()

    async def next_chunk(self) -> bytes | None:
        while not self.chunks:
            if self.done:
                return None
            if self.error is not None:
                raise self.error
            self.waiter = self.loop.create_future()
            await self.waiter
        chunk = self.chunks.popleft()
        self.buffered -= len(chunk)
        if self.paused and self.buffered < _HIGH_WATER // 2:
            self.paused = False
            self.transport.resume_reading()
        return chunk


class Response:
    """One upstream response. Read it whole (`read`) or chunk by chunk (`chunks`); always `close` it."""

    __slots__ = ("_conn", "_pool", "status", "_headers", "_released")

    def __init__(self, conn: _Connection, pool: "UpstreamPool") -> None:
        self._conn = conn
        self._pool = pool
        self.status = conn.status
        self._headers = conn.headers
        self._released = False

    def header(self, name: str) -> str | None:
        key = name.lower().encode()
        for k, v in self._headers:
            if k == key:
                return v.decode("latin-1")
        return None

    async def read(self) -> bytes:
        parts = []
        while (chunk := await self._conn.next_chunk()) is not None:
            parts.append(chunk)
        self.close()
        return b"".join(parts)

    async def chunks(self):
        while (chunk := await self._conn.next_chunk()) is not None:
            yield chunk

    def close(self) -> None:
        if not self._released:
            self._released = True
            self._pool._release(self._conn)


class UpstreamPool:
    def __init__(self, base_url: str, *, max_connections: int = 256, connect_timeout: float = 10.0) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https"):
            raise ValueError(f"unsupported URL scheme in {base_url!r}")
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.ssl = ssl.create_default_context() if parts.scheme == "https" else None
        self.base_path = parts.path.rstrip("/")
        default_port = (parts.scheme == "https" and self.port == 443) or (parts.scheme == "http" and self.port == 80)
        self.host_header = (self.host if default_port else f"{self.host}:{self.port}").encode()
        self.max_connections = max_connections
        self.connect_timeout = connect_timeout
        self._idle: list[_Connection] = []
        self._slots = asyncio.Semaphore(max_connections)

    async def request(self, method: str, path: str, headers: list[tuple[bytes, bytes]], body: bytes = b"") -> Response:
        """Send a request (`path` is relative to the base URL's path) and wait for the response's head."""
        head = [f"{method} {self.base_path}{path} HTTP/1.1\r\n".encode(), b"host: ", self.host_header, b"\r\n",
                b"content-length: ", str(len(body)).encode(), b"\r\naccept-encoding: identity\r\n"]
        for name, value in headers:
            head += [name, b": ", value, b"\r\n"]
        head.append(b"\r\n")
        payload = b"".join(head) + body
        await self._slots.acquire()
        try:
            for attempt in (0, 1):
                conn = await self._acquire()
                conn._reset()
                conn.transport.write(payload)
                try:
                    await conn.head
                except UpstreamConnectionError:
                    reused, got = conn.reused, conn.got_bytes
                    self._discard(conn)
                    if attempt == 0 and reused and not got:
                        continue  # the upstream had closed this idle connection: once more on a fresh one
                    raise
                except BaseException:
                    self._discard(conn)
                    raise
                return Response(conn, self)
        except BaseException:
            self._slots.release()
            raise
        raise AssertionError("unreachable")

    async def _acquire(self) -> _Connection:
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed:
                conn.reused = True
                return conn
        loop = asyncio.get_running_loop()
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(lambda: _Connection(loop), self.host, self.port, ssl=self.ssl,
                                       server_hostname=self.host if self.ssl else None),
                self.connect_timeout)
        except (OSError, asyncio.TimeoutError) as exc:
            raise UpstreamConnectionError(f"cannot connect to {self.host}:{self.port}: {exc.__class__.__name__}") from None
        return conn

    def _release(self, conn: _Connection) -> None:
        self._slots.release()
        if conn.done and not conn.closed and getattr(conn, "keep_alive", False) and conn.error is None:
            self._idle.append(conn)
        else:
            self._discard(conn)

    def _discard(self, conn: _Connection) -> None:
        if not conn.closed:
            conn.closed = True
            conn.transport.close()

    async def close(self) -> None:
        for conn in self._idle:
            if not conn.closed:
                conn.transport.close()
        self._idle.clear()
