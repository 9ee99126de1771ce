"""The fitted model in a numpy-only form: the one scorer (:meth:`ModelWeights.score`) and safe serialisation.

numpy only, so that classifying starts fast; ``numpy.savez`` bytes loaded with ``allow_pickle=False``, per part
(:meth:`SparsePart.to_bytes`) so that the store keeps each user's part in its own row.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from spamtl.errors import DamagedModelError
from spamtl.features import FeatureRow, IdfWeights, load_npz, load_sparse

__all__ = ["FORMAT_VERSION", "PART_KINDS", "SparsePart", "PartScore", "RowScore", "ModelWeights", "decode_stored",
           "score_row", "sigmoid", "trained_group"]

FORMAT_VERSION = 2
"""2 added the optional idf weights; files and store rows of format 1 still load."""
_READABLE_FORMATS = (1, 2)
PART_KINDS = ("shared", "group", "personal")
"""The parts of a score, in the order they are summed and shown."""
T = TypeVar("T")


@dataclass(frozen=True)
class SparsePart:
    """A sparse weight vector (sorted unique ``cols``, ``values``) and an intercept."""

    cols: np.ndarray
    values: np.ndarray
    intercept: float = 0.0
    # n_features -> the vector as one dense array (shared and group parts: gathered per message, built once)
    _dense: dict[int, np.ndarray] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def empty(cls) -> SparsePart:
        return cls(np.zeros(0, np.int64), np.zeros(0, np.float64), 0.0)

    def at(self, columns: np.ndarray, n_features: int | None = None) -> np.ndarray:
        """The weight at each of ``columns`` (0.0 where the part has none), float64.

        With ``n_features`` the part is kept as a dense array of that length (8 bytes a feature) and
        looked up by index: for the parts every user shares, which score every message.
        """
        if n_features is not None:
            dense = self._dense.get(n_features)
            if dense is None:
                dense = self._dense[n_features] = np.zeros(n_features)
                dense[self.cols] = self.values
            return dense[columns]
        weights = np.zeros(len(columns))
        if len(self.cols) and len(columns):
            pos = np.minimum(np.searchsorted(self.cols, columns), len(self.cols) - 1)
            hit = self.cols[pos] == columns
            weights[hit] = self.values[pos[hit]]
        return weights

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        np.savez(buf, cols=self.cols.astype(np.int64), values=self.values.astype(np.float64),
                 intercept=np.float64(self.intercept))
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> SparsePart:
        """Read :meth:`to_bytes`' form; ValueError when it is damaged (see :func:`~spamtl.features.load_sparse`)."""
        cols, values, (intercept,) = load_sparse(data, ("intercept",))
        return cls(cols, values, float(intercept))


@dataclass
class ModelWeights:
    """All parts of a fitted model, keyed by task and group name.

    Attributes
    ----------
    n_features : int
        Width of the hashed feature space.
    shared : SparsePart
        w0 and b0.
    groups : dict of str -> SparsePart
        u_g and cg per group.
    tasks : dict of str -> SparsePart
        v_t and c_t per task.
    task_groups : dict of str -> str or None
        Each task's group.
    params : dict
        Hyper-parameters and anything else JSON-serialisable (meta data).
    idf : IdfWeights or None
        Applied to every row before the parts score it.
    """

    n_features: int
    shared: SparsePart
    groups: dict[str, SparsePart] = field(default_factory=dict)
    tasks: dict[str, SparsePart] = field(default_factory=dict)
    task_groups: dict[str, str | None] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    idf: IdfWeights | None = None

    def prepare(self, row: FeatureRow) -> FeatureRow:
        """The row as the parts expect it: reweighted by :attr:`idf`, if any."""
        return self.idf.apply(row) if self.idf is not None else row

    def named_parts(self, task: str | None, group: str | None = None) -> list[tuple[str, str, SparsePart]]:
        """(kind, name, part) of each part that scores ``task``: shared, its group's, its own.

        A known task's group is the one it was trained in (``group`` is for a task the model does not
        know); a missing group or personal part is left out: an unknown task is scored by the shared
        (and group) part alone.
        """
        parts = [("shared", "", self.shared)]
        group = trained_group(task, group, self.task_groups)
        if group is not None and group in self.groups:
            parts.append(("group", group, self.groups[group]))
        if task is not None and task in self.tasks:
            parts.append(("personal", task, self.tasks[task]))
        return parts

    def score(self, row: FeatureRow, task: str | None, group: str | None = None, *,
              is_dense: bool = False) -> RowScore:
        """The score of one (raw, not yet idf-reweighted) feature row for ``task``, with its parts.

        ``is_dense`` keeps the shared and group parts as dense arrays (8 bytes a feature each, built at the
        first call and kept with the parts): for weights that score many messages, as a reader's do.
        """
        return score_row(self.prepare(row), self.named_parts(task, group), self.n_features if is_dense else None)

    def decision(self, rows: Sequence[FeatureRow], task: str | None, group: str | None = None) -> np.ndarray:
        """Scores f_t(x) of rows for one task (:meth:`score`'s logits); an unknown task gets shared (+ group) only."""
        return np.array([self.score(r, task, group).logit for r in rows], dtype=np.float64)

    def save(self, file: Any) -> None:
        """Write everything to one ``.npz`` file (path or binary file object)."""
        arrays: dict[str, np.ndarray] = {
            "meta": np.array(json.dumps({"format_version": FORMAT_VERSION, "n_features": self.n_features,
                                          "params": self.params, "task_groups": self.task_groups})),
            "shared": np.frombuffer(self.shared.to_bytes(), np.uint8),
        }
        if self.idf is not None:
            arrays["idf"] = np.frombuffer(self.idf.to_bytes(), np.uint8)
        for kind, parts in (("group", self.groups), ("task", self.tasks)):
            names = sorted(parts)
            arrays[f"{kind}_names"] = np.array(names, dtype=str)
            blobs = [parts[n].to_bytes() for n in names]
            arrays[f"{kind}_offsets"] = np.cumsum([0] + [len(b) for b in blobs]).astype(np.int64)
            arrays[f"{kind}_blobs"] = np.frombuffer(b"".join(blobs), np.uint8)
        np.savez(file, **arrays)

    @classmethod
    def load(cls, file: Any) -> ModelWeights:
        """Read a file written by :meth:`save`; never unpickles anything."""
        z = load_npz(file)
        meta = json.loads(str(z["meta"]))
        if meta.get("format_version") not in _READABLE_FORMATS:
            raise ValueError(f"unsupported model format {meta.get('format_version')!r}")
        parts: dict[str, dict[str, SparsePart]] = {}
        for kind in ("group", "task"):
            names = [str(n) for n in z[f"{kind}_names"]]
            offsets = z[f"{kind}_offsets"]
            blob = z[f"{kind}_blobs"].tobytes()
            parts[kind] = {n: SparsePart.from_bytes(blob[offsets[i]:offsets[i + 1]]) for i, n in enumerate(names)}
        shared = SparsePart.from_bytes(z["shared"].tobytes())
        idf = IdfWeights.from_bytes(z["idf"].tobytes()) if "idf" in z else None
        return cls(int(meta["n_features"]), shared, parts["group"], parts["task"],
                   dict(meta["task_groups"]), dict(meta["params"]), idf)


