"""Engine, sessions and migrations. SQLite file under the data directory by default, PostgreSQL by URL."""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS = Path(__file__).resolve().parent / "migrations"

log = logging.getLogger("modelworks.store")


def database_url(configured: str | None, data_dir: Path) -> str:
    if configured:
        for scheme in ("postgresql://", "postgres://"):  # the second as Heroku, some operators and libpq write it
            if configured.startswith(scheme):
                return "postgresql+psycopg://" + configured[len(scheme):]
        return configured
    data_dir.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{data_dir / 'modelworks.db'}"


def make_engine(url: str, pool_size: int = 5, max_overflow: int = 5, transaction_pooler: bool = False) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _pragmas(conn, _record) -> None:  # write-ahead log: readers never wait for the writer
            cur = conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()
        return engine
    # Behind a pooler in transaction mode (PgBouncer), consecutive transactions of one client connection may run on
    # different server connections, where a statement prepared on another does not exist: psycopg then prepares
    # nothing (its default prepares a query on its fifth run).
    # A database host that vanished (a stopped container, a lost node) answers nothing: connecting gives up after
    # 10 s and a statement after 30 s without an acknowledgement, instead of the kernel's minutes.
    connect_args: dict = {}
    if url.startswith(("postgresql+psycopg:", "postgresql:")):  # libpq's options, through psycopg 3
        connect_args = {"connect_timeout": 10, "tcp_user_timeout": 30_000, "keepalives": 1,
                        "keepalives_idle": 30, "keepalives_interval": 10, "keepalives_count": 3}
        if transaction_pooler:
            connect_args["prepare_threshold"] = None
    return create_engine(url, pool_size=pool_size, max_overflow=max_overflow, pool_pre_ping=True,
                         connect_args=connect_args)


class Database:
    def __init__(self, url: str, connect_wait_s: float = 0.0, **engine_options) -> None:
        self.url = url
        self.connect_wait_s = connect_wait_s  # how long `upgrade` (the first use at start) waits for the database
        self.engine = make_engine(url, **engine_options)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @classmethod
    def from_settings(cls, settings) -> "Database":
        """The control-plane store of `settings` (its `database` and, for SQLite, `server.data_dir`)."""
        db = settings.database
        return cls(database_url(db.url, settings.data_path), connect_wait_s=db.connect_wait_s,
                   pool_size=db.pool_size, max_overflow=db.max_overflow, transaction_pooler=db.transaction_pooler)

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._sessions() as session, session.begin():
            yield session

    def upgrade(self, wait_s: float | None = None) -> None:
        """Bring the schema to the newest migration (idempotent; safe with several replicas starting at once),
        waiting up to `wait_s` (default: `connect_wait_s`) for a database that does not accept connections yet."""
        deadline = time.monotonic() + (self.connect_wait_s if wait_s is None else wait_s)
        told = False
        while True:  # only connecting is retried: a migration that fails is reported as it failed
            try:
                with self.engine.connect():
                    break
            except OperationalError as exc:
                if time.monotonic() >= deadline:
                    raise
                if not told:
                    log.warning("waiting for the database (%s)", str(exc).splitlines()[0])
                    told = True
                time.sleep(1)
        self._upgrade()

    def _upgrade(self) -> None:
        from alembic import command
        from alembic.config import Config

        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        with self.engine.begin() as conn:
            if conn.dialect.name == "postgresql":  # one replica migrates at a time
                conn.exec_driver_sql("SELECT pg_advisory_xact_lock(7314159)")
            config.attributes["connection"] = conn
            command.upgrade(config, "head")

    def dispose(self) -> None:
        self.engine.dispose()
