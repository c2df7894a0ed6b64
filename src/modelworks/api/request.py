"""What a handler sees of an HTTP request: read straight from the ASGI scope, nothing computed twice."""

from __future__ import annotations

from typing import Callable
from urllib.parse import parse_qs

from modelworks.errors import BodyTooLarge, InvalidRequest, UnsupportedMediaType


class Request:
    __slots__ = ("scope", "receive", "path_params", "_headers", "_query", "watch_disconnect")

    def __init__(self, scope, receive, path_params: dict[str, str]) -> None:
        self.scope = scope
        self.receive = receive
        self.path_params = path_params
        self._headers: dict[str, str] | None = None
        self._query: dict[str, list[str]] | None = None
        self.watch_disconnect: Callable[[], None] = _nothing

    @property
    def path(self) -> str:
        return self.scope["path"]

    @property
    def method(self) -> str:
        return self.scope["method"]

    @property
    def headers(self) -> dict[str, str]:
        if self._headers is None:
            self._headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in self.scope["headers"]}
        return self._headers

    def query(self, name: str) -> str | None:
        raw = self.scope.get("query_string", b"")
        if not raw:
            return None
        if self._query is None:
            self._query = parse_qs(raw.decode("latin-1"), keep_blank_values=True)
        values = self._query.get(name)
        return values[0] if values else None

    async def body(self, limit: int, *, check_type: bool = True) -> bytes:
        """The whole body, at most `limit` bytes. Every body of this API is JSON: a request that says it sends
        something else (a form, plain text) is refused before its body is read; one that says nothing is read.
        `check_type=False`: the caller checked the type (the portal's forms)."""
        kind = self.headers.get("content-type")
        if check_type and kind is not None and not _is_json(kind):
            raise UnsupportedMediaType(f"Unsupported Content-Type '{kind[:100]}': send the body as "
                                       "application/json.")
        length = self.headers.get("content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                raise InvalidRequest("Invalid Content-Length header.", param=None) from None
            if declared > limit:
                raise BodyTooLarge(f"The request body is {declared} bytes; the limit is {limit} bytes.")
        chunks = []
        size = 0
        while True:
            message = await self.receive()
            if message["type"] != "http.request":
                raise ConnectionResetError("the client left while sending its request")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge(f"The request body is over the limit of {limit} bytes.")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def int_query(request: Request, name: str, default: int, low: int, high: int) -> int:
    """An integer query parameter from `low` to `high` (a 400 naming it otherwise)."""
    raw = request.query(name)
    try:
        value = default if raw is None else int(raw)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise InvalidRequest(f"Invalid value for '{name}': an integer from {low} to {high}.", param=name,
                             code="invalid_value")
    return value


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def _nothing() -> None:
    return None
