"""usage records keep the content filter's explained decisions

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22 04:50:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('usage_records', sa.Column('filter_decisions', sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('usage_records') as batch:
        batch.drop_column('filter_decisions')
