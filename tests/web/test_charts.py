"""The admin page's SVG bar charts: well-formed, heights in proportion to the counts, names escaped."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

pytest.importorskip("starlette", reason="the web extra is not installed")

from spamtl.web.charts import HEIGHT, LEGEND, MARGIN_BOTTOM, stacked_bars  # noqa: E402

SVG = "{http://www.w3.org/2000/svg}"


def _bars(svg: str) -> list[dict[str, str]]:
    root = ET.fromstring(svg)  # raises on a document that is not well-formed
    return [r.attrib for r in root.iter(f"{SVG}rect") if r.get("class") == "bar"]


def test_heights_are_in_proportion_to_the_counts() -> None:
    bars = _bars(stacked_bars("t", ["d1", "d2", "d3"], {"spam": [10, 0, 2], "ham": [5, 3, 0]}))
    height = {(b["data-day"], b["data-series"]): float(b["height"]) for b in bars}
    assert set(height) == {("d1", "spam"), ("d1", "ham"), ("d2", "ham"), ("d3", "spam")}  # no bar for a zero
    plot = HEIGHT - MARGIN_BOTTOM - LEGEND
    assert height["d1", "spam"] + height["d1", "ham"] == pytest.approx(plot, abs=0.02)  # the largest day fills the plot
    assert height["d1", "spam"] == pytest.approx(2 * height["d1", "ham"], abs=0.02)
    assert height["d2", "ham"] == pytest.approx(plot * 3 / 15, abs=0.02)
    assert height["d3", "spam"] == pytest.approx(plot * 2 / 15, abs=0.02)


def test_segments_stack_without_overlap() -> None:
    bars = _bars(stacked_bars("t", ["d"], {"a": [1], "b": [2], "c": [3]}))
    spans = sorted((float(b["y"]), float(b["y"]) + float(b["height"])) for b in bars)
    for (_, bottom), (top, _) in zip(spans, spans[1:]):
        assert bottom == pytest.approx(top, abs=0.02)
    assert spans[-1][1] == pytest.approx(HEIGHT - MARGIN_BOTTOM, abs=0.02)  # standing on the axis


def test_no_data_draws_an_empty_chart() -> None:
    assert _bars(stacked_bars("t", ["d1", "d2"], {"spam": [0, 0]})) == []
    assert _bars(stacked_bars("t", [], {})) == []


def test_names_are_escaped_and_lengths_checked() -> None:
    svg = stacked_bars('<x y="1">', ["<d>"], {"<s>": [1]})
    assert "<x" not in svg and "<s>" not in svg.replace("&lt;s&gt;", "")
    assert _bars(svg)[0]["data-series"] == "<s>"
    with pytest.raises(ValueError, match="has 1 values for 2 days"):
        stacked_bars("t", ["d1", "d2"], {"spam": [1]})
