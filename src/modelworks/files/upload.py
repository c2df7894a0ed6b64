"""Reading a `multipart/form-data` upload as it arrives: small fields in memory, the file spooled to disk.

Nothing of the file's contents is kept in memory beyond one received chunk, and nothing of it is logged. The
file's size is enforced while it arrives (413 past `max_file_bytes`), its SHA-256 computed on the way.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import tempfile
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from modelworks.api.request import Request
from modelworks.errors import BodyTooLarge, InvalidRequest, UnsupportedMediaType

MAX_FIELD_BYTES = 4096  # a form field other than the file (purpose, expires_after[...])
MAX_FIELDS = 16


@dataclass
class Upload:
    fields: dict[str, str] = field(default_factory=dict)
    filename: str | None = None
    media_type: str = "application/octet-stream"
    path: Path | None = None  # the spooled file; the caller moves or removes it
    size: int = 0
    sha256: str = ""

    def discard(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)
            self.path = None


class _Part:
    __slots__ = ("name", "filename", "media_type", "data", "header_field", "header_value", "headers")

    def __init__(self) -> None:
        self.name: str | None = None
        self.filename: str | None = None
        self.media_type = "application/octet-stream"
        self.data = bytearray()
        self.header_field = bytearray()
        self.header_value = bytearray()
        self.headers: list[tuple[bytes, bytes]] = []


async def read_upload(request: Request, spool_dir: Path, max_file_bytes: int, file_field: str = "file") -> Upload:
    """The form of an upload. The file part (`file_field`) goes to a temporary file in `spool_dir`; every other
    part must be a small text field. Raises 400 (naming the field), 413 or 415; leaves no temporary file then."""
    kind = request.headers.get("content-type")
    media, options = parse_options_header(kind or "")
    if media != b"multipart/form-data":
        raise UnsupportedMediaType(f"Unsupported Content-Type '{(kind or '')[:100]}': upload files as "
                                   "multipart/form-data.")
    boundary = options.get(b"boundary")
    if not boundary or len(boundary) > 200:
        raise InvalidRequest("The multipart/form-data Content-Type has no boundary.", param=file_field)
    limit = max_file_bytes + 64 * 1024  # the file, its headers and the other fields
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise BodyTooLarge(f"The file is over the limit of {max_file_bytes} bytes.")

    upload = Upload()
    spool_dir.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix="upload-", dir=spool_dir)
    spool = os.fdopen(fd, "wb")
    upload.path = Path(name)
    digest = hashlib.sha256()
    state = {"part": None, "file_seen": False, "ended": False, "parts": 0}
    pending: list[bytes] = []  # file bytes parsed from the current chunk, written after it

    def part_begin() -> None:
        state["parts"] += 1
        if state["parts"] > MAX_FIELDS:
            raise InvalidRequest(f"The form has more than {MAX_FIELDS} fields.", param=None)
        state["part"] = _Part()

    def header_field(data: bytes, start: int, end: int) -> None:
        state["part"].header_field += data[start:end]

    def header_value(data: bytes, start: int, end: int) -> None:
        state["part"].header_value += data[start:end]

    def header_end() -> None:
        part: _Part = state["part"]
        part.headers.append((bytes(part.header_field).lower(), bytes(part.header_value)))
        part.header_field.clear()
        part.header_value.clear()

    def headers_finished() -> None:
        part: _Part = state["part"]
        for key, value in part.headers:
            if key == b"content-disposition":
                _, opts = parse_options_header(value)
                part.name = _text(opts.get(b"name", b""))
                if b"filename" in opts:
                    part.filename = _text(opts[b"filename"])
            elif key == b"content-type":
                part.media_type = _text(value)[:100] or part.media_type
        if not part.name:
            raise InvalidRequest("A part of the form has no name.", param=None)
        if part.name == file_field:
            if state["file_seen"]:
                raise InvalidRequest(f"The form has more than one '{file_field}'.", param=file_field)
            state["file_seen"] = True
            if part.filename is None:
                raise InvalidRequest(f"'{file_field}' must be a file (a part with a filename), not a text field.",
                                     param=file_field)
            upload.filename = part.filename
            upload.media_type = part.media_type
        elif part.name in upload.fields:
            raise InvalidRequest(f"The form has more than one '{part.name[:64]}'.", param=part.name[:64])

    def part_data(data: bytes, start: int, end: int) -> None:
        part: _Part = state["part"]
        if part.name == file_field:
            upload.size += end - start
            if upload.size > max_file_bytes:
                raise BodyTooLarge(f"The file is over the limit of {max_file_bytes} bytes.")
            pending.append(data[start:end])
        else:
            part.data += data[start:end]
            if len(part.data) > MAX_FIELD_BYTES:
                raise InvalidRequest(f"The form field '{part.name[:64]}' is over {MAX_FIELD_BYTES} bytes.",
                                     param=part.name[:64])

    def part_end() -> None:
        part: _Part = state["part"]
        if part.name != file_field:
            try:
                upload.fields[part.name] = bytes(part.data).decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidRequest(f"The form field '{part.name[:64]}' is not UTF-8 text.",
                                     param=part.name[:64]) from None
        state["part"] = None

    def end() -> None:
        state["ended"] = True

    parser = MultipartParser(boundary, {
        "on_part_begin": part_begin, "on_part_data": part_data, "on_part_end": part_end,
        "on_header_field": header_field, "on_header_value": header_value, "on_header_end": header_end,
        "on_headers_finished": headers_finished, "on_end": end})
    try:
        received = 0
        while True:
            message = await request.receive()
            if message["type"] != "http.request":
                raise ConnectionResetError("the client left while uploading")
            chunk = message.get("body", b"")
            received += len(chunk)
            if received > limit:
                raise BodyTooLarge(f"The file is over the limit of {max_file_bytes} bytes.")
            if chunk:
                try:
                    parser.write(chunk)
                except FormParserError:
                    raise InvalidRequest("The multipart/form-data body is malformed.", param=file_field) from None
                if pending:
                    data = b"".join(pending)
                    pending.clear()
                    digest.update(data)
                    await asyncio.to_thread(spool.write, data)
            if not message.get("more_body", False):
                break
        if not state["ended"]:
            raise InvalidRequest("The multipart/form-data body ends before its closing boundary.", param=file_field)
        await asyncio.to_thread(_close_synced, spool)
    except BaseException:
        spool.close()
        upload.discard()
        raise
    if not state["file_seen"]:
        upload.discard()
        raise InvalidRequest(f"Missing required parameter: '{file_field}'.", param=file_field,
                             code="missing_required_parameter")
    upload.sha256 = digest.hexdigest()
    return upload


def _close_synced(spool) -> None:
    spool.flush()
    os.fsync(spool.fileno())
    spool.close()


def _text(raw: bytes) -> str:
    """A header value: UTF-8 as browsers and the SDKs send it (latin-1 where it is not UTF-8)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def clean_filename(name: str | None, param: str = "file") -> str:
    """The name a file is listed under: its last path component, normalised; control characters refused."""
    if name is None:
        raise InvalidRequest("The file has no filename.", param=param)
    base = unicodedata.normalize("NFC", name.replace("\\", "/").rsplit("/", 1)[-1]).strip()
    if not base or base in (".", ".."):
        raise InvalidRequest("The file has no filename.", param=param)
    if any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") for c in base):
        raise InvalidRequest("The filename has control characters.", param=param)
    if len(base.encode("utf-8")) > 255:
        raise InvalidRequest("The filename is over 255 bytes.", param=param)
    return base
