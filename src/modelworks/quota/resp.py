"""A lean Redis client for the limiter: one pipelined connection, RESP2, scripts by SHA.

Requests from every coroutine share the connection; replies come back in order and resolve their futures.
A lost connection fails the requests in flight and is opened again by the next call. It speaks just what the
limiter needs (EVALSHA with a fallback to EVAL, AUTH, SELECT, PING, WAIT).

Redis Sentinel: with a `redis+sentinel://[[user]:password@]host:port[,host:port...]/service[/db]` URL (`rediss+`
for TLS to the primary), each new connection asks the sentinels, in turn, for the service's primary and checks
that the server it reaches is one (ROLE). A failover shows as a lost connection (the primary died) or a READONLY
answer (it was demoted): the connection is dropped and the next call asks the sentinels again.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
from urllib.parse import parse_qs, unquote, urlsplit


class RedisError(Exception):
    """Redis answered with an error."""


_ENCODED: dict = {}  # argument -> its RESP bulk string: the limiter sends the same keys and numbers again and again


def _arg(value) -> bytes:
    cacheable = type(value) is int or type(value) is str  # not bool or float: 1, True and 1.0 are one dict key
    encoded = _ENCODED.get(value) if cacheable else None
    if encoded is None:
        data = value if isinstance(value, bytes) else str(value).encode()
        encoded = b"$%d\r\n%s\r\n" % (len(data), data)
        if cacheable and len(_ENCODED) < 65536:
            _ENCODED[value] = encoded
    return encoded


def _command(*args) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(map(_arg, args))


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport = None
        self.buffer = bytearray()
        self.waiting: collections.deque[asyncio.Future] = collections.deque()
        self.lost = False

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while self.waiting:
            parsed = _parse(self.buffer, 0)
            if parsed is None:
                return
            value, end = parsed
            del self.buffer[:end]
            future = self.waiting.popleft()
            if not future.done():
                if isinstance(value, RedisError):
                    future.set_exception(value)
                else:
                    future.set_result(value)

    def connection_lost(self, exc) -> None:
        self.lost = True
        while self.waiting:
            future = self.waiting.popleft()
            if not future.done():
                future.set_exception(ConnectionError("the connection to Redis was lost"))


def _parse(buf: bytearray, pos: int):
    """Parse one RESP2 value at `pos`; return (value, end) or None when more bytes are needed."""
    end = buf.find(b"\r\n", pos)
    if end < 0:
        return None
    kind, line = buf[pos:pos + 1], bytes(buf[pos + 1:end])
    after = end + 2
    if kind == b"+":
        return line, after
    if kind == b"-":
        return RedisError(line.decode(errors="replace")), after
    if kind == b":":
        return int(line), after
    if kind == b"$":
        size = int(line)
        if size < 0:
            return None, after
        if len(buf) < after + size + 2:
            return None
        return bytes(buf[after:after + size]), after + size + 2
    if kind == b"*":
        count = int(line)
        if count < 0:
            return None, after
        items = []
        for _ in range(count):
            parsed = _parse(buf, after)
            if parsed is None:
                return None
            item, after = parsed
            items.append(item)
        return items, after
    raise RedisError(f"unexpected reply type {kind!r}")


class RespClient:
    def __init__(self, url: str, connect_timeout: float = 3.0, reply_timeout: float = 5.0) -> None:
        scheme, _, rest = url.partition("://")
        self.sentinels: list[tuple[str, int]] = []
        self.service = ""
        self.sentinel_auth: tuple = ()
        if scheme in ("redis+sentinel", "rediss+sentinel"):
            # parsed by hand: urlsplit refuses several hosts when one is an IPv6 address in brackets
            location, _, query = rest.partition("?")
            netloc, _, path = location.partition("/")
            userinfo, _, hosts = netloc.rpartition("@")
            self.sentinels = [_host_port(h, 26379) for h in hosts.split(",") if h]
            segments = [p for p in path.split("/") if p]
            if not self.sentinels or not segments:
                raise ValueError("a Sentinel URL names sentinels and a service: "
                                 "redis+sentinel://host:26379[,host:26379]/service[/db]")
            self.service = unquote(segments[0])
            self.db = int(segments[1]) if len(segments) > 1 else 0
            self.host, self.port = self.sentinels[0]
            user, _, password = userinfo.partition(":")
            self.username, self.password = unquote(user) or None, unquote(password) or None
            options = parse_qs(query)
            if "sentinel_password" in options:  # sentinels with a password of their own (requirepass)
                self.sentinel_auth = tuple(filter(None, (options.get("sentinel_username", [None])[0],
                                                         options["sentinel_password"][0])))
        else:
            parts = urlsplit(url)
            self.host = parts.hostname or "127.0.0.1"
            self.port = parts.port or 6379
            self.db = int(parts.path.lstrip("/") or 0)
            self.password = unquote(parts.password) if parts.password else None
            self.username = unquote(parts.username) if parts.username else None
        self.ssl = scheme.startswith("rediss")
        self.connect_timeout = connect_timeout
        self.reply_timeout = reply_timeout  # a server that stops answering without closing (a lost node)
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Lock | None = None
        self._failed: tuple[float, str] | None = None  # (when, why) the last connection attempt failed

    async def call(self, *args):
        protocol = await self._connection()
        return await self._send(protocol, args)

    async def _send(self, protocol: _Protocol, args):
        return await self._reply(protocol, self._write(protocol, args))

    @staticmethod
    def _write(protocol: _Protocol, args) -> asyncio.Future:
        if protocol.lost:
            raise ConnectionError("the connection to Redis was lost")
        future = asyncio.get_running_loop().create_future()
        protocol.waiting.append(future)
        protocol.transport.write(_command(*args))
        return future

    async def _reply(self, protocol: _Protocol, future: asyncio.Future):
        try:
            return await asyncio.wait_for(future, self.reply_timeout)
        except asyncio.TimeoutError:  # replies come in order: the connection is of no more use
            self._drop(protocol)
            raise ConnectionError(f"Redis did not answer within {self.reply_timeout:g} s") from None
        except RedisError as exc:
            message = str(exc)
            if "READONLY" in message or "cannot be used with replica" in message:
                self._drop(protocol)  # a replica now (demoted by a failover): find the primary again
                raise ConnectionError(f"Redis at {self.host}:{self.port} is no longer the primary") from None
            raise

    async def eval_confirmed(self, script: str, sha: str, keys: list[str], args: list, replicas: int,
                             timeout_ms: int) -> tuple:
        """The script, then WAIT, written back to back on one connection: WAIT counts the replicas that hold
        everything written before it on that connection, the script's writes included. Returns (result, acked).
        A connection lost in between fails both: the script may have run on a primary now gone."""
        protocol = await self._connection()
        ran = self._write(protocol, ("EVALSHA", sha, len(keys), *keys, *args))
        confirmed = self._write(protocol, ("WAIT", replicas, timeout_ms))
        try:
            result = await self._reply(protocol, ran)
        except RedisError as exc:
            if "NOSCRIPT" not in str(exc):
                raise
            await self._reply(protocol, confirmed)
            ran = self._write(protocol, ("EVAL", script, len(keys), *keys, *args))
            confirmed = self._write(protocol, ("WAIT", replicas, timeout_ms))
            result = await self._reply(protocol, ran)
        return result, await self._reply(protocol, confirmed)

    @staticmethod
    def _drop(protocol: _Protocol) -> None:
        protocol.lost = True
        protocol.transport.abort()  # not close(): that would wait to send what a silent peer does not take

    async def eval_script(self, script: str, sha: str, keys: list[str], args: list):
        try:
            return await self.call("EVALSHA", sha, len(keys), *keys, *args)
        except RedisError as exc:
            if "NOSCRIPT" not in str(exc):
                raise
            return await self.call("EVAL", script, len(keys), *keys, *args)

    async def _connection(self) -> _Protocol:
        if self._protocol is not None and not self._protocol.lost:
            return self._protocol
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._protocol is not None and not self._protocol.lost:
                return self._protocol
            loop = asyncio.get_running_loop()
            if self._failed is not None and loop.time() - self._failed[0] < 1.0:
                raise ConnectionError(self._failed[1])  # callers queued behind a failed attempt fail with it
            try:
                protocol = await self._connect()
            except ConnectionError as exc:
                self._failed = (loop.time(), str(exc))
                raise
            self._failed = None
            self._protocol = protocol
            return protocol

    async def _connect(self) -> _Protocol:
        if self.sentinels:
            self.host, self.port = await self._ask_sentinels()
        protocol = await self._open(self.host, self.port, self.ssl)
        try:
            if self.password:
                await self._send(protocol, ("AUTH", self.username, self.password) if self.username
                                 else ("AUTH", self.password))
            if self.db:
                await self._send(protocol, ("SELECT", self.db))
            if self.sentinels:
                role = await self._send(protocol, ("ROLE",))
                if not role or role[0] != b"master":
                    raise ConnectionError(f"Redis at {self.host}:{self.port}, named by the sentinels, is not "
                                          "a primary (a failover is under way)")
        except BaseException as exc:
            protocol.transport.close()
            if isinstance(exc, RedisError):
                raise ConnectionError(f"Redis at {self.host}:{self.port} refused the connection: {exc}") from None
            raise
        return protocol

    async def _open(self, host: str, port: int, ssl: bool) -> _Protocol:
        loop = asyncio.get_running_loop()
        try:
            _, protocol = await asyncio.wait_for(
                loop.create_connection(_Protocol, host, port, ssl=ssl or None), self.connect_timeout)
        except (OSError, asyncio.TimeoutError) as exc:
            raise ConnectionError(f"cannot connect to Redis at {host}:{port}: {exc or type(exc).__name__}") from None
        return protocol

    async def _ask_sentinels(self) -> tuple[str, int]:
        """The primary's address from the first sentinel that knows it; that sentinel is asked first next time."""
        faults = []
        for i, (host, port) in enumerate(self.sentinels):
            try:
                protocol = await self._open(host, port, False)
                try:
                    if self.sentinel_auth:
                        await self._send(protocol, ("AUTH", *self.sentinel_auth))
                    found = await self._send(protocol, ("SENTINEL", "get-master-addr-by-name", self.service))
                finally:
                    protocol.transport.close()
            except (ConnectionError, RedisError) as exc:
                faults.append(f"{host}:{port}: {exc}")
                continue
            if not found:
                faults.append(f"{host}:{port}: no primary known for {self.service!r}")
                continue
            self.sentinels.insert(0, self.sentinels.pop(i))
            return found[0].decode(), int(found[1])
        raise ConnectionError("no sentinel named the Redis primary (" + "; ".join(faults) + ")")

    async def close(self) -> None:
        if self._protocol is not None and self._protocol.transport is not None:
            self._protocol.transport.close()


def _host_port(text: str, default_port: int) -> tuple[str, int]:
    if text.startswith("["):  # [v6 address]:port
        host, _, rest = text[1:].partition("]")
        return host, int(rest.lstrip(":") or default_port)
    if text.count(":") > 1:
        raise ValueError(f"an IPv6 address in a Redis URL goes in brackets: [{text}]")
    host, _, port = text.rpartition(":")
    return (host, int(port)) if host else (text, default_port)


def sha1(script: str) -> str:
    return hashlib.sha1(script.encode()).hexdigest()
