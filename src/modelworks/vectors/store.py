"""Vector stores in the control-plane store: rows, their API objects, and the ingestion's leases.

A file's chunks are written in the transaction that marks it `completed`, after taking the store's row (its
`version` is bumped first): chunk `seq` numbers are then given in commit order within a store, so a replica that
has loaded up to some `seq` has everything before it."""

from __future__ import annotations

import json
import secrets
from datetime import timedelta

from sqlalchemy import bindparam, delete, func, insert, or_, select, update
from sqlalchemy.orm import Session

from modelworks.errors import InvalidRequest, NotFound
from modelworks.store.db import Database
from modelworks.store.times import aware, now, ts
from modelworks.store.schema import VectorChunkRow, VectorStoreFileBatchRow, VectorStoreFileRow, VectorStoreRow

STATUSES = ("in_progress", "completed", "cancelled", "failed")
EXPIRED_KEPT = timedelta(days=7)  # an expired store is listed as `expired` this long, then deleted


def new_id(prefix: str) -> str:
    return prefix + secrets.token_hex(12)


def expired(row: VectorStoreRow) -> bool:
    return row.expires_at is not None and aware(row.expires_at) <= now()


def _checked(store_id: str, row, usable: bool):
    """The row of a store the caller asked for: NotFound if there is none; an expired store refused if `usable`."""
    if row is None:
        raise NotFound(f"No vector store found with id '{store_id[:80]}'.", param="vector_store_id")
    if usable and expired(row):
        raise InvalidRequest(f"The vector store '{store_id[:80]}' has expired.", param="vector_store_id",
                             code="vector_store_expired")
    return row


def _touch_due(row) -> bool:
    """Its last activity is written at most once a minute."""
    return now() - aware(row.last_active_at) >= timedelta(minutes=1)


def counts_view(counts: dict[str, int]) -> dict:
    out = {status: counts.get(status, 0) for status in STATUSES}
    out["total"] = sum(out.values())
    return out


def store_view(row: VectorStoreRow, counts: dict[str, int], usage_bytes: int) -> dict:
    file_counts = counts_view(counts)
    status = "expired" if expired(row) else "in_progress" if file_counts["in_progress"] else "completed"
    body = {"id": row.id, "object": "vector_store", "created_at": ts(row.created_at), "name": row.name,
            "usage_bytes": usage_bytes, "file_counts": file_counts, "status": status,
            "last_active_at": ts(row.last_active_at), "expires_at": ts(row.expires_at),
            "metadata": json.loads(row.metadata_json)}
    if row.expires_after_days is not None:
        body["expires_after"] = {"anchor": "last_active_at", "days": row.expires_after_days}
    if row.description is not None:
        body["description"] = row.description
    return body


def file_view(row: VectorStoreFileRow) -> dict:
    return {"id": row.file_id, "object": "vector_store.file", "usage_bytes": row.usage_bytes,
            "created_at": ts(row.created_at), "vector_store_id": row.vector_store_id, "status": row.status,
            "last_error": json.loads(row.last_error) if row.last_error else None,
            "chunking_strategy": json.loads(row.chunking),
            "attributes": json.loads(row.attributes) if row.attributes else None}


def batch_view(row: VectorStoreFileBatchRow, counts: dict[str, int]) -> dict:
    file_counts = counts_view(counts)
    if file_counts["in_progress"]:
        status = "cancelled" if row.cancelled else "in_progress"
    elif row.cancelled:
        status = "cancelled"
    elif file_counts["failed"] and not file_counts["completed"]:
        status = "failed"
    else:
        status = "completed"
    return {"id": row.id, "object": "vector_store.files_batch", "created_at": ts(row.created_at),
            "vector_store_id": row.vector_store_id, "status": status, "file_counts": file_counts}


