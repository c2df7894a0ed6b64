"""the Responses and Conversations APIs: stored responses, their items, conversations and their items; usage
records name the response a model call was made for

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-27 21:00:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('usage_records', sa.Column('response_id', sa.String(length=64), nullable=True))
    op.create_table(
        'responses',
        sa.Column('id', sa.String(length=64), primary_key=True),
        sa.Column('project_id', sa.String(length=40), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('status', sa.String(length=20), nullable=False),
        sa.Column('previous_response_id', sa.String(length=64), nullable=True),
        sa.Column('conversation_id', sa.String(length=64), nullable=True),
        sa.Column('background', sa.Boolean(), nullable=False),
        sa.Column('owner', sa.String(length=64), nullable=True),
        sa.Column('cancel_requested', sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column('body', sa.Text(), nullable=False),
    )
    op.create_index('ix_responses_project_id', 'responses', ['project_id'])
    op.create_index('ix_responses_expires_at', 'responses', ['expires_at'])
    op.create_index('ix_responses_status', 'responses', ['status', 'updated_at'])
    op.create_table(
        'response_items',
        sa.Column('id', sa.String(length=64), primary_key=True),
        sa.Column('response_id', sa.String(length=64), sa.ForeignKey('responses.id', ondelete='CASCADE'),
                  nullable=False),
        sa.Column('project_id', sa.String(length=40), nullable=False),
        sa.Column('kind', sa.String(length=10), nullable=False),
        sa.Column('position', sa.Integer(), nullable=False),
        sa.Column('body', sa.Text(), nullable=False),
        sa.UniqueConstraint('response_id', 'kind', 'position', name='uq_response_item_position'),
    )
    op.create_index('ix_response_items_response_id', 'response_items', ['response_id'])
    op.create_table(
        'response_events',
        sa.Column('response_id', sa.String(length=64), sa.ForeignKey('responses.id', ondelete='CASCADE'),
                  primary_key=True),
        sa.Column('seq', sa.Integer(), primary_key=True),
        sa.Column('body', sa.Text(), nullable=False),
    )
    op.create_table(
        'conversations',
        sa.Column('id', sa.String(length=64), primary_key=True),
        sa.Column('project_id', sa.String(length=40), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('metadata_json', sa.Text(), nullable=False),
    )
    op.create_index('ix_conversations_project_id', 'conversations', ['project_id'])
    op.create_index('ix_conversations_expires_at', 'conversations', ['expires_at'])
    op.create_table(
        'conversation_items',
        sa.Column('seq', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), primary_key=True, autoincrement=True),
        sa.Column('id', sa.String(length=64), nullable=False, unique=True),
        sa.Column('conversation_id', sa.String(length=64),
                  sa.ForeignKey('conversations.id', ondelete='CASCADE'), nullable=False),
        sa.Column('project_id', sa.String(length=40), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('body', sa.Text(), nullable=False),
    )
    op.create_index('ix_conversation_items_order', 'conversation_items', ['conversation_id', 'seq'])


def downgrade() -> None:
    op.drop_table('conversation_items')
    op.drop_table('conversations')
    op.drop_table('response_events')
    op.drop_table('response_items')
    op.drop_table('responses')
    with op.batch_alter_table('usage_records') as batch:
        batch.drop_column('response_id')
