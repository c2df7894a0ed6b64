"""usage_daily: usage summed by UTC day, project, key and deployment (the portal's usage screen), filled from the
records already stored

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-28 02:20:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'usage_daily',
        sa.Column('day', sa.String(length=10), nullable=False),
        sa.Column('project_id', sa.String(length=40), nullable=False),
        sa.Column('key_id', sa.String(length=40), nullable=False),
        sa.Column('deployment', sa.String(length=100), nullable=False),
        sa.Column('requests', sa.BigInteger(), nullable=False),
        sa.Column('prompt_tokens', sa.BigInteger(), nullable=False),
        sa.Column('completion_tokens', sa.BigInteger(), nullable=False),
        sa.Column('cost', sa.Float(), nullable=False),
        sa.Column('errors', sa.BigInteger(), nullable=False),
        sa.Column('latency_ms', sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint('day', 'project_id', 'key_id', 'deployment'),
    )
    op.create_index('ix_usage_daily_day_key', 'usage_daily', ['day', 'key_id'])
    op.create_index('ix_usage_daily_day_deployment', 'usage_daily', ['day', 'deployment'])
    day = ("substr(at, 1, 10)" if op.get_bind().dialect.name == "sqlite"
           else "to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD')")
    op.execute(f"""
        INSERT INTO usage_daily (day, project_id, key_id, deployment, requests, prompt_tokens, completion_tokens,
                                 cost, errors, latency_ms)
        SELECT {day}, project_id, coalesce(key_id, ''), deployment, count(*), sum(prompt_tokens),
               sum(completion_tokens), sum(cost), sum(CASE WHEN status >= 400 THEN 1 ELSE 0 END), sum(latency_ms)
        FROM usage_records GROUP BY {day}, project_id, coalesce(key_id, ''), deployment
    """)


def downgrade() -> None:
    op.drop_table('usage_daily')
