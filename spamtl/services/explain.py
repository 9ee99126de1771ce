"""Why a message got its score: the logit split into shared, group and personal parts, with evidence.

``z = (b0 + w0 . x) + (c_g + u_g . x) + (c_t + v_t . x)``; the one scorer
(:meth:`spamtl.model.weights.ModelWeights.score`) returns each part's terms, so the parts add up to the
score exactly, and the tokens kept by that pass name the columns.  :func:`explain` is pure (the daemon
uses it for symbols); :func:`explain_message` is the CLI's use case.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from spamtl.errors import UsageError
from spamtl.model.weights import PartScore
from spamtl.services.classify import SHORT_ID_CHARS, Prepared, Scored, UserModel, Verdict, open_reader, prepare
from spamtl.settings import Settings, validate_name

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from spamtl.mail.parse import ParsedMessage

__all__ = ["DEFAULT_TOP", "MAX_TOKEN_CHARS", "MAX_TOKENS_PER_COLUMN", "REPORT_MAX_CHARS", "Evidence",
           "PartExplanation", "Explanation", "explain", "explain_message", "report_header",
           "symbol_names"]

DEFAULT_TOP = 5
"""Strongest columns shown per part and direction (bogofilter -v shows a handful too)."""
MAX_TOP = 100
"""Upper bound on ``top``: an explanation stays a screenful, whatever is asked."""
MAX_TOKEN_CHARS = 40
"""A token name longer than this is cut (with '...'): a token can be a 3,000-character URL."""
MAX_TOKENS_PER_COLUMN = 3
"""Tokens named per hashed column (collisions are rare; more are counted, not shown)."""
REPORT_MAX_CHARS = 300
"""Longest ``X-Spamtl-Report`` value: one readable header line, well under RFC 5322's 998."""


@dataclass(frozen=True)
class Evidence:
    """One hashed column's push on the score: ``weight * x`` (positive = toward spam)."""

    tokens: tuple[str, ...]
    column: int
    weight: float
    x: float
    contribution: float
    more_tokens: int = 0  # tokens in this column not named (beyond MAX_TOKENS_PER_COLUMN)

    @property
    def name(self) -> str:
        shown = "|".join(self.tokens) or f"#{self.column}"
        return shown + (f"|+{self.more_tokens}" if self.more_tokens else "")

    def as_dict(self) -> dict[str, Any]:
        return {"tokens": list(self.tokens), "name": self.name, "column": self.column,
                "contribution": self.contribution, "weight": self.weight, "x": self.x}


@dataclass(frozen=True)
class PartExplanation:
    """One part of the model (``shared``, ``group`` or ``personal``) and its strongest evidence."""

    kind: str
    name: str  # the group or user name; "" for shared
    intercept: float
    features: float  # sum of weight * x over all of the message's columns
    spam: tuple[Evidence, ...]  # strongest pushes toward spam, largest first
    ham: tuple[Evidence, ...]  # strongest pushes toward ham, most negative first

    @property
    def total(self) -> float:
        return self.intercept + self.features

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "total": self.total, "intercept": self.intercept,
                "features": self.features, "toward_spam": [e.as_dict() for e in self.spam],
                "toward_ham": [e.as_dict() for e in self.ham]}


