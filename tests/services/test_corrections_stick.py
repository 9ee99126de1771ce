"""A correction sticks: the user's *latest* label of a message is the verdict, everywhere it is given.

Catches (a planted defect): the current-label lookup of the scoring path (``store/statements.py``,
``CURRENT_LABEL``) ordered by label id ascending, so a user's *first* label decided the verdict of
``classify`` (text, JSON, filter mode), ``explain`` and the daemon, while training learned the latest.
Each message here is labelled twice, the second label the opposite of the first.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from spamtl.cli.app import app

from ..conftest import make_mail
from ..small_store import build_store

runner = CliRunner()
# A spam the model is sure of, that bob first confirms as spam and then says he wanted (ham) ...
LOTTERY = make_mail("win the lottery now 77", "claim your prize viagra casino golf hotel",
                    sender="x@cheap-3.example", message_id="lottery-77@cheap-3.example")
# ... and a colleague's ham that he first confirms as ham, then calls spam.
MEETING = make_mail("project meeting 77 bob", "agenda minutes budget review india juliet",
                    sender="colleague@bob.example", message_id="meeting-77@bob.example")
FINAL = {"lottery": "ham", "meeting": "spam"}  # bob's second, latest label of each
MESSAGE_IDS = {"lottery": "<lottery-77@cheap-3.example>", "meeting": "<meeting-77@bob.example>"}


def run(db: str, *args: str, input: bytes | None = None):  # type: ignore[no-untyped-def]
    return runner.invoke(app, [*args, "--db", db], input=input, catch_exceptions=False)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    tmp = tmp_path_factory.mktemp("corrections")
    db = build_store(tmp, {"ann": (None, False), "bob": (None, False)}).database_url
    paths = {}
    for name, raw in (("lottery", LOTTERY), ("meeting", MEETING)):
        paths[name] = tmp / f"{name}.eml"
        paths[name].write_bytes(raw)
    # The model's own opinion first, so the labels below are real corrections of it.
    before = {name: _json(run(db, "classify", "bob", str(path), "--format", "json"))
              for name, path in paths.items()}
    assert (before["lottery"]["verdict"], before["meeting"]["verdict"]) == ("spam", "ham"), before
    for name, first, second in (("lottery", "spam", "ham"), ("meeting", "ham", "spam")):
        for label in (first, second):
            result = run(db, "feedback", "bob", f"--{label}", str(paths[name]))
            assert result.exit_code == 0, result.output
    yield {"db": db, "paths": paths, "tmp": tmp}


def _json(result) -> dict:  # type: ignore[no-untyped-def,type-arg]
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.mark.parametrize("name", ["lottery", "meeting"])
def test_classify_json_and_text_give_the_latest_label(store: dict[str, object], name: str) -> None:
    db, path = str(store["db"]), str(store["paths"][name])  # type: ignore[index]
    verdict = _json(run(db, "classify", "bob", path, "--format", "json"))
    assert (verdict["verdict"], verdict["reason"]) == (FINAL[name], "label")
    text = run(db, "classify", "bob", path)
    assert text.exit_code == 0, text.output
    line = text.stdout.strip()
    assert line.startswith(f"{path} <{name}-77@") and f": {FINAL[name]} (probability " in line, line
    assert ", your label, model v1, id " in line, line
    # ann never labelled it: the model decides for her.
    assert _json(run(db, "classify", "ann", path, "--format", "json"))["reason"] == "model"


@pytest.mark.parametrize("name", ["lottery", "meeting"])
def test_filter_mode_gives_the_latest_label(store: dict[str, object], name: str) -> None:
    raw = Path(store["paths"][name]).read_bytes()  # type: ignore[index]
    result = run(str(store["db"]), "classify", "bob", "--filter", input=raw)
    assert result.exit_code == 0, result.stderr
    head = result.stdout_bytes[:-len(raw)].decode()
    assert result.stdout_bytes.endswith(raw)
    status = head.splitlines()[0]
    assert status.startswith(f"X-Spamtl-Status: {FINAL[name]}, probability=") and status.endswith(", label"), status
    assert ("X-Spam-Flag: YES" in head) == (FINAL[name] == "spam"), head


@pytest.mark.parametrize("name", ["lottery", "meeting"])
def test_explain_gives_the_latest_label(store: dict[str, object], name: str) -> None:
    db = str(store["db"])
    by_file = json.loads(run(db, "explain", "bob", str(store["paths"][name]), "--format", "json").stdout)  # type: ignore[index]
    by_id = json.loads(run(db, "explain", "bob", "--id", MESSAGE_IDS[name], "--format", "json").stdout)
    for out in (by_file, by_id):
        assert (out["verdict"], out["reason"]) == (FINAL[name], "label")
        assert f"bob labelled this message {FINAL[name]}; their label decides the verdict" in out["notes"]
    text = run(db, "explain", "bob", str(store["paths"][name])).stdout  # type: ignore[index]
    assert text.startswith(f"bob: {FINAL[name]} (probability ") and ", your label), model v1" in text, text
    assert f"{FINAL[name]} because bob labelled this message {FINAL[name]}" in text


def test_the_daemon_gives_the_latest_label(store: dict[str, object]) -> None:
    from ..serve.test_daemon import Daemon, status

    d = Daemon(str(store["db"]), Path(str(store["tmp"])), "--workers", "1")
    try:
        for name, raw in (("lottery", LOTTERY), ("meeting", MEETING)):
            out = d.request("PROCESS", raw, user="bob")
            assert status(out)["verdict"] == FINAL[name] and b", label\n" in out, out[:300]
            check = d.request("CHECK", raw, user="bob")
            assert check.startswith(b"SPAMD/1.5 0 EX_OK\r\nSpam: " + (b"True" if FINAL[name] == "spam" else b"False"))
    finally:
        code, err = d.stop()
    assert code == 0, err
