"""stored messages lose the spam-filter headers; header variants of one message become one row

A message's identity is now the sha256 of its bytes without the headers
spam filters add (``spamtl.mail.headers.strip_own_headers``: X-Spamtl-*, X-Spam-*,
X-Bogosity, X-Spamd-*, X-Rspamd-*).  Stores written before kept those
headers, so a delivered copy (with spamtl's verdict) and the original were
two rows, and the verdict headers were learned as features.  For every
stored message with such headers: strip them and recompute the sha256; if
another row already has that sha256, move this row's labels and
classifications to it and delete this row (its cached features were computed
with the headers); otherwise rewrite the row in place and drop its cached
features (they are recomputed at the next training).  Rows are read in
batches by id, so memory stays bounded on any store.

The downgrade changes nothing: the stripped headers are not kept anywhere.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25 12:00:00
"""

from __future__ import annotations

import hashlib
import zlib

import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None

BATCH = 500


def upgrade() -> None:
    from spamtl.mail.headers import strip_own_headers

    conn = op.get_bind()
    last, changed = 0, False
    while True:
        batch = conn.execute(sa.text("SELECT id, raw FROM messages WHERE id > :last ORDER BY id LIMIT :n"),
                             {"last": last, "n": BATCH}).all()
        if not batch:
            break
        last = int(batch[-1][0])
        for pk, data in batch:
            raw = zlib.decompress(data)
            clean = strip_own_headers(raw)
            if clean == raw:
                continue
            changed = True
            sha = hashlib.sha256(clean).hexdigest()
            params = {"pk": pk}
            conn.execute(sa.text("DELETE FROM message_features WHERE message_id = :pk"), params)
            survivor = conn.execute(sa.text("SELECT id FROM messages WHERE sha256 = :sha AND id != :pk"),
                                    {"sha": sha, "pk": pk}).scalar()
            if survivor is not None:
                moved = {"pk": pk, "to": survivor}
                conn.execute(sa.text("UPDATE labels SET message_id = :to WHERE message_id = :pk"), moved)
                conn.execute(sa.text("UPDATE classifications SET message_id = :to WHERE message_id = :pk"), moved)
                conn.execute(sa.text("DELETE FROM messages WHERE id = :pk"), params)
            else:
                conn.execute(sa.text("UPDATE messages SET sha256 = :sha, raw = :raw, size = :size WHERE id = :pk"),
                             {"sha": sha, "raw": zlib.compress(clean, 6), "size": len(clean), "pk": pk})
    if changed:  # verdicts may change (labels now reach the delivered copies): readers must reload
        conn.execute(sa.text("UPDATE store_state SET value = value + 1 WHERE key = 'generation'"))


def downgrade() -> None:
    pass
