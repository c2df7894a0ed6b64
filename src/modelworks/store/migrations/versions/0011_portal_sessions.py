"""portal sessions: the browser's random session id (hashed) and the key it was opened with

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-28 01:20:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'portal_sessions',
        sa.Column('id_hash', sa.String(length=64), nullable=False),
        sa.Column('key_id', sa.String(length=40), nullable=False),
        sa.Column('csrf', sa.String(length=64), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('seen_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('user_agent', sa.String(length=200), nullable=False),
        sa.Column('used_forms', sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(['key_id'], ['api_keys.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id_hash'),
    )
    op.create_index('ix_portal_sessions_key_id', 'portal_sessions', ['key_id'])
    op.create_index('ix_portal_sessions_expires_at', 'portal_sessions', ['expires_at'])


def downgrade() -> None:
    op.drop_index('ix_portal_sessions_expires_at', table_name='portal_sessions')
    op.drop_index('ix_portal_sessions_key_id', table_name='portal_sessions')
    op.drop_table('portal_sessions')
