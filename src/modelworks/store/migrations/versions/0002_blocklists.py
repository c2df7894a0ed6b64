"""custom blocklists per project

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 04:20:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('blocklists',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('project_id', sa.String(length=40), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('description', sa.String(length=500), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['project_id'], ['projects.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('project_id', 'name', name='uq_blocklist_project_name')
    )
    op.create_index(op.f('ix_blocklists_project_id'), 'blocklists', ['project_id'], unique=False)
    op.create_table('blocklist_items',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('blocklist_id', sa.String(length=40), nullable=False),
    sa.Column('kind', sa.String(length=10), nullable=False),
    sa.Column('value', sa.String(length=1000), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['blocklist_id'], ['blocklists.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index(op.f('ix_blocklist_items_blocklist_id'), 'blocklist_items', ['blocklist_id'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_blocklist_items_blocklist_id'), table_name='blocklist_items')
    op.drop_table('blocklist_items')
    op.drop_index(op.f('ix_blocklists_project_id'), table_name='blocklists')
    op.drop_table('blocklists')
