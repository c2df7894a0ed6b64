"""batches: the Batch API's batches and their lines (with the workers' leases); usage records name the batch a
model call was made for

Revision ID: 0015
Revises: 0014
Create Date: 2026-11-28 07:00:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0015'
down_revision = '0014'
branch_labels = None
depends_on = None

SEQ = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


def upgrade() -> None:
    op.add_column('usage_records', sa.Column('batch_id', sa.String(length=64), nullable=True))
    when = [sa.Column(name, sa.DateTime(timezone=True), nullable=True) for name in (
        'in_progress_at', 'finalizing_at', 'completed_at', 'failed_at', 'expired_at', 'cancelling_at',
        'cancelled_at')]
    op.create_table(
        'batches',
        sa.Column('seq', SEQ, autoincrement=True, nullable=False),
        sa.Column('id', sa.String(length=64), nullable=False),
        sa.Column('project_id', sa.String(length=40), nullable=False),
        sa.Column('key_id', sa.String(length=40), nullable=True),
        sa.Column('endpoint', sa.String(length=40), nullable=False),
        sa.Column('model', sa.String(length=200), nullable=False),
        sa.Column('input_file_id', sa.String(length=64), nullable=False),
        sa.Column('completion_window', sa.String(length=10), nullable=False),
        sa.Column('status', sa.String(length=20), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
        *when,
        sa.Column('output_file_id', sa.String(length=64), nullable=True),
        sa.Column('error_file_id', sa.String(length=64), nullable=True),
        sa.Column('metadata_json', sa.Text(), nullable=False),
        sa.Column('output_expires_s', sa.Integer(), nullable=True),
        sa.Column('total', sa.Integer(), nullable=False),
        sa.Column('lease_owner', sa.String(length=64), nullable=True),
        sa.Column('lease_until', sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint('seq'),
        sa.UniqueConstraint('id'),
    )
    op.create_index('ix_batches_project_order', 'batches', ['project_id', 'seq'])
    op.create_index('ix_batches_status', 'batches', ['status'])
    op.create_table(
        'batch_lines',
        sa.Column('batch_id', sa.String(length=64), nullable=False),
        sa.Column('line', sa.Integer(), nullable=False),
        sa.Column('custom_id', sa.String(length=512), nullable=False),
        sa.Column('body', sa.Text(), nullable=False),
        sa.Column('status', sa.String(length=12), nullable=False),
        sa.Column('lease_owner', sa.String(length=64), nullable=True),
        sa.Column('lease_until', sa.DateTime(timezone=True), nullable=True),
        sa.Column('attempts', sa.Integer(), nullable=False),
        sa.Column('ok', sa.Boolean(), nullable=True),
        sa.Column('result', sa.Text(), nullable=True),
        sa.Column('prompt_tokens', sa.Integer(), nullable=False),
        sa.Column('completion_tokens', sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(['batch_id'], ['batches.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('batch_id', 'line'),
        sa.UniqueConstraint('batch_id', 'custom_id', name='uq_batch_lines_custom_id'),
    )
    op.create_index('ix_batch_lines_work', 'batch_lines', ['status', 'line'])


def downgrade() -> None:
    op.drop_table('batch_lines')
    op.drop_table('batches')
    with op.batch_alter_table('usage_records') as batch:
        batch.drop_column('batch_id')
