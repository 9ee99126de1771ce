"""Evidence comes strongest first: toward spam by decreasing contribution, toward ham most negative first.

Catches (a planted defect): ``spamtl/services/explain.py`` sorting the ham evidence backwards, so that
``explain``, the filter's ``X-Spamtl-Report`` and the daemon's REPORT named the *weakest* ham evidence
(the old test asked for 100 tokens, so the order and the cut were never checked).  Here ``top`` is
smaller than the number of tokens on each side, and the expected lists are sorted by this test from
every column's contribution (``--top 100`` shows all of them: fewer than 100 columns push each way).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..conftest import make_mail, run
from ..small_store import build_store

TOP = 3
# bob reads the garden newsletter (his personal part pushes it toward ham), ann calls it spam.
NEWSLETTER = make_mail("weekly newsletter digest 66", "this week in gardening news roses tulips golf hotel india",
                       sender="news@garden.example", message_id="digest-66@garden.example")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    tmp = tmp_path_factory.mktemp("explain-order")
    settings = build_store(tmp, {"ann": ("home", True), "bob": ("home", False), "cat": (None, False)})
    db = settings.database_url
    full = json.loads(run(db, "explain", "bob", "-", "--top", "100", "--format", "json", input=NEWSLETTER).stdout)
    yield {"db": db, "tmp": tmp, "full": full}


def _all_evidence(part: dict) -> list[dict]:  # type: ignore[type-arg]
    every = part["toward_spam"] + part["toward_ham"]
    assert len(part["toward_spam"]) < 100 and len(part["toward_ham"]) < 100  # so --top 100 listed them all
    return every


def _strongest(part: dict, n: int) -> tuple[list[int], list[int]]:  # type: ignore[type-arg]
    """(columns pushing toward spam, largest first; columns pushing toward ham, most negative first), n each."""
    every = _all_evidence(part)
    spam = sorted((e for e in every if e["contribution"] > 0), key=lambda e: (-e["contribution"], e["column"]))
    ham = sorted((e for e in every if e["contribution"] < 0), key=lambda e: (e["contribution"], e["column"]))
    return [e["column"] for e in spam[:n]], [e["column"] for e in ham[:n]]


def _by_size(part: dict, n: int) -> list[str]:  # type: ignore[type-arg]
    """The n names with the largest |contribution|, largest first."""
    every = sorted(_all_evidence(part), key=lambda e: (-abs(e["contribution"]), e["column"]))
    return [e["name"] for e in every[:n]]


def test_the_store_gives_enough_evidence_each_way(store: dict[str, object]) -> None:
    """The precondition of the tests below: more columns than TOP push each way in some part."""
    parts = {p["kind"]: p for p in store["full"]["parts"]}  # type: ignore[index]
    assert set(parts) == {"shared", "group", "personal"}
    assert len(parts["personal"]["toward_ham"]) > TOP  # bob's own part: it all pushes toward ham
    assert len(parts["group"]["toward_spam"]) > TOP  # the home group's: ann calls it spam


def test_explain_names_the_strongest_evidence_first(store: dict[str, object]) -> None:
    out = json.loads(run(str(store["db"]), "explain", "bob", "-", "--top", str(TOP), "--format", "json",
                         input=NEWSLETTER).stdout)
    full = {p["kind"]: p for p in store["full"]["parts"]}  # type: ignore[index]
    for part in out["parts"]:
        spam = [e["contribution"] for e in part["toward_spam"]]
        ham = [e["contribution"] for e in part["toward_ham"]]
        assert spam == sorted(spam, reverse=True) and all(c > 0 for c in spam), (part["kind"], spam)
        assert ham == sorted(ham) and all(c < 0 for c in ham), (part["kind"], ham)  # most negative first
        expected_spam, expected_ham = _strongest(full[part["kind"]], TOP)
        assert [e["column"] for e in part["toward_spam"]] == expected_spam, part["kind"]
        assert [e["column"] for e in part["toward_ham"]] == expected_ham, part["kind"]


def test_the_filter_report_names_the_strongest_evidence(store: dict[str, object]) -> None:
    result = run(str(store["db"]), "classify", "bob", "--filter", "--report", input=NEWSLETTER)
    assert result.exit_code == 0, result.stderr
    match = re.search(rb"^X-Spamtl-Report: (.*)$", result.stdout_bytes, re.M)
    assert match is not None, result.stdout_bytes[:500]
    chunks = {c.split(" ", 1)[0]: c for c in match.group(1).decode().split("; ")}
    for part in store["full"]["parts"]:  # type: ignore[index]
        chunk = chunks[part["kind"]]
        shown = re.findall(r"[(,] ?(\S+) [+-]\d+\.\d\d", chunk)
        assert shown, chunk
        # The report may drop items from the end to fit its length, never show a weaker one instead.
        assert shown == _by_size(part, 3)[:len(shown)], (chunk, _by_size(part, 3))


def test_the_daemon_report_names_the_strongest_evidence(store: dict[str, object]) -> None:
    from ..serve.test_daemon import Daemon

    d = Daemon(str(store["db"]), Path(str(store["tmp"])), "--workers", "1")
    try:
        report = d.request("REPORT", NEWSLETTER, user="bob").decode()
    finally:
        code, err = d.stop()
    assert code == 0, err
    shown: dict[str, list[str]] = {}
    kind = ""
    for line in report.split(" log-odds  part / evidence\n", 1)[1].splitlines():
        if head := re.match(r" *[+-]\d+\.\d\d  (shared|group|personal)\b", line):
            kind = head.group(1)
            shown[kind] = []
        elif item := re.match(r" *[+-]\d+\.\d\d    (\S+)$", line):
            shown[kind].append(item.group(1))
    assert shown == {p["kind"]: _by_size(p, 3) for p in store["full"]["parts"]}, report  # type: ignore[index]
