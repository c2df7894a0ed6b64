"""Engine, sessions and migrations. SQLite file under the data directory by default, PostgreSQL by URL."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def database_url(configured: str | None, data_dir: Path) -> str:
    if configured:
        return configured.replace("postgresql://", "postgresql+psycopg://", 1) if configured.startswith(
            "postgresql://") else configured
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
    connect_args = {"prepare_threshold": None} if transaction_pooler and url.startswith("postgresql") else {}
    return create_engine(url, pool_size=pool_size, max_overflow=max_overflow, pool_pre_ping=True,
                         connect_args=connect_args)


class Database:
    def __init__(self, url: str, **engine_options) -> None:
        self.url = url
        self.engine = make_engine(url, **engine_options)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @classmethod
    def from_settings(cls, settings) -> "Database":
        """The control-plane store of `settings` (its `database` and, for SQLite, `server.data_dir`)."""
        db = settings.database
        return cls(database_url(db.url, settings.data_path), pool_size=db.pool_size, max_overflow=db.max_overflow,
                   transaction_pooler=db.transaction_pooler)

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._sessions() as session, session.begin():
            yield session

    def upgrade(self) -> None:
        """Bring the schema to the newest migration (idempotent; safe with several replicas starting at once)."""
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
