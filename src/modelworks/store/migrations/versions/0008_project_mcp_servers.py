"""projects name the remote MCP servers their requests may reach (null: any public address)

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-28 10:00:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('projects', sa.Column('mcp_servers', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('projects') as batch:
        batch.drop_column('mcp_servers')
