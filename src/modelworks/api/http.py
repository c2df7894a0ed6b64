"""Small ASGI helpers: bounded body reading, cancel-on-disconnect, JSON and SSE responses, the endpoint wrapper."""

from __future__ import annotations

import asyncio
import logging
import random
from typing import AsyncIterator, Awaitable, Callable

import orjson

from modelworks.api.drain import draining
from modelworks.api.errors import OPENAI, envelope
from modelworks.api.request import Request

log = logging.getLogger("modelworks.http")

JSON_HEADERS = [(b"content-type", b"application/json")]
SSE_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"),
               (b"x-accel-buffering", b"no")]


class JSONResult:
    __slots__ = ("status", "body", "headers")

    def __init__(self, body, status: int = 200, headers: dict[str, str] | None = None) -> None:
        self.status = status
        self.body = body
        self.headers = headers


class EventStream:
    """An SSE response: `first` frames already produced, then the rest from `frames`."""

    __slots__ = ("first", "frames", "headers")

    def __init__(self, first: bytes, frames: AsyncIterator[bytes], headers: dict[str, str] | None = None) -> None:
        self.first = first
        self.frames = frames
        self.headers = headers


class ByteStream:
    """A raw (non-SSE) streamed answer: a file's contents, say. `chunks` is closed however the send ends."""

    __slots__ = ("chunks", "headers", "length")

    def __init__(self, chunks: AsyncIterator[bytes], headers: dict[str, str], length: int | None = None) -> None:
        self.chunks = chunks
        self.headers = headers
        self.length = length


Handler = Callable[[Request], Awaitable["JSONResult | EventStream | ByteStream"]]


def new_request_id() -> str:
    return f"{random.getrandbits(64):016x}"


async def send_json(send, status: int, body, headers: dict[str, str] | None, request_id: str,
                    azure: bool = False) -> None:
    """A whole JSON (or, with its own content-type, other) answer, with the request id headers."""
    payload = body if isinstance(body, bytes) else orjson.dumps(body)
    own_type = headers is not None and "content-type" in headers
    raw = [*([] if own_type else JSON_HEADERS), (b"x-request-id", request_id.encode()),
           (b"content-length", str(len(payload)).encode())]
    if azure:
        raw.append((b"apim-request-id", request_id.encode()))
    if headers:
        raw.extend((k.encode(), v.encode()) for k, v in headers.items())
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": payload})


class Endpoint:
    """A raw ASGI endpoint around a handler: errors become envelopes, a client that leaves cancels the work."""

    __slots__ = ("handler", "dialect", "azure", "__name__")

    def __init__(self, handler: Handler, *, dialect: str = OPENAI) -> None:
        self.handler = handler
        self.dialect = dialect
        self.azure = dialect != OPENAI
        self.__name__ = handler.__name__

    async def __call__(self, scope, receive, send, path_params: dict[str, str]) -> None:
        request = Request(scope, receive, path_params)
        request_id = new_request_id()
        task = asyncio.current_task()
        watcher: asyncio.Task | None = None
        gone = False

        def start_watching() -> None:
            nonlocal watcher

            async def watch() -> None:
                nonlocal gone
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        gone = True
                        task.cancel()
                        return
            watcher = asyncio.ensure_future(watch())

        request.watch_disconnect = start_watching
        try:
            try:
                result = await self.handler(request)
            except asyncio.CancelledError:
                if gone:
                    return
                if not _cut(scope, task):
                    raise
                task.uncancel()  # the drain's deadline: an answer the client can retry elsewhere
                status, body, headers = envelope(draining(), dialect=self.dialect)
                await self._send_json(send, status, body, headers, request_id)
                return
            if isinstance(result, ByteStream):
                await self._send_bytes(result, send, request_id)
            elif isinstance(result, EventStream):
                if watcher is None:
                    start_watching()
                await self._stream(result, send, request_id, lambda: not gone and _cut(scope, task))
            else:
                await self._send_json(send, result.status, result.body, result.headers, request_id)
        except OSError:  # ConnectionResetError included: the client left mid-request
            return
        except asyncio.CancelledError:
            if gone or _cut(scope, task):  # cut mid-answer by the drain: the connection ends
                return
            raise
        except Exception as exc:  # noqa: BLE001 - the one place that renders every error
            status, body, headers = envelope(exc, dialect=self.dialect)
            try:
                await self._send_json(send, status, body, headers, request_id)
            except OSError:
                return
        finally:
            if watcher is not None:
                watcher.cancel()

    async def _send_json(self, send, status: int, body, headers: dict[str, str] | None, request_id: str) -> None:
        await send_json(send, status, body, headers, request_id, azure=self.azure)

    async def _send_bytes(self, result: ByteStream, send, request_id: str) -> None:
        raw = [(b"x-request-id", request_id.encode())]
        if self.azure:
            raw.append((b"apim-request-id", request_id.encode()))
        if result.length is not None:
            raw.append((b"content-length", str(result.length).encode()))
        raw.extend((k.encode(), v.encode()) for k, v in result.headers.items())
        try:
            first = await anext(result.chunks, b"")  # a failure before the first byte is still an envelope
            await send({"type": "http.response.start", "status": 200, "headers": raw})
            try:
                if first:
                    await send({"type": "http.response.body", "body": first, "more_body": True})
                async for chunk in result.chunks:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            except (OSError, asyncio.CancelledError):
                raise
            except Exception:  # noqa: BLE001 - headers are out: the connection ends short of its length
                log.warning("a streamed answer failed after its start", exc_info=True)
                raise ConnectionAbortedError("stream failed") from None
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await result.chunks.aclose()

    async def _stream(self, result: EventStream, send, request_id: str, cut: Callable[[], bool]) -> None:
        raw = [*SSE_HEADERS, (b"x-request-id", request_id.encode())]
        if self.azure:
            raw.append((b"apim-request-id", request_id.encode()))
        if result.headers:
            raw.extend((k.encode(), v.encode()) for k, v in result.headers.items())
        frames = result.frames
        try:
            await send({"type": "http.response.start", "status": 200, "headers": raw})
            try:
                if result.first:
                    await send({"type": "http.response.body", "body": result.first, "more_body": True})
                async for frame in frames:
                    if frame:
                        await send({"type": "http.response.body", "body": frame, "more_body": True})
            except OSError:
                raise
            except asyncio.CancelledError:
                if not cut():
                    raise
                asyncio.current_task().uncancel()  # the drain's deadline: an error event, then a clean end
                await frames.aclose()  # the generation stops (and is metered) before the server does
                _, body, _ = envelope(draining(), dialect=self.dialect)
                await send({"type": "http.response.body", "body": b"data: " + orjson.dumps(body) + b"\n\n",
                            "more_body": True})
            except Exception as exc:  # noqa: BLE001 - headers are out: the error travels as an SSE event
                _, body, _ = envelope(exc, dialect=self.dialect)
                await send({"type": "http.response.body", "body": b"data: " + orjson.dumps(body) + b"\n\n",
                            "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await frames.aclose()


def _cut(scope, task: asyncio.Task | None) -> bool:
    drain = scope.get("modelworks.drain")
    return drain is not None and drain.was_cut(task)
