"""Custom blocklists per project: named lists of exact terms and regular expressions.

A content-filter policy names the lists it applies (`blocklists: [competitors]`); a request is screened with the
lists of that name in the caller's project. Patterns are compiled when added, so a bad one is a 400 then, never a
failure during a request.
"""

from __future__ import annotations

import re
import uuid

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from modelworks.control.keys import _iso, now
from modelworks.errors import InvalidRequest, NotFound
from modelworks.safety.blocklist import PatternError, check_pattern
from modelworks.store.db import Database
from modelworks.store.schema import BlocklistItemRow, BlocklistRow

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
MAX_ITEMS = 10_000
MAX_TERM = 200


def blocklist_view(row: BlocklistRow, items: int | None = None) -> dict:
    view = {"id": row.id, "project_id": row.project_id, "name": row.name, "description": row.description,
            "created_at": _iso(row.created_at), "updated_at": _iso(row.updated_at)}
    if items is not None:
        view["items"] = items
    return view


def item_view(row: BlocklistItemRow) -> dict:
    return {"id": row.id, "blocklist_id": row.blocklist_id, "kind": row.kind, "value": row.value,
            "created_at": _iso(row.created_at)}


class BlocklistService:
    def __init__(self, db: Database) -> None:
        self.db = db

    def create(self, project_id: str, name: str, description: str | None = None) -> dict:
        if not _NAME.match(name):
            raise InvalidRequest("A blocklist name is 1-100 letters, digits, '.', '_' or '-'.", param="name")
        try:
            with self.db.session() as s:
                at = now()
                row = BlocklistRow(id="bl_" + uuid.uuid4().hex[:16], project_id=project_id, name=name,
                                   description=description, created_at=at, updated_at=at)
                s.add(row)
                s.flush()
                return blocklist_view(row, 0)
        except IntegrityError:
            raise InvalidRequest(f"The project already has a blocklist named '{name}'.", param="name",
                                 code="already_exists") from None

    def list(self, project_id: str | None) -> list[dict]:
        with self.db.session() as s:
            counts = (select(BlocklistItemRow.blocklist_id, func.count().label("n"))
                      .group_by(BlocklistItemRow.blocklist_id).subquery())
            query = (select(BlocklistRow, counts.c.n).outerjoin(counts, counts.c.blocklist_id == BlocklistRow.id)
                     .order_by(BlocklistRow.project_id, BlocklistRow.name))
            if project_id is not None:
                query = query.where(BlocklistRow.project_id == project_id)
            return [blocklist_view(row, n or 0) for row, n in s.execute(query)]

    def get(self, blocklist_id: str) -> dict:
        with self.db.session() as s:
            row = self._row(s, blocklist_id)
            count = s.scalar(select(func.count()).where(BlocklistItemRow.blocklist_id == blocklist_id))
            return blocklist_view(row, count)

    def delete(self, blocklist_id: str) -> dict:
        with self.db.session() as s:
            row = self._row(s, blocklist_id)
            view = blocklist_view(row)
            for item in s.scalars(select(BlocklistItemRow).where(BlocklistItemRow.blocklist_id == blocklist_id)):
                s.delete(item)
            s.delete(row)
            return view

    def add_items(self, blocklist_id: str, items: list[dict]) -> list[dict]:
        for i, item in enumerate(items):
            value = item["value"]
            if item["kind"] == "regex":
                try:
                    check_pattern(value)
                except PatternError as exc:
                    raise InvalidRequest(str(exc), param=f"items[{i}].value") from None
            elif not value.strip() or len(value) > MAX_TERM:
                raise InvalidRequest(f"A term is 1-{MAX_TERM} characters.", param=f"items[{i}].value")
        with self.db.session() as s:
            row = self._row(s, blocklist_id)
            count = s.scalar(select(func.count()).where(BlocklistItemRow.blocklist_id == blocklist_id))
            if count + len(items) > MAX_ITEMS:
                raise InvalidRequest(f"A blocklist holds at most {MAX_ITEMS} items.", param="items")
            at = now()
            rows = [BlocklistItemRow(id="bli_" + uuid.uuid4().hex[:16], blocklist_id=blocklist_id, kind=item["kind"],
                                     value=item["value"], created_at=at) for item in items]
            s.add_all(rows)
            row.updated_at = at
            s.flush()
            return [item_view(r) for r in rows]

    def items(self, blocklist_id: str) -> list[dict]:
        with self.db.session() as s:
            self._row(s, blocklist_id)
            query = (select(BlocklistItemRow).where(BlocklistItemRow.blocklist_id == blocklist_id)
                     .order_by(BlocklistItemRow.created_at, BlocklistItemRow.id))
            return [item_view(r) for r in s.scalars(query)]

    def remove_item(self, blocklist_id: str, item_id: str) -> dict:
        with self.db.session() as s:
            row = self._row(s, blocklist_id)
            item = s.get(BlocklistItemRow, item_id)
            if item is None or item.blocklist_id != blocklist_id:
                raise NotFound(f"No item '{item_id}' in this blocklist.", param="item_id")
            view = item_view(item)
            s.delete(item)
            row.updated_at = now()
            return view

    def for_project(self, project_id: str) -> dict[str, tuple[list[str], list[str]]]:
        """The project's lists for screening: name -> (terms, patterns)."""
        return {name: (terms, patterns) for name, (terms, patterns, _) in self.with_ids(project_id).items()}

    def with_ids(self, project_id: str) -> dict[str, tuple[list[str], list[str], dict[str, str]]]:
        """name -> (terms, patterns, {term or pattern: item id})."""
        with self.db.session() as s:
            query = (select(BlocklistRow.name, BlocklistItemRow.kind, BlocklistItemRow.value, BlocklistItemRow.id)
                     .join(BlocklistItemRow, BlocklistItemRow.blocklist_id == BlocklistRow.id, isouter=True)
                     .where(BlocklistRow.project_id == project_id))
            lists: dict[str, tuple[list[str], list[str], dict[str, str]]] = {}
            for name, kind, value, item_id in s.execute(query):
                terms, patterns, ids = lists.setdefault(name, ([], [], {}))
                if kind == "term":
                    terms.append(value)
                elif kind == "regex":
                    patterns.append(value)
                if item_id is not None:
                    ids[value] = item_id
            return lists

    def version(self, project_id: str):
        """Changes to a project's lists move this (the screening cache reloads on a change)."""
        with self.db.session() as s:
            return tuple(s.execute(select(func.count(), func.max(BlocklistRow.updated_at))
                                   .where(BlocklistRow.project_id == project_id)).one())

    @staticmethod
    def _row(s, blocklist_id: str) -> BlocklistRow:
        row = s.get(BlocklistRow, blocklist_id)
        if row is None:
            raise NotFound(f"No blocklist '{blocklist_id}'.", param="blocklist_id")
        return row