class VectorStoreDB:
    def __init__(self, db: Database) -> None:
        self.db = db

    # -- stores ---------------------------------------------------------------------------------------------------

    def store_row(self, s: Session, project_id: str, store_id: str, *, usable: bool = False) -> VectorStoreRow:
        row = s.scalar(select(VectorStoreRow).where(VectorStoreRow.id == store_id,
                                                    VectorStoreRow.project_id == project_id))
        return _checked(store_id, row, usable)

    def counts(self, s: Session, store_ids: list[str]) -> tuple[dict[str, dict], dict[str, int]]:
        counts: dict[str, dict] = {i: {} for i in store_ids}
        usage: dict[str, int] = {i: 0 for i in store_ids}
        if not store_ids:
            return counts, usage
        q = (select(VectorStoreFileRow.vector_store_id, VectorStoreFileRow.status, func.count(),
                    func.coalesce(func.sum(VectorStoreFileRow.usage_bytes), 0))
             .where(VectorStoreFileRow.vector_store_id.in_(store_ids))
             .group_by(VectorStoreFileRow.vector_store_id, VectorStoreFileRow.status))
        for store_id, status, n, used in s.execute(q):
            counts[store_id][status] = n
            usage[store_id] += int(used)
        return counts, usage

    def view(self, s: Session, row: VectorStoreRow) -> dict:
        counts, usage = self.counts(s, [row.id])
        return store_view(row, counts[row.id], usage[row.id])

    def create(self, project_id: str, *, name: str, description: str | None, days: int | None, metadata: dict,
               deployment: str) -> VectorStoreRow:
        at = now()
        row = VectorStoreRow(id=new_id("vs_"), project_id=project_id, name=name, description=description,
                             created_at=at, last_active_at=at, expires_after_days=days,
                             expires_at=at + timedelta(days=days) if days else None,
                             metadata_json=json.dumps(metadata), embedding_deployment=deployment, version=0)
        with self.db.session() as s:
            s.add(row)
        return row

    def touch(self, s: Session, row: VectorStoreRow) -> None:
        """Active now: the expiry counts from here (written at most once a minute)."""
        if not _touch_due(row):
            return
        at = now()
        row.last_active_at = at
        if row.expires_after_days:
            row.expires_at = at + timedelta(days=row.expires_after_days)

    def list(self, project_id: str, *, limit: int, after: str | None, before: str | None,
             descending: bool) -> tuple[list[dict], bool]:
        with self.db.session() as s:
            q = select(VectorStoreRow).where(VectorStoreRow.project_id == project_id)
            q = _cursor(s, q, VectorStoreRow.seq, VectorStoreRow.id, (VectorStoreRow.project_id == project_id,),
                        after, before, descending)
            rows = list(s.scalars(q.order_by(VectorStoreRow.seq.desc() if descending else VectorStoreRow.seq)
                                  .limit(limit + 1)))
            counts, usage = self.counts(s, [r.id for r in rows[:limit]])
            return [store_view(r, counts[r.id], usage[r.id]) for r in rows[:limit]], len(rows) > limit

    def delete(self, project_id: str, store_id: str) -> None:
        with self.db.session() as s:
            row = self.store_row(s, project_id, store_id)
            self.bump(s, store_id)  # the store's row first, as ingestion takes it: no deadlock between them
            s.execute(delete(VectorChunkRow).where(VectorChunkRow.vector_store_id == store_id))
            s.execute(delete(VectorStoreFileRow).where(VectorStoreFileRow.vector_store_id == store_id))
            s.execute(delete(VectorStoreFileBatchRow).where(VectorStoreFileBatchRow.vector_store_id == store_id))
            s.delete(row)

    def purge_expired(self) -> int:
        with self.db.session() as s:
            ids = list(s.scalars(select(VectorStoreRow.id).where(VectorStoreRow.expires_at <= now() - EXPIRED_KEPT)
                                 .limit(100)))
            for store_id in ids:
                self.bump(s, store_id)
                s.execute(delete(VectorChunkRow).where(VectorChunkRow.vector_store_id == store_id))
                s.execute(delete(VectorStoreFileRow).where(VectorStoreFileRow.vector_store_id == store_id))
                s.execute(delete(VectorStoreFileBatchRow).where(VectorStoreFileBatchRow.vector_store_id == store_id))
                s.execute(delete(VectorStoreRow).where(VectorStoreRow.id == store_id))
        return len(ids)

    # -- files ----------------------------------------------------------------------------------------------------

    def attach(self, s: Session, store: VectorStoreRow, files: list[tuple[str, str, dict | None, dict]],
               key_id: str | None, batch_id: str | None) -> list[VectorStoreFileRow]:
        """Add files (file_id, filename, attributes, chunking) to be ingested; a file already there is queued
        again with the new settings."""
        at = now()
        out = []
        existing = {r.file_id: r for r in s.scalars(select(VectorStoreFileRow).where(
            VectorStoreFileRow.vector_store_id == store.id,
            VectorStoreFileRow.file_id.in_([f[0] for f in files])))}
        for file_id, filename, attributes, chunking in files:
            row = existing.get(file_id)
            if row is None:
                row = VectorStoreFileRow(vector_store_id=store.id, file_id=file_id, project_id=store.project_id,
                                         created_at=at, usage_bytes=0, attempts=0)
                s.add(row)
            row.filename, row.key_id, row.batch_id = filename, key_id, batch_id
            row.status, row.last_error, row.lease_owner, row.lease_until = "in_progress", None, None, None
            row.attributes = json.dumps(attributes) if attributes is not None else None
            row.chunking = json.dumps(chunking)
            out.append(row)
        self.touch(s, store)
        s.flush()
        return out

    def file_row(self, s: Session, store_id: str, file_id: str) -> VectorStoreFileRow:
        row = s.scalar(select(VectorStoreFileRow).where(VectorStoreFileRow.vector_store_id == store_id,
                                                        VectorStoreFileRow.file_id == file_id))
        if row is None:
            raise NotFound(f"No file '{file_id[:80]}' in vector store '{store_id[:80]}'.", param="file_id")
        return row

    def list_files(self, project_id: str, store_id: str, *, status: str | None, batch_id: str | None, limit: int,
                   after: str | None, before: str | None, descending: bool) -> tuple[list[dict], bool]:
        with self.db.session() as s:
            self.store_row(s, project_id, store_id)
            q = select(VectorStoreFileRow).where(VectorStoreFileRow.vector_store_id == store_id)
            if status is not None:
                q = q.where(VectorStoreFileRow.status == status)
            if batch_id is not None:
                q = q.where(VectorStoreFileRow.batch_id == batch_id)
            q = _cursor(s, q, VectorStoreFileRow.seq, VectorStoreFileRow.file_id,
                        (VectorStoreFileRow.vector_store_id == store_id,), after, before, descending)
            rows = list(s.scalars(q.order_by(VectorStoreFileRow.seq.desc() if descending else VectorStoreFileRow.seq)
                                  .limit(limit + 1)))
            return [file_view(r) for r in rows[:limit]], len(rows) > limit

    def detach(self, s: Session, store: VectorStoreRow, file_id: str) -> None:
        row = self.file_row(s, store.id, file_id)
        self.bump(s, store.id)
        s.execute(delete(VectorChunkRow).where(VectorChunkRow.vector_store_id == store.id,
                                               VectorChunkRow.file_id == file_id))
        s.delete(row)

    def detach_everywhere(self, project_id: str, file_id: str) -> int:
        """A deleted File leaves every vector store of its project, its chunks with it."""
        with self.db.session() as s:
            stores = list(s.scalars(select(VectorStoreFileRow.vector_store_id).where(
                VectorStoreFileRow.file_id == file_id, VectorStoreFileRow.project_id == project_id)))
            for store_id in stores:
                self.bump(s, store_id)
                s.execute(delete(VectorChunkRow).where(VectorChunkRow.vector_store_id == store_id,
                                                       VectorChunkRow.file_id == file_id))
                s.execute(delete(VectorStoreFileRow).where(VectorStoreFileRow.vector_store_id == store_id,
                                                           VectorStoreFileRow.file_id == file_id))
        return len(stores)

    def bump(self, s: Session, store_id: str) -> None:
        """Take the store's row (PostgreSQL: a row lock until commit) and mark its chunks changed."""
        s.execute(update(VectorStoreRow).where(VectorStoreRow.id == store_id)
                  .values(version=VectorStoreRow.version + 1))

    # -- batches ----------------------------------------------------------------------------------------------------

    def batch_counts(self, s: Session, batch_id: str) -> dict[str, int]:
        q = (select(VectorStoreFileRow.status, func.count()).where(VectorStoreFileRow.batch_id == batch_id)
             .group_by(VectorStoreFileRow.status))
        return {status: n for status, n in s.execute(q)}

    def batch_row(self, s: Session, store_id: str, batch_id: str) -> VectorStoreFileBatchRow:
        row = s.get(VectorStoreFileBatchRow, batch_id)
        if row is None or row.vector_store_id != store_id:
            raise NotFound(f"No file batch '{batch_id[:80]}' in vector store '{store_id[:80]}'.", param="batch_id")
        return row

    def cancel_batch(self, s: Session, row: VectorStoreFileBatchRow) -> None:
        row.cancelled = True
        s.execute(update(VectorStoreFileRow).where(VectorStoreFileRow.batch_id == row.id,
                                                   VectorStoreFileRow.status == "in_progress")
                  .values(status="cancelled", lease_owner=None, lease_until=None))

    # -- ingestion leases -------------------------------------------------------------------------------------------

    def claim(self, owner: str, lease: timedelta, limit: int = 1) -> list[VectorStoreFileRow]:
        """Files waiting, or whose worker's lease ran out (it died): taken for `lease`. PostgreSQL skips rows
        another worker is taking at this moment (FOR UPDATE SKIP LOCKED)."""
        at = now()
        with self.db.session() as s:
            q = (select(VectorStoreFileRow)
                 .where(VectorStoreFileRow.status == "in_progress",
                        or_(VectorStoreFileRow.lease_until.is_(None), VectorStoreFileRow.lease_until < at))
                 .order_by(VectorStoreFileRow.seq).limit(limit))
            if s.bind.dialect.name == "postgresql":
                q = q.with_for_update(skip_locked=True)
            rows = list(s.scalars(q))
            for row in rows:
                row.lease_owner, row.lease_until = owner, at + lease
                row.attempts += 1
            return rows

    def renew(self, store_id: str, file_id: str, owner: str, lease: timedelta) -> bool:
        with self.db.session() as s:
            done = s.execute(update(VectorStoreFileRow).where(
                VectorStoreFileRow.vector_store_id == store_id, VectorStoreFileRow.file_id == file_id,
                VectorStoreFileRow.lease_owner == owner, VectorStoreFileRow.status == "in_progress")
                .values(lease_until=now() + lease))
            return done.rowcount == 1

    def finish(self, store_id: str, file_id: str, owner: str, *, chunks: list[dict] | None = None,
               usage_bytes: int = 0, error: dict | None = None) -> bool:
        """Store a file's chunks and mark it `completed`, or mark it `failed`: only while its lease is still this
        worker's and it is still waiting (a cancelled or re-queued file is left as it is: the update is
        conditional). Returns whether it was written."""
        with self.db.session() as s:
            if chunks is not None:
                self.bump(s, store_id)  # first: the store's row lock orders the chunks' seq by commit
            values = ({"status": "failed", "last_error": json.dumps(error)} if error is not None else
                      {"status": "completed", "usage_bytes": usage_bytes, "last_error": None})
            done = s.execute(update(VectorStoreFileRow).where(
                VectorStoreFileRow.vector_store_id == store_id, VectorStoreFileRow.file_id == file_id,
                VectorStoreFileRow.lease_owner == owner, VectorStoreFileRow.status == "in_progress")
                .values(lease_owner=None, lease_until=None, **values))
            if done.rowcount != 1:
                return False  # (the version bump stands: replicas look again, and find nothing new)
            if error is None:
                s.execute(delete(VectorChunkRow).where(VectorChunkRow.vector_store_id == store_id,
                                                       VectorChunkRow.file_id == file_id))
                if chunks:
                    s.execute(insert(VectorChunkRow), [{"vector_store_id": store_id, "file_id": file_id, **c}
                                                       for c in chunks])
            return True

    # -- what a replica's index loads --------------------------------------------------------------------------------

    def chunks_after(self, store_id: str, seq: int, limit: int = 5000) -> list[tuple]:
        with self.db.session() as s:
            return [tuple(r) for r in s.execute(
                select(VectorChunkRow.seq, VectorChunkRow.file_id, VectorChunkRow.terms, VectorChunkRow.vector)
                .where(VectorChunkRow.vector_store_id == store_id, VectorChunkRow.seq > seq)
                .order_by(VectorChunkRow.seq).limit(limit))]

    def live_files(self, store_id: str) -> list[tuple[str, str, dict]]:
        with self.db.session() as s:
            return [(f, n, json.loads(a) if a else {}) for f, n, a in s.execute(
                select(VectorStoreFileRow.file_id, VectorStoreFileRow.filename, VectorStoreFileRow.attributes)
                .where(VectorStoreFileRow.vector_store_id == store_id, VectorStoreFileRow.status == "completed"))]

    # Searches read with Core statements on a plain connection, not an ORM session: a third of the time.

    def searchable(self, project_id: str, store_ids: list[str]) -> list:
        """The stores a search may read (id, version, embedding_deployment, ...), in the given order, checked as
        `store_row` checks them; those not touched for a minute are touched (written)."""
        with self.db.engine.connect() as conn:
            found = {r.id: r for r in conn.execute(_SEARCHABLE, {"project": project_id, "ids": list(store_ids)})}
        rows = [_checked(store_id, found.get(store_id), usable=True) for store_id in store_ids]
        stale = [row.id for row in rows if _touch_due(row)]
        if stale:
            with self.db.session() as s:
                for store_id in stale:
                    self.touch(s, self.store_row(s, project_id, store_id))
        return rows

    def texts(self, store_ids: list[str], seqs: list[int]) -> dict[int, str]:
        if not seqs:
            return {}
        with self.db.engine.connect() as conn:
            return dict(conn.execute(_TEXTS, {"stores": list(store_ids), "seqs": list(seqs)}).all())

    def file_chunks(self, store_id: str, file_id: str) -> list[str]:
        with self.db.session() as s:
            return list(s.scalars(select(VectorChunkRow.text).where(
                VectorChunkRow.vector_store_id == store_id, VectorChunkRow.file_id == file_id)
                .order_by(VectorChunkRow.idx)))


_SEARCHABLE = select(VectorStoreRow.id, VectorStoreRow.version, VectorStoreRow.embedding_deployment,
                     VectorStoreRow.expires_at, VectorStoreRow.last_active_at).where(
    VectorStoreRow.project_id == bindparam("project"), VectorStoreRow.id.in_(bindparam("ids", expanding=True)))
_TEXTS = select(VectorChunkRow.seq, VectorChunkRow.text).where(
    VectorChunkRow.vector_store_id.in_(bindparam("stores", expanding=True)),
    VectorChunkRow.seq.in_(bindparam("seqs", expanding=True)))


def _cursor(s: Session, q, seq, key, scope, after: str | None, before: str | None, descending: bool):
    """`after` / `before` (an object's id, `key`, among the rows `scope` selects) as a condition on `seq`."""
    for cursor, param in ((after, "after"), (before, "before")):
        if cursor is None:
            continue
        mark = s.scalar(select(seq).where(key == cursor, *scope))
        if mark is None:
            raise InvalidRequest(f"Invalid value for '{param}': no object {cursor[:80]} here.", param=param,
                                 code="invalid_value")
        later = (param == "after") != descending
        q = q.where(seq > mark if later else seq < mark)
    return q
