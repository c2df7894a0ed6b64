"""vector stores: stores, their files (with the ingestion's leases), file batches and chunks (text, terms,
vector)

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-28 06:00:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None

SEQ = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


def upgrade() -> None:
    op.create_table(
        'vector_stores',
        sa.Column('seq', SEQ, autoincrement=True, nullable=False),
        sa.Column('id', sa.String(length=64), nullable=False),
        sa.Column('project_id', sa.String(length=40), nullable=False),
        sa.Column('name', sa.String(length=256), nullable=False),
        sa.Column('description', sa.Text(), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('last_active_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('expires_after_days', sa.Integer(), nullable=True),
        sa.Column('expires_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('metadata_json', sa.Text(), nullable=False),
        sa.Column('embedding_deployment', sa.String(length=100), nullable=False),
        sa.Column('version', sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint('seq'),
        sa.UniqueConstraint('id'),
    )
    op.create_index('ix_vector_stores_project_order', 'vector_stores', ['project_id', 'seq'])
    op.create_index('ix_vector_stores_expires_at', 'vector_stores', ['expires_at'])
    op.create_table(
        'vector_store_files',
        sa.Column('seq', SEQ, autoincrement=True, nullable=False),
        sa.Column('vector_store_id', sa.String(length=64), nullable=False),
        sa.Column('file_id', sa.String(length=64), nullable=False),
        sa.Column('project_id', sa.String(length=40), nullable=False),
        sa.Column('key_id', sa.String(length=40), nullable=True),
        sa.Column('batch_id', sa.String(length=64), nullable=True),
        sa.Column('filename', sa.String(length=255), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('status', sa.String(length=20), nullable=False),
        sa.Column('last_error', sa.Text(), nullable=True),
        sa.Column('attributes', sa.Text(), nullable=True),
        sa.Column('chunking', sa.Text(), nullable=False),
        sa.Column('usage_bytes', sa.BigInteger(), nullable=False),
        sa.Column('lease_owner', sa.String(length=64), nullable=True),
        sa.Column('lease_until', sa.DateTime(timezone=True), nullable=True),
        sa.Column('attempts', sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(['vector_store_id'], ['vector_stores.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('seq'),
        sa.UniqueConstraint('vector_store_id', 'file_id', name='uq_vector_store_files'),
    )
    op.create_index('ix_vector_store_files_work', 'vector_store_files', ['status', 'lease_until'])
    op.create_index('ix_vector_store_files_file', 'vector_store_files', ['file_id'])
    op.create_index('ix_vector_store_files_batch_id', 'vector_store_files', ['batch_id'])
    op.create_table(
        'vector_store_file_batches',
        sa.Column('id', sa.String(length=64), nullable=False),
        sa.Column('vector_store_id', sa.String(length=64), nullable=False),
        sa.Column('project_id', sa.String(length=40), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('cancelled', sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(['vector_store_id'], ['vector_stores.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_vector_store_file_batches_vector_store_id', 'vector_store_file_batches',
                    ['vector_store_id'])
    op.create_table(
        'vector_chunks',
        sa.Column('seq', SEQ, autoincrement=True, nullable=False),
        sa.Column('vector_store_id', sa.String(length=64), nullable=False),
        sa.Column('file_id', sa.String(length=64), nullable=False),
        sa.Column('idx', sa.Integer(), nullable=False),
        sa.Column('text', sa.Text(), nullable=False),
        sa.Column('terms', sa.Text(), nullable=False),
        sa.Column('tokens', sa.Integer(), nullable=False),
        sa.Column('vector', sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(['vector_store_id'], ['vector_stores.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('seq'),
    )
    op.create_index('ix_vector_chunks_store_seq', 'vector_chunks', ['vector_store_id', 'seq'])
    op.create_index('ix_vector_chunks_store_file', 'vector_chunks', ['vector_store_id', 'file_id'])


def downgrade() -> None:
    op.drop_table('vector_chunks')
    op.drop_table('vector_store_file_batches')
    op.drop_table('vector_store_files')
    op.drop_table('vector_stores')
