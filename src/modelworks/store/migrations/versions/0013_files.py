"""files: the Files API's files (metadata) and, for `files.storage: database`, their bytes in parts

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-28 05:00:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'files',
        sa.Column('seq', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
        sa.Column('id', sa.String(length=64), nullable=False),
        sa.Column('project_id', sa.String(length=40), nullable=False),
        sa.Column('filename', sa.String(length=255), nullable=False),
        sa.Column('purpose', sa.String(length=32), nullable=False),
        sa.Column('bytes', sa.BigInteger(), nullable=False),
        sa.Column('sha256', sa.String(length=64), nullable=False),
        sa.Column('media_type', sa.String(length=100), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('expires_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('status', sa.String(length=20), nullable=False),
        sa.Column('status_details', sa.Text(), nullable=True),
        sa.Column('storage', sa.String(length=16), nullable=False),
        sa.PrimaryKeyConstraint('seq'),
        sa.UniqueConstraint('id'),
    )
    op.create_index('ix_files_project_order', 'files', ['project_id', 'seq'])
    op.create_index('ix_files_expires_at', 'files', ['expires_at'])
    op.create_table(
        'file_parts',
        sa.Column('file_id', sa.String(length=64), nullable=False),
        sa.Column('part', sa.Integer(), nullable=False),
        sa.Column('data', sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(['file_id'], ['files.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('file_id', 'part'),
    )


def downgrade() -> None:
    op.drop_table('file_parts')
    op.drop_index('ix_files_expires_at', table_name='files')
    op.drop_index('ix_files_project_order', table_name='files')
    op.drop_table('files')
