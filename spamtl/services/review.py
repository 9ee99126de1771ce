"""The review queue: the user's unlabelled mail whose label would teach their model most (active learning).

Candidates (classified for the user, text still stored, unlabelled; at most :data:`REVIEW_POOL`, newest
first) are re-scored with the current model and ranked by ``priority = |z| - disagreement``, smallest
first: z is the logit, and ``disagreement = min(|shared|, |personal|)`` when those two parts push in
opposite directions, else 0.  Distance to p = 0.5, not to the spam cutoff (benchmarks/bench_review.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine

from spamtl.model.weights import PART_KINDS
from spamtl.services.classify import open_reader
from spamtl.services.users import existing_user
from spamtl.settings import Settings, validate_name
from spamtl.store import queries
from spamtl.store.engine import transaction

__all__ = ["REVIEW_POOL", "ReviewItem", "review_priority", "review_queue"]

REVIEW_POOL = 2_000
"""Most recent unlabelled messages re-scored per call (each parsed and scored once)."""
MAX_REVIEW = 1_000


@dataclass
class ReviewItem:
    id: str
    sha256: str
    message_id: str | None
    subject: str | None
    probability: float
    verdict: str
    priority: float
    shared: float
    group: float
    personal: float
    why: str
    spam_cutoff: float = 0.9  # the user's cutoffs the verdict was given at (the current ones)
    ham_cutoff: float = 0.5

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "sha256": self.sha256, "message_id": self.message_id, "subject": self.subject,
                "probability": round(self.probability, 6), "verdict": self.verdict,
                "spam_cutoff": self.spam_cutoff, "ham_cutoff": self.ham_cutoff,
                "priority": round(self.priority, 6), "shared": round(self.shared, 6),
                "group": round(self.group, 6), "personal": round(self.personal, 6), "why": self.why}


def review_priority(z: float, shared: float, personal: float) -> tuple[float, str]:
    """(priority, why) of a message with logit ``z`` and these part totals; smaller = review first."""
    disagreement = min(abs(shared), abs(personal)) if shared * personal < 0 else 0.0
    if disagreement > abs(z):
        why = f"shared {shared:+.2f} vs personal {personal:+.2f}"
    else:
        why = "the model is unsure"
    return abs(z) - disagreement, why


def review_queue(engine: Engine, settings: Settings, *, user: str, n: int = 10, pool: int = REVIEW_POOL) -> list[ReviewItem]:
    """The ``n`` unlabelled messages of ``user`` whose label would teach the model most (see module doc)."""
    validate_name(user)
    n = max(0, min(int(n), MAX_REVIEW))
    with transaction(engine) as session:
        row = existing_user(session, user)
        candidates = queries.unlabelled_recent(session=session, user_id=row.id, limit=pool)
        raws = dict(queries.raw_messages(session=session, message_pks=[c.message_id for c in candidates]))
    reader = open_reader(engine, settings)
    try:
        model = reader.user_model(user)
    finally:
        reader.store.close()
    items = []
    for c in candidates:
        data = raws.get(c.message_id)
        if not data:
            continue
        score = model.score_message(data).score
        shared, group, personal = (score.total(kind) for kind in PART_KINDS)
        priority, why = review_priority(score.logit, shared, personal)
        p = score.probability
        items.append(ReviewItem(id=c.sha256[:12], sha256=c.sha256, message_id=c.mid, subject=c.subject,
                                probability=p, verdict=model.verdict(p), priority=priority,
                                shared=shared, group=group, personal=personal,
                                why=why, spam_cutoff=model.spam_cutoff, ham_cutoff=model.ham_cutoff))
    items.sort(key=lambda item: (item.priority, item.sha256))
    return items[:n]
