"""Leases on periodic work: purges and the ending of runs whose replica stopped are done by one replica at a time.

A lease is a row (`leases`): its holder and until when. `take` renews it for its holder, or takes it once it has run
out, in one conditional statement; the first replica to ask for a new name inserts it (a second insert fails on the
primary key and that replica does not hold it). A holder that stops leaves the lease to run out: another replica
takes it over at most `ttl` later. Works alike on SQLite and PostgreSQL."""

from __future__ import annotations

import logging
import uuid
from datetime import timedelta

from sqlalchemy import delete, insert, or_, update
from sqlalchemy.exc import IntegrityError

from modelworks.store.db import Database
from modelworks.store.schema import LeaseRow
from modelworks.store.times import now

log = logging.getLogger("modelworks.leases")


class Leases:
    def __init__(self, db: Database, owner: str | None = None) -> None:
        self.db = db
        self.owner = owner or uuid.uuid4().hex[:16]  # this process
        self.held: set[str] = set()

    def take(self, name: str, ttl: timedelta) -> bool:
        """Whether this process holds `name` for the next `ttl` (renewed if it held it already)."""
        at = now()
        with self.db.session() as s:
            renewed = s.execute(update(LeaseRow).where(
                LeaseRow.name == name, or_(LeaseRow.owner == self.owner, LeaseRow.until < at))
                .values(owner=self.owner, until=at + ttl))
            if renewed.rowcount == 1:
                self._hold(name)
                return True
        try:
            with self.db.session() as s:
                s.execute(insert(LeaseRow).values(name=name, owner=self.owner, until=at + ttl))
        except IntegrityError:  # there is a row, and it is another replica's and still running
            self.held.discard(name)
            return False
        self._hold(name)
        return True

    def _hold(self, name: str) -> None:
        if name not in self.held:
            self.held.add(name)
            log.info("this replica now holds the lease %s (its work runs here, on no other replica)", name)

    def release(self, name: str) -> None:
        """Give a held lease up: another replica may take it at once."""
        with self.db.session() as s:
            s.execute(delete(LeaseRow).where(LeaseRow.name == name, LeaseRow.owner == self.owner))
        self.held.discard(name)

    def release_all(self) -> None:
        """At shutdown: the leases this process holds go to the other replicas at once, not when they run out."""
        for name in list(self.held):
            try:
                self.release(name)
            except Exception:  # noqa: BLE001 - they run out on their own
                log.warning("could not release the lease %s", name, exc_info=True)
