"""model parts may hold the idf weights of a model (kind 'idf')

Models trained by spamtl 0.2 reweight feature rows by inverse document
frequencies learned at training time; they are stored as one more part of
the model version (kind 'idf', name '').  Existing models have no such part
and keep scoring as before.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 10:00:00
"""

from __future__ import annotations

from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('model_parts', schema=None) as batch_op:
        batch_op.drop_constraint(op.f('ck_model_parts_kind'), type_='check')
        batch_op.create_check_constraint(op.f('ck_model_parts_kind'), "kind IN ('shared', 'group', 'user', 'idf')")


def downgrade() -> None:
    # A model trained with idf cannot be scored correctly without its weights:
    # retire those versions rather than leave an active model that scores wrongly.
    op.execute("UPDATE model_versions SET status = 'retired' WHERE id IN "
               "(SELECT model_version_id FROM model_parts WHERE kind = 'idf')")
    op.execute("DELETE FROM model_parts WHERE kind = 'idf'")
    with op.batch_alter_table('model_parts', schema=None) as batch_op:
        batch_op.drop_constraint(op.f('ck_model_parts_kind'), type_='check')
        batch_op.create_check_constraint(op.f('ck_model_parts_kind'), "kind IN ('shared', 'group', 'user')")
