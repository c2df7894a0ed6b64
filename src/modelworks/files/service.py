"""The Files API's work: store an upload, list, read and delete a project's files, purge expired ones.

A file belongs to one project: another project's file is answered as missing (404). An expired file is missing
too, and its bytes are removed by the purge that follows. Contents are never logged.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import secrets
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import AsyncIterator

from sqlalchemy import delete, func, or_, select

from modelworks.errors import BodyTooLarge, InvalidRequest, NotFound
from modelworks.files.blobs import DatabaseBlobs, LocalBlobs
from modelworks.files.checks import check_upload, suffix
from modelworks.files.upload import Upload, clean_filename
from modelworks.settings import FilesSettings
from modelworks.store.db import Database
from modelworks.store.times import now, ts
from modelworks.store.schema import FileRow

log = logging.getLogger("modelworks.files")

PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
OUTPUT_PURPOSES = ("assistants_output", "batch_output", "fine-tune-results")
BATCH_DEFAULT_EXPIRY = timedelta(days=30)
MIN_EXPIRY_S, MAX_EXPIRY_S = 3600, 30 * 24 * 3600
MEDIA_TYPES = {".pdf": "application/pdf", ".json": "application/json", ".jsonl": "application/jsonl",
               ".txt": "text/plain", ".md": "text/markdown", ".html": "text/html", ".htm": "text/html",
               ".csv": "text/csv",
               ".docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document"}


_MEDIA = re.compile(r"[A-Za-z0-9][\w.+-]{0,60}/[A-Za-z0-9][\w.+-]{0,60}")


def new_file_id() -> str:
    return "file-" + secrets.token_hex(12)


def view(row: FileRow) -> dict:
    body = {"id": row.id, "object": "file", "bytes": row.bytes, "created_at": ts(row.created_at),
            "filename": row.filename, "purpose": row.purpose, "status": row.status}
    if row.expires_at is not None:  # the spec's expires_at is an integer, never null: absent when it never expires
        body["expires_at"] = ts(row.expires_at)
    if row.status_details:
        body["status_details"] = row.status_details
    return body


def parse_expiry(fields: dict[str, str]) -> int | None:
    """`expires_after[anchor]=created_at` and `expires_after[seconds]=N` (3600 to 2592000), both or neither."""
    anchor = fields.get("expires_after[anchor]")
    seconds = fields.get("expires_after[seconds]")
    if anchor is None and seconds is None:
        return None
    if anchor != "created_at":
        raise InvalidRequest("Invalid value for 'expires_after[anchor]': the only anchor is 'created_at'.",
                             param="expires_after[anchor]", code="invalid_value")
    try:
        value = int(seconds) if seconds is not None else None
    except ValueError:
        value = None
    if value is None or not MIN_EXPIRY_S <= value <= MAX_EXPIRY_S:
        raise InvalidRequest(f"Invalid value for 'expires_after[seconds]': an integer from {MIN_EXPIRY_S} to "
                             f"{MAX_EXPIRY_S}.", param="expires_after[seconds]", code="invalid_value")
    return value


class FilesService:
    def __init__(self, db: Database, settings: FilesSettings, blobs: LocalBlobs | DatabaseBlobs) -> None:
        self.db = db
        self.settings = settings
        self.blobs = blobs
        self.validators: dict[str, object] = {}  # purpose -> a check of the whole file (the Batch API's, say)
        self.on_delete: list = []  # (project_id, file_id) -> None: what else holds the file's content goes too

    @property
    def spool(self):
        return self.blobs.spool

    # -- writing ----------------------------------------------------------------------------------------------

    async def create(self, project_id: str, upload: Upload) -> dict:
        """Store an upload (its spooled file is moved in or removed, whatever happens)."""
        try:
            fields = dict(upload.fields)
            purpose = fields.pop("purpose", None)
            if purpose is None:
                raise InvalidRequest("Missing required parameter: 'purpose'.", param="purpose",
                                     code="missing_required_parameter")
            if purpose not in PURPOSES:
                raise InvalidRequest(f"Invalid value for 'purpose': '{purpose[:64]}'. Supported values are "
                                     f"{', '.join(repr(p) for p in PURPOSES)}.", param="purpose",
                                     code="invalid_value")
            seconds = parse_expiry(fields)
            for name in fields:
                if not name.startswith("expires_after["):
                    raise InvalidRequest(f"Unrecognized request argument supplied: {name[:64]}", param=name[:64],
                                         code="unknown_parameter")
            filename = clean_filename(upload.filename)
            await asyncio.to_thread(check_upload, upload.path, filename, upload.size, purpose)
            validate = self.validators.get(purpose)
            if validate is not None:
                await asyncio.to_thread(validate, upload.path, filename)
            return await asyncio.to_thread(self._store, project_id, upload, filename, purpose, seconds)
        finally:
            upload.discard()

    def store_bytes(self, project_id: str, data: bytes, filename: str, purpose: str,
                    expires_after_s: int | None = None, file_id: str | None = None) -> dict:
        """A file made here, stored as an upload would be (see `store_path`)."""
        self.spool.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix="made-", dir=self.spool)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return self.store_path(project_id, Path(name), filename, purpose, expires_after_s, file_id=file_id)

    def store_path(self, project_id: str, path: Path, filename: str, purpose: str,
                   expires_after_s: int | None = None, file_id: str | None = None) -> dict:
        """A file made here (a batch's output), from a file on disk (moved in or removed). With `file_id`,
        storing it again (its maker died after storing it once) gives the file stored before."""
        try:
            if file_id is not None:
                with self.db.session() as s:
                    row = s.scalar(select(FileRow).where(FileRow.id == file_id, FileRow.project_id == project_id))
                if row is not None:
                    return view(row)
            digest, size = hashlib.sha256(), 0
            with path.open("rb") as f:
                while block := f.read(1 << 20):
                    digest.update(block)
                    size += len(block)
                os.fsync(f.fileno())
            upload = Upload(filename=filename, media_type="application/octet-stream", path=path, size=size,
                            sha256=digest.hexdigest())
            return self._store(project_id, upload, filename, purpose, expires_after_s, file_id, quota=False)
        finally:
            path.unlink(missing_ok=True)

    def _store(self, project_id: str, upload: Upload, filename: str, purpose: str, seconds: int | None,
               file_id: str | None = None, quota: bool = True) -> dict:
        at = now()
        if seconds is not None:
            expires = at + timedelta(seconds=seconds)
        elif purpose == "batch":
            expires = at + BATCH_DEFAULT_EXPIRY
        else:
            expires = None
        media = MEDIA_TYPES.get(suffix(filename))
        if media is None:  # the client's, where it is a plain type/subtype (it is sent back as a header)
            media = upload.media_type if _MEDIA.fullmatch(upload.media_type) else "application/octet-stream"
        row = FileRow(id=file_id or new_file_id(), project_id=project_id, filename=filename, purpose=purpose,
                      bytes=upload.size, sha256=upload.sha256, media_type=media[:100], created_at=at,
                      expires_at=expires, status="processed", storage=self.blobs.kind)
        cap = self.settings.max_project_bytes if quota else None  # a batch's output is never refused
        with self.db.session() as s:
            if cap is not None:
                used = s.scalar(select(func.coalesce(func.sum(FileRow.bytes), 0))
                                .where(FileRow.project_id == project_id)) or 0
                if used + upload.size > cap:
                    raise BodyTooLarge(f"The project's files would take {used + upload.size} bytes; its limit is "
                                       f"{cap} bytes. Delete files it no longer needs.")
            s.add(row)
            s.flush()
            self.blobs.put(s, row, upload.path)
        upload.path = None  # moved into the store
        log.info("file %s stored: project %s, %d bytes, purpose %s", row.id, project_id, row.bytes, purpose)
        return view(row)

    # -- reading ----------------------------------------------------------------------------------------------

    def _live(self, project_id: str):
        return (FileRow.project_id == project_id,
                or_(FileRow.expires_at.is_(None), FileRow.expires_at > now()))

    def row(self, project_id: str, file_id: str) -> FileRow:
        with self.db.session() as s:
            row = s.scalar(select(FileRow).where(FileRow.id == file_id, *self._live(project_id)))
        if row is None:
            raise NotFound(f"No such File object: {file_id[:80]}", param="file_id")
        return row

    def get(self, project_id: str, file_id: str) -> dict:
        return view(self.row(project_id, file_id))

    def list(self, project_id: str, *, purpose: str | None, limit: int, after: str | None,
             descending: bool) -> tuple[list[dict], bool]:
        with self.db.session() as s:
            query = select(FileRow).where(*self._live(project_id))
            if purpose is not None:
                query = query.where(FileRow.purpose == purpose)
            if after is not None:
                mark = s.scalar(select(FileRow.seq).where(FileRow.id == after, FileRow.project_id == project_id))
                if mark is None:
                    raise InvalidRequest(f"Invalid value for 'after': no file {after[:80]}.", param="after",
                                         code="invalid_value")
                query = query.where(FileRow.seq < mark if descending else FileRow.seq > mark)
            query = query.order_by(FileRow.seq.desc() if descending else FileRow.seq).limit(limit + 1)
            rows = list(s.scalars(query))
        return [view(r) for r in rows[:limit]], len(rows) > limit

    async def content(self, project_id: str, file_id: str) -> tuple[FileRow, AsyncIterator[bytes]]:
        row = await asyncio.to_thread(self.row, project_id, file_id)
        return row, self._stream(row)

    async def _stream(self, row: FileRow) -> AsyncIterator[bytes]:
        chunks = self.blobs.chunks(row)
        try:
            while True:
                chunk = await asyncio.to_thread(next, chunks, None)
                if chunk is None:
                    return
                yield chunk
        finally:
            chunks.close()

    def read_bytes(self, project_id: str, file_id: str) -> tuple[FileRow, bytes]:
        """A whole file, for the work that reads one (a batch's input, a document to index)."""
        row = self.row(project_id, file_id)
        return row, b"".join(self.blobs.chunks(row))

    # -- removing ---------------------------------------------------------------------------------------------

    def delete(self, project_id: str, file_id: str) -> dict:
        with self.db.session() as s:
            row = s.scalar(select(FileRow).where(FileRow.id == file_id, *self._live(project_id)))
            if row is None:
                raise NotFound(f"No such File object: {file_id[:80]}", param="file_id")
            s.delete(row)
        for forget in self.on_delete:
            forget(project_id, file_id)
        self.blobs.remove(project_id, file_id)
        log.info("file %s deleted: project %s", file_id, project_id)
        return {"id": file_id, "object": "file", "deleted": True}

    def purge(self, limit: int = 1000) -> int:
        """Delete expired files (rows and bytes); then sweep bytes that no row refers to."""
        with self.db.session() as s:
            rows = list(s.execute(select(FileRow.id, FileRow.project_id)
                                  .where(FileRow.expires_at <= now()).limit(limit)))
            if rows:
                s.execute(delete(FileRow).where(FileRow.id.in_([r.id for r in rows])))
        for r in rows:
            for forget in self.on_delete:
                forget(r.project_id, r.id)
            self.blobs.remove(r.project_id, r.id)
        known: set[str] = set()
        if self.blobs.kind == "local":
            with self.db.session() as s:
                known = set(s.scalars(select(FileRow.id)))
        self.blobs.sweep(known)
        return len(rows)

    async def maintain(self, every_s: float) -> None:
        while True:
            try:
                removed = await asyncio.to_thread(self.purge)
                if removed:
                    log.info("purged %d expired files", removed)
            except Exception:  # noqa: BLE001 - the next round retries
                log.warning("could not purge expired files", exc_info=True)
            await asyncio.sleep(every_s)


def build_files(db: Database, settings, data_path) -> FilesService:
    f = settings.files
    blobs = (LocalBlobs(settings.files_path) if f.storage == "local"
             else DatabaseBlobs(db, data_path / "files-incoming"))
    return FilesService(db, f, blobs)
