"""Batches and their lines in the control-plane store, and the workers' leases on them.

A worker takes lines (waiting ones, or running ones whose worker's lease ran out) with a conditional update, so
two workers never hold the same line; on PostgreSQL the candidates are read `FOR UPDATE SKIP LOCKED`. A line's
result is written only while the line is still the writer's (`lease_owner`, status `running`), in the statement
that marks it done. Lines are taken across batches in line order, so that batches progress side by side."""

from __future__ import annotations

import json
from datetime import timedelta

from sqlalchemy import and_, case, func, insert, or_, select, update

from modelworks.errors import InvalidRequest, NotFound
from modelworks.store.db import Database
from modelworks.store.times import aware, now, ts
from modelworks.store.schema import BatchLineRow, BatchRow

ACTIVE = ("validating", "in_progress")
ENDED = ("completed", "failed", "expired", "cancelled")


def view(row: BatchRow, counts: dict, usage: tuple[int, int] | None = None) -> dict:
    body = {"id": row.id, "object": "batch", "endpoint": row.endpoint, "model": row.model,
            "input_file_id": row.input_file_id, "completion_window": row.completion_window,
            "status": row.status, "output_file_id": row.output_file_id, "error_file_id": row.error_file_id,
            "created_at": ts(row.created_at), "expires_at": ts(row.expires_at),
            "request_counts": {"total": row.total, "completed": counts.get("completed", 0),
                               "failed": counts.get("failed", 0)},
            "metadata": json.loads(row.metadata_json)}
    for name in ("in_progress_at", "finalizing_at", "completed_at", "failed_at", "expired_at", "cancelling_at",
                 "cancelled_at"):
        value = getattr(row, name)
        if value is not None:
            body[name] = ts(value)
    for name in ("output_file_id", "error_file_id"):
        if body[name] is None:
            del body[name]
    if usage is not None:
        prompt, completion = usage
        body["usage"] = {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": 0},
                         "output_tokens": completion, "output_tokens_details": {"reasoning_tokens": 0},
                         "total_tokens": prompt + completion}
    return body


