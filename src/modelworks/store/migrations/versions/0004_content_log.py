"""content log: prompt and completion text for deployments that opt in, with an expiry

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22 05:00:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('content_log',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('project_id', sa.String(length=40), nullable=True),
    sa.Column('key_id', sa.String(length=40), nullable=True),
    sa.Column('deployment', sa.String(length=100), nullable=False),
    sa.Column('filter_outcome', sa.String(length=40), nullable=True),
    sa.Column('prompt', sa.Text(), nullable=False),
    sa.Column('completion', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index(op.f('ix_content_log_expires_at'), 'content_log', ['expires_at'], unique=False)
    op.create_index(op.f('ix_content_log_project_id'), 'content_log', ['project_id'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_content_log_project_id'), table_name='content_log')
    op.drop_index(op.f('ix_content_log_expires_at'), table_name='content_log')
    op.drop_table('content_log')
