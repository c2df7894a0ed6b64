"""SQLite: the seq columns of files, vector stores, their files and chunks, and batches are AUTOINCREMENT, so a
seq is never given twice (SQLite otherwise reuses the largest after it is deleted, and a replica that loads chunks
"after seq N" would miss the new ones). PostgreSQL's sequences never reuse a value: nothing to do there.

Revision ID: 0016
Revises: 0015
Create Date: 2026-11-28 08:00:00
"""
from alembic import op


revision = '0016'
down_revision = '0015'
branch_labels = None
depends_on = None

TABLES = ('files', 'vector_stores', 'vector_store_files', 'vector_chunks', 'batches')


def _recreate(autoincrement: bool) -> None:
    if op.get_bind().dialect.name != 'sqlite':
        return
    for table in TABLES:
        with op.batch_alter_table(table, recreate='always', table_kwargs={'sqlite_autoincrement': autoincrement}):
            pass


def upgrade() -> None:
    _recreate(True)


def downgrade() -> None:
    _recreate(False)
