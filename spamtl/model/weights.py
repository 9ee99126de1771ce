"""Fitted weights in a light, numpy-only form: scoring and safe serialisation.

A fitted multi-task model is a shared part (w0, b0), optional group parts
(u_g, cg) and one personal part per task (v_t, c_t), each a sparse vector
plus an intercept, and optionally the :class:`~spamtl.features.IdfWeights`
that rows are reweighted with before they are scored.  :class:`ModelWeights` holds them; :func:`score_rows`
scores feature rows for one task.  This module imports numpy only, so the
classification path of a mail pipeline starts fast (no scikit-learn, no scipy).

Serialisation uses ``numpy.savez`` and loads with ``allow_pickle=False``:
loading a model never runs code.  Each part serialises on its own
(:meth:`SparsePart.to_bytes`), which lets the store keep the shared part once
and each user's part in its own row.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from spamtl.errors import DamagedModelError
from spamtl.features import FeatureRow, IdfWeights, load_npz, load_sparse

__all__ = ["FORMAT_VERSION", "SparsePart", "ModelWeights", "decode_stored", "score_rows", "sigmoid"]

FORMAT_VERSION = 2
"""2 added the optional idf weights; files and store rows of format 1 still load."""
_READABLE_FORMATS = (1, 2)
T = TypeVar("T")


@dataclass(frozen=True)
class SparsePart:
    """A sparse weight vector (sorted ``cols``, ``values``) and an intercept."""

    cols: np.ndarray
    values: np.ndarray
    intercept: float = 0.0

    @classmethod
    def empty(cls) -> SparsePart:
        return cls(np.zeros(0, np.int64), np.zeros(0, np.float64), 0.0)

    def dot(self, row: FeatureRow) -> float:
        """Inner product with one feature row (both sorted sparse vectors)."""
        if not len(self.cols) or not len(row.indices):
            return 0.0
        pos = np.searchsorted(self.cols, row.indices)
        pos[pos == len(self.cols)] = 0
        hit = self.cols[pos] == row.indices
        return float(self.values[pos[hit]] @ row.values[hit].astype(np.float64))

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

    def parts_for(self, task: str | None, group: str | None = None) -> list[SparsePart]:
        """The parts that score ``task``: shared, its group's (if any), its own (if known)."""
        parts = [self.shared]
        if task is not None and task in self.task_groups:
            group = self.task_groups[task]
        if group is not None and group in self.groups:
            parts.append(self.groups[group])
        if task is not None and task in self.tasks:
            parts.append(self.tasks[task])
        return parts

    def decision(self, rows: Sequence[FeatureRow], task: str | None, group: str | None = None) -> np.ndarray:
        """Scores f_t(x) of rows for one task; an unknown task gets shared (+ group) only."""
        return score_rows([self.prepare(r) for r in rows], self.parts_for(task, group))

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


def score_rows(rows: Sequence[FeatureRow], parts: Sequence[SparsePart]) -> np.ndarray:
    """Sum of the parts' scores (dot product plus intercept) for each row."""
    out = np.empty(len(rows), dtype=np.float64)
    intercept = sum(p.intercept for p in parts)
    for i, row in enumerate(rows):
        out[i] = intercept + sum(p.dot(row) for p in parts)
    return out


def sigmoid(z: float) -> float:
    """The logistic link, overflow-safe."""
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)