@dataclass(frozen=True)
class Explanation:
    user: str
    sha256: str
    message_id: str
    model_version: int
    logit: float
    probability: float
    verdict: str
    spam_cutoff: float
    ham_cutoff: float
    cutoff_source: str
    parts: tuple[PartExplanation, ...]
    reason: str = "model"  # "label": the user labelled this message, and the label decides
    notes: tuple[str, ...] = field(default_factory=tuple)
    parsed: ParsedMessage | None = field(default=None, repr=False, compare=False)  # the message as scored

    @property
    def short_id(self) -> str:
        return self.sha256[:SHORT_ID_CHARS]

    def sentence(self) -> str:
        """One line saying why, in words: the parts that pushed toward the verdict, with their top evidence."""
        if self.reason == "label":
            return f"{self.verdict} because {self.user} labelled this message {self.verdict}"
        toward_spam = self.logit >= 0
        who = {"shared": "what everyone reports", "group": "what your group reports",
               "personal": "what *you* marked"}
        reasons = []
        for part in sorted(self.parts, key=lambda p: -abs(p.total)):
            if (part.total > 0) != toward_spam or part.total == 0:
                continue
            evidence = part.spam if toward_spam else part.ham
            shown = ", ".join(f"`{e.name}` {e.contribution:+.2f}" for e in evidence[:2])
            reasons.append(f"{who[part.kind]} ({shown or 'its intercept'}; {part.kind} {part.total:+.2f})")
        direction = "spam" if toward_spam else "not spam"
        if not reasons:
            return f"{self.verdict}: no part leans toward {direction}"
        return f"{self.verdict}: leans {direction} because of " + " and because of ".join(reasons)

    def as_dict(self) -> dict[str, Any]:
        return {"user": self.user, "id": self.short_id, "sha256": self.sha256, "message_id": self.message_id,
                "model_version": self.model_version, "verdict": self.verdict, "reason": self.reason,
                "probability": self.probability, "logit": self.logit, "spam_cutoff": self.spam_cutoff,
                "ham_cutoff": self.ham_cutoff, "cutoff_source": self.cutoff_source,
                "parts": [p.as_dict() for p in self.parts], "notes": list(self.notes)}


def _short(token: str) -> str:
    token = token.encode("ascii", "backslashreplace").decode("ascii")  # printable, one line, ASCII
    token = "".join(c if c.isprintable() else "?" for c in token)
    return token if len(token) <= MAX_TOKEN_CHARS else token[:MAX_TOKEN_CHARS - 3] + "..."


def _part(score: PartScore, names: dict[int, list[str]], top: int) -> PartExplanation:
    cols, contrib = score.cols, score.contributions

    def evidence(order: np.ndarray) -> tuple[Evidence, ...]:
        out = []
        for i in order:
            tokens = names.get(int(cols[i]), [])
            out.append(Evidence(tokens=tuple(_short(t) for t in tokens[:MAX_TOKENS_PER_COLUMN]),
                                column=int(cols[i]), weight=float(score.weights[i]), x=float(score.x[i]),
                                contribution=float(contrib[i]),
                                more_tokens=max(0, len(tokens) - MAX_TOKENS_PER_COLUMN)))
        return tuple(out)

    # Stable sorts on (-contribution, column) keep the order deterministic on ties.
    spam_idx = np.flatnonzero(contrib > 0)
    spam_idx = spam_idx[np.lexsort((cols[spam_idx], -contrib[spam_idx]))][:top]
    ham_idx = np.flatnonzero(contrib < 0)
    ham_idx = ham_idx[np.lexsort((cols[ham_idx], contrib[ham_idx]))][:top]
    return PartExplanation(kind=score.kind, name=score.name, intercept=score.intercept, features=score.features,
                           spam=evidence(spam_idx), ham=evidence(ham_idx))


def explain(model: UserModel, message: Prepared, *, top: int = DEFAULT_TOP,
            scored: Scored | None = None) -> Explanation:
    """The score of ``message`` for ``model``'s user, split into parts with their strongest evidence.

    Pure: no database access.  The parts' totals add up to ``logit``, and ``probability`` is the
    verdict's.  ``scored`` is the pass that scored ``message`` with ``model`` (``Verdict.scored``):
    given, the message is not parsed or featurised again; else one pass is made here.
    """
    top = max(0, min(int(top), MAX_TOP))
    if scored is None:
        scored = model.score_message(message.raw)
    # top=0 (the parts' totals only) names no evidence: skip hashing the tokens
    names = scored.column_tokens(model.config.n_features) if top else {}
    parts = [_part(part, names, top) for part in scored.score.parts]
    probability, parsed = scored.probability, scored.parsed
    notes = []
    if not model.is_known_user:
        notes.append(f"{model.user!r} has no personal model yet: scored by the shared"
                     f"{' and group' if len(parts) > 1 else ''} part")
    return Explanation(user=model.user, sha256=message.sha256, message_id=parsed.message_id,
                       model_version=model.version, logit=scored.logit, probability=probability,
                       verdict=model.verdict(probability), spam_cutoff=model.spam_cutoff,
                       ham_cutoff=model.ham_cutoff, cutoff_source=model.cutoff_source, parts=tuple(parts),
                       notes=tuple(notes), parsed=parsed)


