"""retention and concurrency: prunable message bodies, pinned models, a locks table

- ``messages.raw`` becomes nullable: ``spamtl prune`` drops the body of
  classified mail nobody labelled once it is older than the retention period,
  keeping the sha256 / Message-ID row while a classification refers to it.
- ``messages.received_at`` and ``classifications.created_at`` get indexes, as
  retention selects by age.
- ``model_versions.pinned``: a pinned version keeps its weights.
- ``locks``: named locks (the training lock) acquired with
  ``INSERT ... ON CONFLICT DO NOTHING``; see ``spamtl.services.lock``.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25 11:30:00
"""

from __future__ import annotations

import zlib

import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('locks',
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('host', sa.String(length=255), nullable=False),
    sa.Column('pid', sa.Integer(), nullable=False),
    sa.Column('acquired_at', sa.DateTime(), nullable=False),
    sa.Column('heartbeat_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_locks'))
    )
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.alter_column('raw', existing_type=sa.LargeBinary(), nullable=True)
        batch_op.create_index(batch_op.f('ix_messages_received_at'), ['received_at'], unique=False)
    with op.batch_alter_table('classifications', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_classifications_created_at'), ['created_at'], unique=False)
    with op.batch_alter_table('model_versions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('pinned', sa.Boolean(), server_default=sa.false(), nullable=False))


def downgrade() -> None:
    with op.batch_alter_table('model_versions', schema=None) as batch_op:
        batch_op.drop_column('pinned')
    with op.batch_alter_table('classifications', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_classifications_created_at'))
    # Bodies dropped by retention are gone; the old schema needs some bytes, so they become an empty message.
    op.get_bind().execute(sa.text("UPDATE messages SET raw = :empty WHERE raw IS NULL"),
                          {"empty": zlib.compress(b"", 6)})
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_messages_received_at'))
        batch_op.alter_column('raw', existing_type=sa.LargeBinary(), nullable=False)
    op.drop_table('locks')
