"""The HTTP/1.1 connection: uvicorn's httptools protocol, with limits on slow, idle and greedy clients.

uvicorn 0.54 closes a connection idle between two requests (`timeout_keep_alive`) and nothing else: a new
connection that sends nothing, a request head or body that trickles in, and a client that stops reading its
answer are held for as long as the client likes, and httptools accumulates a request head of any size. Here:

- the request head must arrive within `header_timeout_s` of the connection opening (on a kept-alive connection,
  of the request's first byte), else 408 and close (a new connection that sent nothing is closed silently);
- a head over `max_header_bytes` is answered 431 and closed;
- a body must arrive within `body_timeout_s` of its head and never pause for `body_idle_timeout_s` (time in which
  the server itself stopped reading does not count), else 408 and close; the application sees the client leave;
- a client that takes (almost) nothing of its answer for `write_timeout_s` (the transport's send buffer stays over
  its low-water mark: less than 48 KiB read) is reset, which ends the request (the endpoint cancels the backend's
  work when the client leaves) and frees the buffers, the kernel's included;
- past `max_connections` open connections a new one is answered 503 and closed at once.

One timer per connection watches the request being read (armed when a request begins, cancelled when it has
been read), and a second one exists only while the send buffer is full.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from modelworks.api.errors import envelope
from modelworks.errors import HeadersTooLarge, RequestTimeout, TooManyConnections
from modelworks.settings import Server

log = logging.getLogger("modelworks.server")

# What the connection is reading.
_WAITING = 0   # no byte of a request yet: a new connection (a kept-alive one is uvicorn's keep-alive timer's)
_HEAD = 1      # the request line and headers
_BODY = 2      # the body
_READ = 3      # the whole request: the application has it; no read timer

_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST and drops the unsent bytes


def _answer(exc: Exception) -> bytes:
    """A whole HTTP/1.1 answer that closes the connection, its body the OpenAI error envelope."""
    status, body, _ = envelope(exc)
    payload = orjson.dumps(body)
    reason = {408: b"Request Timeout", 431: b"Request Header Fields Too Large", 503: b"Service Unavailable"}[status]
    return (b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n%s"
            % (status, reason, len(payload), payload))


class Limits:
    """The limits of `server` settings, with the answers they give ready as bytes."""

    __slots__ = ("header_timeout", "body_timeout", "body_idle_timeout", "first_body_check", "write_timeout",
                 "max_header_bytes", "max_connections", "head_timed_out", "body_timed_out", "head_too_large",
                 "too_many", "refusal_logged_at")

    def __init__(self, server: Server) -> None:
        self.header_timeout = server.header_timeout_s
        self.body_timeout = server.body_timeout_s
        self.body_idle_timeout = server.body_idle_timeout_s
        self.first_body_check = min(server.body_timeout_s, server.body_idle_timeout_s)
        self.write_timeout = server.write_timeout_s
        self.max_header_bytes = server.max_header_bytes
        self.max_connections = server.max_connections
        self.head_timed_out = _answer(RequestTimeout(
            f"The request head did not arrive within {server.header_timeout_s:g} seconds."))
        self.body_timed_out = _answer(RequestTimeout(
            f"The request body did not arrive within {server.body_timeout_s:g} seconds, or paused for "
            f"{server.body_idle_timeout_s:g} seconds."))
        self.head_too_large = _answer(HeadersTooLarge(
            f"The request line and headers are over the limit of {server.max_header_bytes} bytes."))
        self.too_many = _answer(TooManyConnections(
            f"The server has {server.max_connections} open connections, its limit; try again shortly."))
        self.refusal_logged_at = float("-inf")  # refusals come in floods: one warning a minute


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the timers and caps above. Use `protocol_class(settings.server)`."""

    limits: Limits  # set on the subclass that `protocol_class` makes

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._phase = _WAITING
        self._timer: asyncio.TimerHandle | None = None
        self._write_timer: asyncio.TimerHandle | None = None
        self._head_bytes = 0
        self._head_tail = b""
        self._body_start = 0.0
        self._body_seen = 0.0

    # Connection

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        limits = self.limits
        if len(self.connections) > limits.max_connections:
            now = self.loop.time()
            if now - limits.refusal_logged_at >= 60:
                limits.refusal_logged_at = now
                log.warning("refusing connections: %d are open, the limit (server.max_connections)",
                            limits.max_connections)
            transport.write(limits.too_many)
            transport.close()
            return
        self._arm(limits.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._phase != _BODY:  # a head is due or under way: count it up to its blank line, before parsing
            tail = self._head_tail  # the blank line may straddle two reads
            end = (tail + data).find(b"\r\n\r\n") if tail else data.find(b"\r\n\r\n")
            size = self._head_bytes + (len(data) if end < 0 else end + 4 - len(tail))
            if size > self.limits.max_header_bytes:
                self._close_with(self.limits.head_too_large)
                return
            if end < 0:
                self._head_bytes = size
                self._head_tail = (tail + data)[-3:]
        super().data_received(data)

    # Parser callbacks

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._phase = _HEAD
        if self._timer is None:  # a new connection's timer, armed when it opened, runs on
            self._arm(self.limits.header_timeout)

    def on_headers_complete(self) -> None:
        self._phase = _BODY
        self._head_bytes = 0
        self._head_tail = b""
        now = self._body_start = self._body_seen = self.loop.time()
        timer = self._timer
        if timer is not None and now + self.limits.first_body_check < timer.when():  # body limits under the head's
            timer.cancel()
            self._arm(self.limits.first_body_check)
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        self._body_seen = self.loop.time()
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._phase = _READ
        self._disarm()
        super().on_message_complete()

    # The read timer

    def _arm(self, delay: float) -> None:
        self._timer = self.loop.call_later(delay, self._read_expired)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _read_expired(self) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        phase = self._phase
        if phase == _WAITING:
            self.transport.close()
        elif phase == _HEAD:
            log.debug("closed a connection whose request head was not in after %gs", self.limits.header_timeout)
            self._close_with(self.limits.head_timed_out)
        elif phase == _BODY:
            self._check_body()

    def _check_body(self) -> None:
        limits = self.limits
        now = self.loop.time()
        if self.flow.read_paused:  # the server stopped reading (the application has not taken the last bytes)
            self._body_seen = now
            self._arm(limits.body_idle_timeout)
            return
        due = min(self._body_start + limits.body_timeout, self._body_seen + limits.body_idle_timeout)
        if now < due:
            self._arm(due - now)
            return
        log.debug("closed a connection whose request body was not in (%gs in all, or a pause of %gs)",
                  limits.body_timeout, limits.body_idle_timeout)
        self._close_with(limits.body_timed_out)

    def _close_with(self, answer: bytes) -> None:
        """Close the connection, with `answer` when no other answer is on it; the application, if it waits
        for this request's body, sees the client leave."""
        cycle = self.cycle
        if self._phase != _BODY:  # `cycle` is the previous request's, if any
            free = cycle is None or cycle.response_complete
        else:
            free = not cycle.response_started
            if not cycle.response_complete:
                cycle.disconnected = True
                cycle.message_event.set()
        if free:
            self.transport.write(answer)
        self.transport.close()

    # The write timer

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._write_timer is None:
            self._write_timer = self.loop.call_later(self.limits.write_timeout, self._write_expired)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None

    def _write_expired(self) -> None:
        self._write_timer = None
        log.debug("reset a connection whose client read nothing for %gs", self.limits.write_timeout)
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
            except OSError:
                pass
        self.transport.abort()


def protocol_class(server: Server) -> type[GuardedHttpToolsProtocol]:
    """The protocol class to give uvicorn (`uvicorn.Config(http=...)`), bound to these settings' limits."""
    return type("ModelworksHttpProtocol", (GuardedHttpToolsProtocol,), {"limits": Limits(server)})


def uvicorn_options(server: Server) -> dict[str, Any]:
    """uvicorn.Config keyword arguments for the connection limits."""
    return {"http": protocol_class(server), "ws": "none", "timeout_keep_alive": server.keep_alive_timeout_s}
