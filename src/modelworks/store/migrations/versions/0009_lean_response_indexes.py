"""responses: only the indexes that queries use (each finished response is written once, at full request rate)

`ix_responses_project_id` served no query (a response is read by its id, then its project checked);
`ix_response_items_response_id` repeated the first column of `uq_response_item_position`; the status index
now holds only the responses still queued or in progress (what `fail_stale` looks for), not every finished one.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-27 23:30:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None

_RUNNING = "status IN ('queued', 'in_progress')"


def upgrade() -> None:
    op.drop_index('ix_responses_project_id', table_name='responses')
    op.drop_index('ix_response_items_response_id', table_name='response_items')
    op.drop_index('ix_responses_status', table_name='responses')
    op.create_index('ix_responses_running', 'responses', ['status', 'updated_at'],
                    sqlite_where=sa.text(_RUNNING), postgresql_where=sa.text(_RUNNING))


def downgrade() -> None:
    op.drop_index('ix_responses_running', table_name='responses')
    op.create_index('ix_responses_status', 'responses', ['status', 'updated_at'])
    op.create_index('ix_response_items_response_id', 'response_items', ['response_id'])
    op.create_index('ix_responses_project_id', 'responses', ['project_id'])
