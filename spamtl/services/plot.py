"""Per-user ROC curves of an evaluation as a PNG (``spamtl evaluate --plot``; needs matplotlib)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from spamtl.errors import OptionalDependencyError

__all__ = ["require_matplotlib", "plot_roc_curves"]

Curves = dict[str, dict[str, tuple[list[float], list[float]]]]
"""user -> system -> (false-positive rates, true-positive rates)."""


def require_matplotlib() -> None:
    """Fail before any work when matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise OptionalDependencyError("--plot needs matplotlib; install it with "
                                      "`pip install 'spamtl[plot]'`") from None


def plot_roc_curves(curves: Curves, path: Path, metrics: dict[str, Any] | None = None,
                    spam_cutoff: float = 0.9) -> dict[str, list[str]]:
    """Per-user ROC curves; the legend gives each curve's AUC, a dot marks the spam cutoff's operating point.

    Returns each user's legend entries (what a reader of the figure sees).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with warnings.catch_warnings():
        # symlog axes and tight_layout warn about cosmetic details; they are not the user's business
        warnings.simplefilter("ignore")
        return _draw(plt, curves, path, metrics or {}, spam_cutoff)


def _draw(plt: Any, curves: Curves, path: Path, metrics: dict[str, Any], spam_cutoff: float) -> dict[str, list[str]]:
    n = max(1, len(curves))
    cols = min(3, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.6 * rows), squeeze=False)
    for ax, (user, systems) in zip(axes.ravel(), sorted(curves.items())):
        # The multi-task model last and thicker, so it stays visible where curves coincide.
        for system in sorted(systems, key=lambda name: name == "mtl"):
            fpr, tpr = systems[system]
            entry = metrics.get(user, {}).get(system, {})
            auc = entry.get("roc_auc")
            label = f"{system} (AUC {auc:.4f})" if isinstance(auc, float) and auc == auc else system
            (line,) = ax.plot(fpr, tpr, label=label, linewidth=2.6 if system == "mtl" else 1.4,
                              linestyle="-" if system == "mtl" else "--")
            x, y = entry.get("ham_fpr"), entry.get("recall")
            if isinstance(x, float) and isinstance(y, float) and x == x and y == y:
                ax.plot([x], [y], marker="o", markersize=6, color=line.get_color(), linestyle="none",
                        label=f"cutoff {spam_cutoff:g}" if system == "mtl" else None)
        ax.set_xscale("symlog", linthresh=1e-3)
        ax.set_title(user)
        ax.set_xlabel("ham false-positive rate")
        ax.set_ylabel("spam caught")
        ax.legend(loc="lower right", fontsize="small")
    for ax in axes.ravel()[len(curves):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    drawn = {ax.get_title(): ax.get_legend_handles_labels()[1] for ax in axes.ravel() if ax.get_title()}
    plt.close(fig)
    return drawn
