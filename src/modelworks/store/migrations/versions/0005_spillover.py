"""deployments name a spillover deployment (provisioned types)

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-22 06:20:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('deployments', sa.Column('spillover', sa.String(length=100), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('deployments') as batch:
        batch.drop_column('spillover')