def symbol_names(verdict: Verdict) -> list[str]:
    """The verdict and the parts of its score as SpamAssassin names the rules that hit, sorted as it does.

    ``SPAMTL_SPAM`` (``_HAM``, ``_UNSURE``), ``SPAMTL_USER_LABEL`` when the user's label decided, and
    ``SPAMTL_SHARED_SPAM``, ``SPAMTL_GROUP_HAM``, ``SPAMTL_PERSONAL_SPAM`` ... for each part that pushed
    the score one way (from ``verdict.scored``, which must be kept).  The daemon's SYMBOLS answer and
    its ``X-Spam-Status`` ``tests=`` list.
    """
    assert verdict.scored is not None, "symbol_names needs the scoring pass (keep_scored=True)"
    names = [f"SPAMTL_{verdict.verdict.upper()}"] + (["SPAMTL_USER_LABEL"] if verdict.reason == "label" else [])
    names += [f"SPAMTL_{part.kind.upper()}_{'SPAM' if part.total > 0 else 'HAM'}"
              for part in verdict.scored.score.parts if part.total != 0]
    return sorted(names)


def report_header(explanation: Explanation, *, per_part: int = 3, limit: int = REPORT_MAX_CHARS) -> str:
    """One ASCII line for ``X-Spamtl-Report``: each part's total and its strongest evidence, <= ``limit``.

    Example: ``shared +2.31 (subj:viagra +1.20, body:free +0.41); personal +0.80 (from:news.example +0.80)``
    Evidence is dropped from the end until the line fits.
    """
    chunks: list[tuple[str, list[str]]] = []
    for part in explanation.parts:
        strongest = sorted([*part.spam, *part.ham], key=lambda e: (-abs(e.contribution), e.column))[:per_part]
        items = [f"{e.name.replace(';', ',').replace('(', '[').replace(')', ']')} {e.contribution:+.2f}"
                 for e in strongest]
        chunks.append((f"{part.kind} {part.total:+.2f}", items))

    def render() -> str:
        return "; ".join(head + (f" ({', '.join(items)})" if items else "") for head, items in chunks)

    line = render()
    while len(line) > limit and any(items for _, items in chunks):
        # drop the last evidence item of the part with most items
        _, items = max(chunks, key=lambda c: len(c[1]))
        items.pop()
        line = render()
    return line[:limit]


def explain_message(engine: Engine, settings: Settings, *, user: str, raw: bytes | None = None, ref: str | None = None,
                    top: int = DEFAULT_TOP) -> Explanation:
    """Explain a message (its bytes, or ``ref``: a stored id / sha256 prefix / Message-ID) for ``user``."""
    validate_name(user)
    if (raw is None) == (ref is None):
        raise UsageError("give either the message or --id, not both or neither")
    if ref is not None:
        raw = stored_raw(engine, ref)
    assert raw is not None
    message = prepare(raw)
    reader = open_reader(engine, settings)
    try:
        model = reader.user_model(user)
        verdict = reader.classify(model, message, "explain")  # the verdict classify gives: the user's label decides
    finally:
        reader.store.close()
    result = explain(model, message, top=top, scored=verdict.scored)
    if verdict.reason == "label":
        result = Explanation(**{**result.__dict__, "verdict": verdict.verdict, "reason": "label",
                                "notes": (*result.notes, f"{user} labelled this message {verdict.verdict}; "
                                                         "their label decides the verdict")})
    return result


def stored_raw(engine: Engine, ref: str) -> bytes:
    """The stored bytes of the message ``ref`` names (see :func:`feedback.resolve_reference`)."""
    from spamtl.services.feedback import resolve_reference
    from spamtl.store import queries
    from spamtl.store.engine import transaction
    from spamtl.store.schema import Message

    with transaction(engine) as session:
        pk = resolve_reference(session, ref)
        message = session.get(Message, pk)
        data = message.raw if message is not None else None
        sha = message.sha256 if message is not None else ref
    if not data:
        raise UsageError(f"the message {sha[:12]} is known but its text is no longer stored "
                         "(dropped by retention); pass the message itself")
    return queries.decompress(data)

