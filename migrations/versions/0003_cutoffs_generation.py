"""per-user cutoffs, store generation, message subjects

- ``users.spam_cutoff`` / ``users.ham_cutoff``: an administrator's override
  for one user (NULL: use the model version's cutoffs, then the global ones).
- ``user_cutoffs``: the cutoffs a training set for each user, kept with the
  model version so that a rollback restores them.
- ``store_state``: the ``generation`` counter every score-changing write
  bumps, and ``model_parts.revision``, the generation of a part's last write:
  a daemon reloads what changed by polling one row.
- ``messages.subject``: the decoded subject (255 characters at most) for
  ``spamtl history`` and ``review``; existing rows stay NULL.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25 11:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.add_column(sa.Column('spam_cutoff', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('ham_cutoff', sa.Float(), nullable=True))
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.add_column(sa.Column('subject', sa.String(length=255), nullable=True))
    with op.batch_alter_table('model_parts', schema=None) as batch_op:
        batch_op.add_column(sa.Column('revision', sa.Integer(), server_default=sa.text('0'), nullable=False))
    op.create_table('user_cutoffs',
    sa.Column('model_version_id', sa.Integer(), nullable=False),
    sa.Column('user_name', sa.String(length=255), nullable=False),
    sa.Column('spam_cutoff', sa.Float(), nullable=False),
    sa.Column('ham_cutoff', sa.Float(), nullable=False),
    sa.Column('source', sa.String(length=255), nullable=False),
    sa.ForeignKeyConstraint(['model_version_id'], ['model_versions.id'],
                            name=op.f('fk_user_cutoffs_model_version_id_model_versions'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('model_version_id', 'user_name', name=op.f('pk_user_cutoffs'))
    )
    op.create_table('store_state',
    sa.Column('key', sa.String(length=64), nullable=False),
    sa.Column('value', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('key', name=op.f('pk_store_state'))
    )
    op.execute("INSERT INTO store_state (key, value) VALUES ('generation', 1)")


def downgrade() -> None:
    op.drop_table('store_state')
    op.drop_table('user_cutoffs')
    with op.batch_alter_table('model_parts', schema=None) as batch_op:
        batch_op.drop_column('revision')
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.drop_column('subject')
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.drop_column('ham_cutoff')
        batch_op.drop_column('spam_cutoff')
