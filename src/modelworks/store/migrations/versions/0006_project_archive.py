"""projects can be archived: a status and the time of archiving

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-27 18:00:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('projects', sa.Column('status', sa.String(length=20), server_default='active', nullable=False))
    op.add_column('projects', sa.Column('archived_at', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('projects') as batch:
        batch.drop_column('archived_at')
        batch.drop_column('status')
