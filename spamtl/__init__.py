"""spamtl: a per-user spam filter built on multi-task learning.

Each user's mailbox is one task: a shared linear model learns what everyone
agrees is spam, a per-user part learns each person's exceptions, and a
task-relatedness regulariser decides how far each user may stray.

The library surface is small on purpose; heavy modules load on first use so
that ``import spamtl`` stays cheap for the mail-delivery path.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.4.0"

__all__ = ["__version__", "MultiTaskLogisticRegression", "parse_message", "featurize", "SpamtlError"]

if TYPE_CHECKING:  # pragma: no cover
    from spamtl.errors import SpamtlError
    from spamtl.features import featurize
    from spamtl.mail.parse import parse_message
    from spamtl.model.estimator import MultiTaskLogisticRegression

_LAZY = {
    "MultiTaskLogisticRegression": "spamtl.model.estimator",
    "parse_message": "spamtl.mail.parse",
    "featurize": "spamtl.features",
    "SpamtlError": "spamtl.errors",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'spamtl' has no attribute {name!r}")
