"""Where file contents live: a directory (one machine, or a volume every replica mounts) or the control-plane
store itself (PostgreSQL for several replicas; nothing else to run). Both are written before the file's row is
committed and removed when it is deleted, so a listed file always has its bytes and a deleted one has none."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Iterator

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from modelworks.store.db import Database
from modelworks.store.schema import FilePart, FileRow

PART = 1 << 20  # bytes per stored part and per chunk sent


class LocalBlobs:
    """`<directory>/<project>/<file id>`, written to a temporary name, synced, then renamed into place."""

    kind = "local"

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    @property
    def spool(self) -> Path:  # on the same file system, so that the final rename is atomic
        return self.directory / ".incoming"

    def _path(self, project_id: str, file_id: str) -> Path:
        return self.directory / project_id / file_id

    def put(self, session: Session, row: FileRow, source: Path) -> None:
        target = self._path(row.project_id, row.id)
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if source.parent == self.spool:
            os.replace(source, target)
        else:
            shutil.copyfile(source, target)
        _sync_dir(target.parent)

    def chunks(self, row: FileRow, start: int = 0) -> Iterator[bytes]:
        with self._path(row.project_id, row.id).open("rb") as f:
            f.seek(start)
            while chunk := f.read(PART):
                yield chunk

    def remove(self, project_id: str, file_id: str) -> None:
        self._path(project_id, file_id).unlink(missing_ok=True)

    def sweep(self, known: set[str], older_than_s: float = 3600) -> int:
        """Remove bytes that no row refers to (a crash between the two), and stale temporary uploads."""
        removed = 0
        cutoff = time.time() - older_than_s
        if not self.directory.is_dir():
            return 0
        for folder in self.directory.iterdir():
            if not folder.is_dir():
                continue
            for entry in folder.iterdir():
                try:
                    stale = entry.stat().st_mtime < cutoff
                except FileNotFoundError:
                    continue
                if stale and (folder == self.spool or entry.name not in known):
                    entry.unlink(missing_ok=True)
                    removed += 1
        return removed


class DatabaseBlobs:
    """Parts of at most 1 MiB in `file_parts`, inserted in the same transaction as the file's row."""

    kind = "database"

    def __init__(self, db: Database, spool: Path) -> None:
        self.db = db
        self.spool = spool

    def put(self, session: Session, row: FileRow, source: Path) -> None:
        with source.open("rb") as f:
            number = 0
            while data := f.read(PART):
                session.add(FilePart(file_id=row.id, part=number, data=data))
                number += 1
                if number % 16 == 0:
                    session.flush()  # bounded memory for a large file
        source.unlink(missing_ok=True)

    def chunks(self, row: FileRow, start: int = 0) -> Iterator[bytes]:
        number = start // PART
        skip = start - number * PART
        while True:
            with self.db.session() as s:
                data = s.scalar(select(FilePart.data).where(FilePart.file_id == row.id, FilePart.part == number))
            if data is None:
                return
            yield bytes(data[skip:])
            skip = 0
            number += 1

    def remove(self, project_id: str, file_id: str) -> None:
        with self.db.session() as s:  # the row's deletion cascades; this is for parts left without one
            s.execute(delete(FilePart).where(FilePart.file_id == file_id))

    def sweep(self, known: set[str], older_than_s: float = 3600) -> int:
        """Parts go with their row (ON DELETE CASCADE); what a crash can leave is a temporary upload."""
        removed = 0
        cutoff = time.time() - older_than_s
        if self.spool.is_dir():
            for entry in self.spool.iterdir():
                try:
                    if entry.stat().st_mtime < cutoff:
                        entry.unlink(missing_ok=True)
                        removed += 1
                except FileNotFoundError:
                    continue
        return removed


def _sync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
