"""Bar charts over days as inline SVG: drawn on the server, no script, nothing loaded from elsewhere.

One chart kind serves every plot of the admin page (verdicts per day, corrections per day, trainings per
day): stacked bars, one colour per series, a legend, the largest day's total on the y axis.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape

__all__ = ["stacked_bars", "COLOURS"]

COLOURS = {"spam": "#c0392b", "ham": "#27ae60", "unsure": "#f39c12", "error": "#7f8c8d",
           "promoted": "#2980b9", "rejected": "#8e44ad"}
_FALLBACK = ("#34495e", "#16a085", "#d35400", "#2c3e50")
WIDTH, HEIGHT, MARGIN_LEFT, MARGIN_BOTTOM, LEGEND = 640, 180, 40, 22, 18


def stacked_bars(title: str, days: Sequence[str], series: Mapping[str, Sequence[int]]) -> str:
    """An SVG document: for each day a bar stacked from ``series`` (name -> count per day, same length).

    The y scale runs from 0 to the largest day's total (at least 1); each bar's segments have heights in
    proportion to their counts, so equal counts draw equal heights whatever the series.
    """
    for name, counts in series.items():
        if len(counts) != len(days):
            raise ValueError(f"series {name!r} has {len(counts)} values for {len(days)} days")
    totals = [sum(counts[i] for counts in series.values()) for i in range(len(days))]
    top = max([1, *totals])
    plot_h = HEIGHT - MARGIN_BOTTOM - LEGEND
    slot = (WIDTH - MARGIN_LEFT) / max(1, len(days))
    bar = max(1.0, slot * 0.8)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
             f'viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(title)}">',
             f"<title>{escape(title)}</title>",
             f'<text x="0" y="{LEGEND + 10}" font-size="10">{top}</text>',
             f'<text x="0" y="{LEGEND + plot_h}" font-size="10">0</text>',
             f'<line x1="{MARGIN_LEFT}" y1="{LEGEND + plot_h}" x2="{WIDTH}" y2="{LEGEND + plot_h}" stroke="#999"/>']
    colours = {name: COLOURS.get(name, _FALLBACK[i % len(_FALLBACK)]) for i, name in enumerate(series)}
    for i, day in enumerate(days):
        x = MARGIN_LEFT + i * slot
        y = LEGEND + plot_h
        for name, counts in series.items():
            if counts[i] <= 0:
                continue
            h = plot_h * counts[i] / top
            y -= h
            parts.append(f'<rect class="bar" data-series="{escape(name)}" data-day="{escape(day)}" '
                         f'data-count="{counts[i]}" x="{x:.1f}" y="{y:.2f}" width="{bar:.1f}" height="{h:.2f}" '
                         f'fill="{colours[name]}"><title>{escape(day)} {escape(name)}: {counts[i]}</title></rect>')
    if days:  # the first day under the first bar, the last one ending at the right edge
        parts.append(f'<text x="{MARGIN_LEFT}" y="{HEIGHT - 6}" font-size="10">{escape(days[0])}</text>')
        parts.append(f'<text x="{WIDTH}" y="{HEIGHT - 6}" font-size="10" text-anchor="end">{escape(days[-1])}</text>')
    x = MARGIN_LEFT
    for name, colour in colours.items():
        parts.append(f'<rect x="{x}" y="2" width="10" height="10" fill="{colour}"/>'
                     f'<text x="{x + 14}" y="11" font-size="11">{escape(name)}</text>')
        x += 24 + 7 * len(name)
    parts.append("</svg>")
    return "".join(parts)