class BatchDB:
    def __init__(self, db: Database) -> None:
        self.db = db

    # -- batches ------------------------------------------------------------------------------------------------

    def create(self, row: BatchRow, lines) -> None:
        with self.db.session() as s:
            s.add(row)
            s.flush()
            for start in range(0, len(lines), 5000):
                s.execute(insert(BatchLineRow), [
                    {"batch_id": row.id, "line": ln.number, "custom_id": ln.custom_id, "body": ln.body.decode(),
                     "status": "pending", "attempts": 0, "prompt_tokens": 0, "completion_tokens": 0}
                    for ln in lines[start:start + 5000]])

    def row(self, s, project_id: str, batch_id: str) -> BatchRow:
        row = s.scalar(select(BatchRow).where(BatchRow.id == batch_id, BatchRow.project_id == project_id))
        if row is None:
            raise NotFound(f"No batch found with id '{batch_id[:80]}'.", param="batch_id")
        return row

    def counts(self, s, batch_id: str) -> tuple[dict, tuple[int, int]]:
        q = (select(func.sum(case((and_(BatchLineRow.status == "done", BatchLineRow.ok.is_(True)), 1), else_=0)),
                    func.sum(case((and_(BatchLineRow.status == "done", BatchLineRow.ok.is_(False)), 1), else_=0)),
                    func.coalesce(func.sum(BatchLineRow.prompt_tokens), 0),
                    func.coalesce(func.sum(BatchLineRow.completion_tokens), 0))
             .where(BatchLineRow.batch_id == batch_id))
        done, failed, prompt, completion = s.execute(q).one()
        return {"completed": int(done or 0), "failed": int(failed or 0)}, (int(prompt), int(completion))

    def view(self, s, row: BatchRow) -> dict:
        counts, usage = self.counts(s, row.id)
        return view(row, counts, usage)

    def get(self, project_id: str, batch_id: str) -> dict:
        with self.db.session() as s:
            return self.view(s, self.row(s, project_id, batch_id))

    def list(self, project_id: str, *, limit: int, after: str | None) -> tuple[list[dict], bool]:
        with self.db.session() as s:
            q = select(BatchRow).where(BatchRow.project_id == project_id)
            if after is not None:
                mark = s.scalar(select(BatchRow.seq).where(BatchRow.id == after, BatchRow.project_id == project_id))
                if mark is None:
                    raise InvalidRequest(f"Invalid value for 'after': no batch {after[:80]}.", param="after",
                                         code="invalid_value")
                q = q.where(BatchRow.seq < mark)
            rows = list(s.scalars(q.order_by(BatchRow.seq.desc()).limit(limit + 1)))
            return [self.view(s, r) for r in rows[:limit]], len(rows) > limit

    def cancel(self, project_id: str, batch_id: str) -> dict:
        """`cancelling`: the lines not yet taken are cancelled now; the running ones end (or their leases run
        out), then the batch is finished as `cancelled` with what was done."""
        with self.db.session() as s:
            row = self.row(s, project_id, batch_id)
            if row.status in ACTIVE:
                row.status, row.cancelling_at = "cancelling", now()
                s.execute(update(BatchLineRow).where(BatchLineRow.batch_id == batch_id,
                                                     BatchLineRow.status == "pending")
                          .values(status="done", ok=False, result=None))
            elif row.status not in ("cancelling", "cancelled"):
                raise InvalidRequest(f"The batch is {row.status}: only a validating or in-progress batch can be "
                                     "cancelled.", param="batch_id", code="invalid_state")
            s.flush()
            return self.view(s, row)

    # -- lines ----------------------------------------------------------------------------------------------------

    def claim(self, owner: str, lease: timedelta, limit: int) -> list[tuple[BatchRow, BatchLineRow]]:
        at = now()
        takeable = or_(BatchLineRow.status == "pending",
                       and_(BatchLineRow.status == "running", BatchLineRow.lease_until < at))
        with self.db.session() as s:
            q = (select(BatchLineRow.batch_id, BatchLineRow.line)
                 .join(BatchRow, BatchRow.id == BatchLineRow.batch_id)
                 .where(BatchRow.status.in_(ACTIVE), takeable)
                 .order_by(BatchLineRow.line, BatchRow.seq).limit(limit))
            if s.bind.dialect.name == "postgresql":
                q = q.with_for_update(of=BatchLineRow, skip_locked=True)
            taken = []
            for batch_id, line in s.execute(q).all():
                done = s.execute(update(BatchLineRow).where(
                    BatchLineRow.batch_id == batch_id, BatchLineRow.line == line, takeable)
                    .values(status="running", lease_owner=owner, lease_until=at + lease,
                            attempts=BatchLineRow.attempts + 1))
                if done.rowcount == 1:
                    taken.append((batch_id, line))
            if not taken:
                return []
            s.execute(update(BatchRow).where(BatchRow.id.in_({b for b, _ in taken}), BatchRow.status == "validating")
                      .values(status="in_progress", in_progress_at=at))
            batches = {r.id: r for r in s.scalars(select(BatchRow).where(BatchRow.id.in_({b for b, _ in taken})))}
            rows = {(r.batch_id, r.line): r for r in s.scalars(select(BatchLineRow).where(
                or_(*(and_(BatchLineRow.batch_id == b, BatchLineRow.line == n) for b, n in taken))))}
            return [(batches[b], rows[(b, n)]) for b, n in taken]

    def renew(self, keys: list[tuple[str, int]], owner: str, lease: timedelta) -> None:
        if not keys:
            return
        with self.db.session() as s:
            s.execute(update(BatchLineRow).where(
                or_(*(and_(BatchLineRow.batch_id == b, BatchLineRow.line == n) for b, n in keys)),
                BatchLineRow.lease_owner == owner, BatchLineRow.status == "running")
                .values(lease_until=now() + lease))

    def release(self, batch_id: str, line: int, owner: str) -> None:
        """Give a line back untouched (a rate limit, or interactive calls first): it is taken again later."""
        with self.db.session() as s:
            s.execute(update(BatchLineRow).where(
                BatchLineRow.batch_id == batch_id, BatchLineRow.line == line, BatchLineRow.lease_owner == owner,
                BatchLineRow.status == "running")
                .values(status="pending", lease_owner=None, lease_until=None,
                        attempts=BatchLineRow.attempts - 1))

    def finish(self, batch_id: str, line: int, owner: str, ok: bool, result: dict, tokens: tuple[int, int]) -> bool:
        with self.db.session() as s:
            done = s.execute(update(BatchLineRow).where(
                BatchLineRow.batch_id == batch_id, BatchLineRow.line == line, BatchLineRow.lease_owner == owner,
                BatchLineRow.status == "running")
                .values(status="done", ok=ok, result=json.dumps(result), lease_owner=None, lease_until=None,
                        prompt_tokens=tokens[0], completion_tokens=tokens[1]))
            return done.rowcount == 1

    # -- finishing batches ------------------------------------------------------------------------------------------

    def ready(self) -> list[str]:
        """Batches that may be ready to finish (`start_finalizing` decides): every line done, cancelling, past
        their expiry, or left finalizing by a worker whose lease ran out."""
        at = now()
        open_lines = (select(BatchLineRow.line).where(BatchLineRow.batch_id == BatchRow.id,
                                                      BatchLineRow.status != "done").exists())
        with self.db.session() as s:
            return list(s.scalars(select(BatchRow.id).where(or_(
                BatchRow.status == "cancelling",
                and_(BatchRow.status.in_(ACTIVE), ~open_lines),
                and_(BatchRow.status.in_(ACTIVE), BatchRow.expires_at <= at),
                and_(BatchRow.status == "finalizing", BatchRow.lease_until < at))).limit(20)))

    def start_finalizing(self, batch_id: str, owner: str, lease: timedelta) -> tuple[BatchRow, str] | None:
        """Take a batch to finish it, and what it ends as (completed, expired or cancelled); its lines not done
        end now (expired or cancelled: they go to the error file). None: not ready, or another worker has it."""
        at = now()
        with self.db.session() as s:
            row = s.scalar(select(BatchRow).where(BatchRow.id == batch_id))
            if row is None or row.status in ENDED:
                return None
            if row.status == "finalizing":
                if row.lease_until is not None and aware(row.lease_until) > at:
                    return None
                outcome = _outcome(row)  # its finisher died: taken over, to the same end
            else:
                remaining = s.scalar(select(func.count()).where(BatchLineRow.batch_id == batch_id,
                                                                BatchLineRow.status != "done"))
                running = s.scalar(select(func.count()).where(BatchLineRow.batch_id == batch_id,
                                                              BatchLineRow.status == "running",
                                                              BatchLineRow.lease_until >= at))
                if row.status in ACTIVE and aware(row.expires_at) <= at:
                    outcome = "expired"
                elif row.status == "cancelling":
                    if running:
                        return None  # its running lines end first
                    outcome = "cancelled"
                elif remaining:
                    return None
                else:
                    outcome = "completed"
            # taken only if no other worker took it since it was read (PostgreSQL: two replicas may race here)
            seen = (BatchRow.lease_owner.is_(None) if row.lease_owner is None else
                    BatchRow.lease_owner == row.lease_owner)
            taken = s.execute(update(BatchRow).where(BatchRow.id == batch_id, BatchRow.status == row.status, seen)
                              .values(status="finalizing", lease_owner=f"{owner}|{outcome}", lease_until=at + lease,
                                      finalizing_at=row.finalizing_at or at)
                              .execution_options(synchronize_session=False))
            if taken.rowcount != 1:
                return None
            s.execute(update(BatchLineRow).where(BatchLineRow.batch_id == batch_id, BatchLineRow.status != "done")
                      .values(status="done", ok=False, result=None, lease_owner=None, lease_until=None))
            s.refresh(row)
            return row, outcome

    def lines(self, batch_id: str, after: int = 0, limit: int = 1000) -> list[tuple[int, str, bool, str | None]]:
        """(line, custom_id, ok, result) of the lines after `after`, in order: a page."""
        with self.db.session() as s:
            return [tuple(r) for r in s.execute(
                select(BatchLineRow.line, BatchLineRow.custom_id, BatchLineRow.ok, BatchLineRow.result)
                .where(BatchLineRow.batch_id == batch_id, BatchLineRow.line > after)
                .order_by(BatchLineRow.line).limit(limit))]

    def renew_finalizing(self, batch_id: str, owner: str, lease: timedelta) -> None:
        with self.db.session() as s:
            s.execute(update(BatchRow).where(BatchRow.id == batch_id, BatchRow.status == "finalizing",
                                             BatchRow.lease_owner.like(f"{owner}|%"))
                      .values(lease_until=now() + lease))

    def end(self, batch_id: str, owner: str, outcome: str, output_file_id: str | None,
            error_file_id: str | None) -> bool:
        at = now()
        values = {"status": outcome, "output_file_id": output_file_id, "error_file_id": error_file_id,
                  "lease_owner": None, "lease_until": None, f"{outcome}_at": at}
        with self.db.session() as s:
            done = s.execute(update(BatchRow).where(BatchRow.id == batch_id, BatchRow.status == "finalizing",
                                                    BatchRow.lease_owner.like(f"{owner}|%")).values(**values))
            return done.rowcount == 1


def _outcome(row: BatchRow) -> str:
    """What a batch being finished will end as (kept with its finisher: `owner|outcome`)."""
    return (row.lease_owner or "|completed").split("|", 1)[1]
