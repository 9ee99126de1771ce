"""messages are known by a digest that survives delivery; copies that differ only in transport become one

A message's ``sha256`` is now its digest by ``spamtl.mail.headers.message_identity``:
the sha256 of its bytes without filter headers, without the run of trace
fields at the top of the header block (Received, Return-Path, Delivered-To,
X-Original-To, ...), the mbox ``From `` line and leading blank-led lines, with
every line end as LF and none at the very end.  Before, it was the sha256 of
the bytes without filter headers, so the copy a user moved in IMAP (CRLF,
Return-Path, Delivered-To and Received written above it after classification)
was another message, and a correction never reached the verdict.

For every stored message whose body is still stored, in id order and in
batches (memory stays bounded on any store): recompute the digest.  If another
row already has it, this row is a copy of that message: its labels and
classifications move to that row (none is lost; the latest label of a user
still wins by id), the surviving row keeps its bytes (the first copy stored;
it takes this row's body if its own was pruned), the earlier ``received_at``
and any Message-ID, date or subject it lacked, and this row goes with its
cached features.  Otherwise the row gets the new digest in place; its bytes,
and so its cached features, are unchanged.  Rows whose body retention dropped
keep their old digest (nothing to recompute it from); they are still found by
Message-ID and by the id shown in their verdict.

The downgrade gives every row with a body the digest the old code computes
(the sha256 of the stored bytes: stored bytes never have filter headers) and
merges a row into one that already has that digest; rows merged on the way up
stay merged (their other copies are not kept).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-27 10:00:00
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

BATCH = 500


def upgrade() -> None:
    from spamtl.mail.headers import message_identity

    _rehash(lambda raw: message_identity(raw))


def downgrade() -> None:
    _rehash(lambda raw: (raw, hashlib.sha256(raw).hexdigest()))


def _rehash(identity: Callable[[bytes], tuple[bytes, str]]) -> None:
    """Give each row with a body the digest ``identity`` says, merging rows that then coincide."""
    conn = op.get_bind()
    last, changed = 0, False
    while True:
        batch = conn.execute(sa.text("SELECT id, sha256, raw, message_id, date, received_at, subject FROM messages "
                                     "WHERE id > :last AND raw IS NOT NULL ORDER BY id LIMIT :n"),
                             {"last": last, "n": BATCH}).all()
        if not batch:
            break
        last = int(batch[-1][0])
        for pk, sha, data, message_id, date, received_at, subject in batch:
            raw = zlib.decompress(data)
            kept, digest = identity(raw)
            if digest == sha and kept == raw:
                continue
            changed = True
            survivor = conn.execute(sa.text("SELECT id FROM messages WHERE sha256 = :sha AND id != :pk"),
                                    {"sha": digest, "pk": pk}).scalar()
            if survivor is not None:
                _merge(conn, pk, survivor, {"raw": zlib.compress(kept, 6), "size": len(kept), "mid": message_id,
                                            "date": date, "received": received_at, "subject": subject})
                continue
            if kept != raw:  # not so far: stored bytes have no filter headers (0004)
                conn.execute(sa.text("DELETE FROM message_features WHERE message_id = :pk"), {"pk": pk})
                conn.execute(sa.text("UPDATE messages SET raw = :raw, size = :size WHERE id = :pk"),
                             {"raw": zlib.compress(kept, 6), "size": len(kept), "pk": pk})
            conn.execute(sa.text("UPDATE messages SET sha256 = :sha WHERE id = :pk"), {"sha": digest, "pk": pk})
    if changed:  # labels now reach the verdicts of other copies: readers must reload
        conn.execute(sa.text("UPDATE store_state SET value = value + 1 WHERE key = 'generation'"))


def _merge(conn: Any, pk: int, survivor: int, row: dict[str, Any]) -> None:
    """Move everything that refers to message ``pk`` to ``survivor``, fill what it lacks, delete ``pk``."""
    moved = {"pk": pk, "to": survivor}
    conn.execute(sa.text("UPDATE labels SET message_id = :to WHERE message_id = :pk"), moved)
    conn.execute(sa.text("UPDATE classifications SET message_id = :to WHERE message_id = :pk"), moved)
    conn.execute(sa.text("DELETE FROM message_features WHERE message_id = :pk"), moved)
    conn.execute(sa.text("DELETE FROM messages WHERE id = :pk"), moved)
    # Every right-hand side reads the row as it was (SQL's UPDATE semantics), so size follows raw.
    conn.execute(sa.text(
        "UPDATE messages SET raw = COALESCE(raw, :raw), size = CASE WHEN raw IS NULL THEN :size ELSE size END, "
        "message_id = COALESCE(message_id, :mid), date = COALESCE(date, :date), "
        "subject = COALESCE(subject, :subject), "
        "received_at = CASE WHEN received_at > :received THEN :received ELSE received_at END WHERE id = :to"),
        {**row, "to": survivor})