def trained_group(task: Any, group: Any, task_groups: Mapping[Any, Any]) -> Any:
    """The group that scores ``task``: the one it was trained in when ``task_groups`` knows it, else ``group``."""
    return task_groups[task] if task is not None and task in task_groups else group


def decode_stored(decode: Callable[[bytes], T], data: bytes, *, version: int, n_features: int, kind: str,
                  name: str = "") -> T:
    """``decode(data)`` for one stored part of model ``version``: damage is one :class:`DamagedModelError`.

    ``decode`` is :meth:`SparsePart.from_bytes` or :meth:`IdfWeights.from_bytes`; every path that reads a
    version's parts from the store (the classify reader, training's warm start, feedback's refit) decodes
    them through here, so a damaged part says the same thing everywhere.  A column outside the version's
    ``n_features`` is damage too (scoring would index past its vectors).
    """
    try:
        part = decode(data)
    except ValueError as exc:
        raise DamagedModelError(version, kind, name, str(exc)) from None
    cols = getattr(part, "cols", None)
    if cols is not None and len(cols) and int(cols[-1]) >= n_features:
        raise DamagedModelError(version, kind, name, f"columns beyond the model's {n_features} features")
    return part


@dataclass(frozen=True)
class PartScore:
    """One part's share of a row's logit: its intercept plus ``weight * x`` on each of the row's columns."""

    kind: str  # one of PART_KINDS
    name: str  # the group's or the task's name; "" for the shared part
    intercept: float
    cols: np.ndarray  # the row's columns, int64, sorted
    x: np.ndarray  # the row's values there (idf-reweighted, unit norm), float64
    weights: np.ndarray  # the part's weight at each column (0.0 where it has none)
    contributions: np.ndarray  # weights * x
    features: float  # the contributions' sum

    @property
    def total(self) -> float:
        return self.intercept + self.features


@dataclass(frozen=True)
class RowScore:
    """A row's logit and the parts it is the sum of (in :data:`PART_KINDS` order; missing parts left out)."""

    logit: float
    parts: tuple[PartScore, ...]

    @property
    def probability(self) -> float:
        return sigmoid(self.logit)

    def total(self, kind: str) -> float:
        """The total of the part of this kind, 0.0 when the task has none."""
        return next((p.total for p in self.parts if p.kind == kind), 0.0)


def score_row(row: FeatureRow, parts: Sequence[tuple[str, str, SparsePart]],
              n_features: int | None = None) -> RowScore:
    """The one scorer: ``row`` (already reweighted, :meth:`ModelWeights.prepare`) under ``parts``.

    The logit is ``sum(part.total)``, each total ``intercept + sum(weights * x)``, summed in the parts'
    order, so the parts add up to the score exactly.  A part's weights are found by binary search, or
    with ``n_features`` the shared and group parts by index in their dense form (:meth:`SparsePart.at`).

    Examples
    --------
    >>> row = FeatureRow(np.array([1, 4], np.int32), np.array([0.6, 0.8], np.float32))
    >>> shared = SparsePart(np.array([1, 2]), np.array([2.0, 5.0]), -1.0)
    >>> mine = SparsePart(np.array([4]), np.array([-1.0]), 0.5)
    >>> score = score_row(row, [("shared", "", shared), ("personal", "ann", mine)])
    >>> [(p.kind, round(p.total, 3)) for p in score.parts], round(score.logit, 3)
    ([('shared', 0.2), ('personal', -0.3)], -0.1)
    """
    cols = row.indices.astype(np.int64)
    x = row.values.astype(np.float64)
    scores = []
    for kind, name, part in parts:
        weights = part.at(cols, n_features if kind != "personal" else None)
        contributions = weights * x
        scores.append(PartScore(kind, name, float(part.intercept), cols, x, weights, contributions,
                                float(contributions.sum())))
    return RowScore(sum(p.total for p in scores), tuple(scores))


def sigmoid(z: float) -> float:
    """The logistic link, overflow-safe."""
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)
