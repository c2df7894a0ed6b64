"""Leases on periodic work (issue 15): one replica at a time holds each, its holder renews it, another takes it over
once it runs out or is released; on SQLite and on the real PostgreSQL."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest

from conftest import API_KEY

from modelworks.control.leases import Leases
from modelworks.store.db import Database

LONG = timedelta(minutes=5)


@pytest.fixture
def db(database_url):
    database = Database(database_url)
    database.upgrade()
    yield database
    database.dispose()


def test_one_holder_at_a_time_until_it_runs_out_or_is_released(db):
    a, b = Leases(db, "replica-a"), Leases(db, "replica-b")
    assert a.take("responses.maintain", LONG)
    assert not b.take("responses.maintain", LONG)
    assert a.take("responses.maintain", LONG)  # renewed by its holder
    assert b.take("content_log.purge", LONG)  # another name is another lease
    assert not a.take("content_log.purge", LONG)

    assert a.take("responses.maintain", timedelta(seconds=-1))  # as if a's lease had run out (a stopped)
    assert b.take("responses.maintain", LONG)
    assert not a.take("responses.maintain", LONG)
    assert a.held == set() and b.held == {"responses.maintain", "content_log.purge"}

    b.release_all()  # a replica shutting down gives its leases up at once
    assert a.take("responses.maintain", LONG) and a.take("content_log.purge", LONG)
    assert not b.take("responses.maintain", LONG)


def test_replicas_asking_at_once_get_one_holder(db):
    """Eight replicas ask for a lease no one holds yet, all at once, several times: each time exactly one holds it."""
    for round_ in range(5):
        name = f"race-{round_}"
        replicas = [Leases(db, f"replica-{i}") for i in range(8)]
        start = threading.Barrier(len(replicas))
        results: list[bool] = []

        def ask(leases: Leases) -> None:
            start.wait()
            results.append(leases.take(name, LONG))

        threads = [threading.Thread(target=ask, args=(r,)) for r in replicas]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert sorted(results) == [False] * 7 + [True]


def test_two_replicas_do_the_periodic_work_on_one(tmp_path):
    """Two real replicas on one PostgreSQL: ending stale responses and the purges run on the one holding their
    lease; when it stops, it gives the lease up and the other takes it at its next round."""
    from support.databases import fresh_postgres
    from support.servers import start_modelworks
    from support.waiting import wait_until

    url, drop = fresh_postgres()
    config = {"database": {"url": url}, "backends": {"fake": {"type": "fake"}},
              "deployments": {"fake": {"backend": "fake"}}}
    replicas = {}
    try:
        for name in ("a", "b"):
            replicas[name] = start_modelworks(tmp_path, config, API_KEY, name=f"replica-{name}")

        def holders() -> list[str]:
            return [name for name, proc in replicas.items()
                    if "holds the lease responses.maintain" in proc.log_path.read_text(errors="replace")]

        first = wait_until(holders, what="one replica to take the responses lease")
        assert len(first) == 1
        other = "b" if first == ["a"] else "a"
        replicas[first[0]].stop()  # SIGTERM: it drains, then gives its leases up
        wait_until(lambda: other in holders(), timeout=90, what="the other replica to take the lease over")
    finally:
        for proc in replicas.values():
            proc.stop()
        drop()
