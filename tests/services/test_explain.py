"""Why this verdict: explain (parts add up, token names), ids round trip, X-Spamtl-Report, history, logs."""

from __future__ import annotations

import json
import math
import re
import sqlite3
import zlib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from spamtl.cli.app import app
from spamtl.settings import Settings
from spamtl.store.engine import make_engine

from ..cli.test_loop import _mails
from ..conftest import copy_sqlite, make_mail, write_mbox

_PAIR = re.compile(r'([a-z_]+)=("(?:[^"\\]|\\.)*"|\S+)')


def parse_line(line: str) -> dict[str, str]:
    """The key=value pairs of a spamtl log line (values unquoted; escapes kept as written except \\" and \\\\)."""
    out = {}
    for key, value in _PAIR.findall(line):
        if value.startswith('"'):
            value = re.sub(r'\\(["\\])', r"\1", value[1:-1])
        out[key] = value
    return out

runner = CliRunner()


def run(db: str, *args: str, input: bytes | None = None):  # type: ignore[no-untyped-def]
    return runner.invoke(app, [*args, "--db", db], input=input, catch_exceptions=False)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """ann (group home) calls garden newsletters spam; bob (group home) and cat (no group) want them."""
    tmp = tmp_path_factory.mktemp("explain")
    db = f"sqlite:///{tmp / 'explain.sqlite3'}"
    assert run(db, "init").exit_code == 0
    for user, group in (("ann", "home"), ("bob", "home"), ("cat", None)):
        spam = _mails(1, "spam", 25) + (_mails(2, "newsletter", 15) if user == "ann" else [])
        ham = _mails(3, user, 30) + (_mails(2, "newsletter", 15) if user != "ann" else [])
        extra = ["--group", group] if group else []
        assert run(db, "import", user, str(write_mbox(tmp / f"{user}-s.mbox", spam)), "-l", "spam", *extra).exit_code == 0
        assert run(db, "import", user, str(write_mbox(tmp / f"{user}-h.mbox", ham)), "-l", "ham").exit_code == 0
    assert run(db, "train").exit_code == 0
    news = tmp / "news.eml"
    news.write_bytes(make_mail("weekly newsletter digest 99", "this week in gardening news roses tulips",
                               sender="news@garden.example", message_id="digest-99@garden.example"))
    return {"db": db, "tmp": tmp, "news": news}


def _model_and_message(db: str, user: str, raw: bytes):  # type: ignore[no-untyped-def]
    from spamtl.services.classify import open_reader, prepare

    reader = open_reader(make_engine(db), Settings(database_url=db))
    model = reader.user_model(user)
    return reader, model, prepare(raw)


@pytest.mark.parametrize("user", ["ann", "bob", "cat", "stranger"])
def test_parts_add_up_to_the_logit_of_classify(trained: dict[str, object], user: str) -> None:
    from spamtl.services.explain import explain

    raw = Path(trained["news"]).read_bytes()  # type: ignore[arg-type]
    reader, model, message = _model_and_message(str(trained["db"]), user, raw)
    try:
        verdict = reader.classify(model, message, "x")
        result = explain(model, message, top=3)
    finally:
        reader.store.close()
    total = sum(p.intercept + p.features for p in result.parts)
    assert abs(total - math.log(verdict.probability / (1 - verdict.probability))) < 1e-9
    assert result.probability == verdict.probability
    # an independent path: each part of the user's slice as a dense vector, dotted with the reweighted row
    import numpy as np

    from spamtl.features import featurize
    from spamtl.mail.parse import parse_message

    row = model.weights.prepare(featurize(parse_message(message.raw), model.config))
    decision = 0.0
    for part in [model.weights.shared, *model.weights.groups.values(), *model.weights.tasks.values()]:
        dense = np.zeros(model.config.n_features)
        dense[part.cols] = part.values
        decision += part.intercept + float(dense[row.indices] @ row.values)
    assert abs(total - decision) < 1e-9
    assert abs(result.logit - total) < 1e-12
    kinds = [p.kind for p in result.parts]
    expected = {"ann": ["shared", "group", "personal"], "bob": ["shared", "group", "personal"],
                "cat": ["shared", "personal"], "stranger": ["shared"]}[user]
    assert kinds == expected
    for part in result.parts:
        assert len(part.spam) <= 3 and len(part.ham) <= 3
        assert all(e.contribution > 0 for e in part.spam) and all(e.contribution < 0 for e in part.ham)
        assert [e.contribution for e in part.spam] == sorted((e.contribution for e in part.spam), reverse=True)


def test_token_names_and_contributions(trained: dict[str, object]) -> None:
    from spamtl.services.explain import explain

    raw = Path(trained["news"]).read_bytes()  # type: ignore[arg-type]
    for user, direction in (("ann", "spam"), ("bob", "ham")):
        reader, model, message = _model_and_message(str(trained["db"]), user, raw)
        try:
            result = explain(model, message, top=100)
        finally:
            reader.store.close()
        personal = next((p for p in result.parts if p.kind == "personal"), None)
        assert personal is not None
        evidence = personal.spam if direction == "spam" else personal.ham
        named = {t: e for e in evidence for t in e.tokens}
        assert "from:garden.example" in named  # the user's own marking of this sender shows
        e = named["from:garden.example"]
        assert e.column == zlib.crc32(b"from:garden.example") % 2**18
        part = model.weights.tasks[user]
        weight = float(part.values[list(part.cols).index(e.column)])
        assert e.contribution == pytest.approx(weight * e.x, abs=1e-12) and e.weight == weight
        assert 0 < e.x < 1


def test_explain_cli_round_trip_with_filter_id_feedback_and_message_id(trained: dict[str, object]) -> None:
    db = str(trained["db"])
    raw = Path(trained["news"]).read_bytes()  # type: ignore[arg-type]
    filtered = run(db, "classify", "ann", "--filter", input=raw)
    assert filtered.exit_code == 0 and filtered.stderr == ""
    header = filtered.stdout.splitlines()[0]
    short_id = header.rsplit("id=", 1)[1].split(",")[0]
    probability = float(header.split("probability=")[1].split(",")[0])
    by_id = json.loads(run(db, "explain", "ann", "--id", short_id, "--format", "json").stdout)
    by_file = json.loads(run(db, "explain", "ann", str(trained["news"]), "--format", "json").stdout)
    by_mid = json.loads(run(db, "explain", "ann", "--id", "<digest-99@garden.example>", "--format", "json").stdout)
    # the delivered copy (with spamtl's headers) is the same message too
    by_stdin = json.loads(run(db, "explain", "ann", "-", "--format", "json", input=filtered.stdout_bytes).stdout)
    assert by_id["id"] == by_file["id"] == by_mid["id"] == by_stdin["id"] == short_id
    assert round(by_id["probability"], 4) == probability and by_id["reason"] == "model"
    assert by_id["parts"] == by_file["parts"]
    fb = run(db, "feedback", "ann", "--ham", "--id", short_id, "--format", "json")
    assert fb.exit_code == 0 and json.loads(fb.stdout)["sha256"].startswith(short_id)
    after = json.loads(run(db, "explain", "ann", "--id", short_id, "--format", "json").stdout)
    assert after["verdict"] == "ham" and after["reason"] == "label"
    text = run(db, "explain", "ann", "--id", short_id).stdout
    assert text.splitlines()[1] == "ham because ann labelled this message ham"
    assert run(db, "feedback", "ann", "--spam", "--id", short_id).exit_code == 0  # restore ann's view


def test_explain_text_says_why_in_words(trained: dict[str, object]) -> None:
    db = str(trained["db"])
    spam = Path(trained["tmp"]) / "spam.eml"  # type: ignore[arg-type]
    spam.write_bytes(_mails(9, "spam", 1)[0])
    lines = run(db, "explain", "cat", str(spam), "-n", "2").stdout.splitlines()
    assert lines[0].startswith("cat: spam (probability 0.") and "id " in lines[0]
    assert lines[1].startswith("spam: leans spam because of what everyone reports (`")
    assert lines[2].split()[0] == "shared" and lines[3].startswith("    toward spam: ")
    assert len(lines[3].split(", ")) == 2


def test_explain_errors(trained: dict[str, object], tmp_path: Path) -> None:
    db = str(trained["db"])
    assert run(db, "explain", "ann", "--id", "0123456789ab").stderr == (
        "Error: no stored message has id or Message-ID '0123456789ab'; pass the message itself\n")
    assert run(db, "explain", "ann", "x.eml", "--id", "abc").stderr == "Error: give either a message or --id, not both\n"
    # retention dropped the text: the id is known, the bytes are gone
    raw = make_mail("forgotten", "text that retention dropped")
    copy = tmp_path / "copy.sqlite3"
    url = copy_sqlite(db, copy)
    out = json.loads(run(url, "classify", "ann", "-", "--format", "json", input=raw).stdout)
    con = sqlite3.connect(copy)
    con.execute("UPDATE messages SET raw = x'' WHERE sha256 = ?", (out["sha256"],))
    con.commit()
    con.close()
    assert run(url, "explain", "ann", "--id", out["id"]).stderr == (
        f"Error: the message {out['id']} is known but its text is no longer stored (dropped by retention); "
        "pass the message itself\n")


def test_filter_report_header_is_short_ascii_and_stripped_from_identity(trained: dict[str, object],
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    db = str(trained["db"])
    raw = make_mail("weekly newsletter digest ünïcode " + "x" * 300, "gardening news " * 50,
                    sender="news@garden.example")
    plain = run(db, "classify", "ann", "--filter", input=raw)
    assert "X-Spamtl-Report" not in plain.stdout
    for args, env in ((["--report"], None), ([], "true")):
        if env:
            monkeypatch.setenv("SPAMTL_FILTER_REPORT", env)
        result = run(db, "classify", "ann", "--filter", *args, input=raw)
        assert result.exit_code == 0 and result.stderr == ""
        lines = result.stdout_bytes.split(b"\n")
        report = [line for line in lines[:3] if line.startswith(b"X-Spamtl-Report: ")]
        assert len(report) == 1
        value = report[0].removeprefix(b"X-Spamtl-Report: ").decode("ascii")
        assert len(value) <= 300 and value.startswith("shared ") and "; group " in value and "; personal " in value
        again = run(db, "classify", "ann", "--format", "json", "-", input=result.stdout_bytes)
        assert json.loads(again.stdout)["sha256"] == json.loads(
            run(db, "classify", "ann", "--format", "json", "-", input=raw).stdout)["sha256"]


def test_report_header_is_bounded_for_any_explanation() -> None:
    from spamtl.services.explain import Evidence, Explanation, PartExplanation, report_header

    long = tuple(Evidence(tokens=("body:" + "w" * 37 + "...", "subj:(x);y"), column=i, weight=1.0, x=0.1,
                          contribution=0.1 * (10 - i)) for i in range(5))
    parts = tuple(PartExplanation(kind=k, name="", intercept=0.5, features=1.0, spam=long, ham=())
                  for k in ("shared", "group", "personal"))
    ex = Explanation(user="u", sha256="0" * 64, message_id="", model_version=1, logit=4.5, probability=0.99,
                     verdict="spam", spam_cutoff=0.9, ham_cutoff=0.2, cutoff_source="global", parts=parts)
    line = report_header(ex)
    assert len(line) <= 300 and line.isascii() and "\n" not in line
    assert line.startswith("shared +1.50 (") and "; group +1.50" in line and "; personal +1.50" in line
    assert "(x)" not in line and "[x],y" in line  # part separators never appear inside token names


def test_history_corrections_and_error_counts(trained: dict[str, object], tmp_path: Path) -> None:
    db = copy_sqlite(str(trained["db"]), tmp_path / "h.sqlite3")
    spam = make_mail("win the lottery now 77", "claim your prize viagra casino alpha", sender="p@cheap-1.example")
    ham = make_mail("project meeting 5 cat", "agenda minutes budget review bravo", sender="colleague@cat.example")
    other = make_mail("project meeting 6 cat", "agenda minutes budget review kilo", sender="colleague@cat.example")
    verdicts = {}
    for name, raw in (("spam", spam), ("ham", ham), ("other", other)):
        verdicts[name] = json.loads(run(db, "classify", "cat", "--format", "json", "-", input=raw).stdout)
    assert verdicts["spam"]["verdict"] == "spam" and verdicts["ham"]["verdict"] == "ham"
    run(db, "classify", "cat", "--format", "json", "-", input=spam)  # classified twice: counts once
    assert run(db, "feedback", "cat", "--ham", "--id", verdicts["spam"]["id"]).exit_code == 0  # a false positive
    assert run(db, "feedback", "cat", "--ham", "--id", verdicts["ham"]["id"]).exit_code == 0  # confirmed
    assert run(db, "feedback", "cat", "--spam", "--id", verdicts["other"]["id"]).exit_code == 0  # false negative
    data = json.loads(run(db, "history", "cat", "--format", "json", "-n", "3").stdout)
    entries = data["entries"]
    assert [e["id"] for e in entries] == [verdicts["spam"]["id"], verdicts["other"]["id"], verdicts["ham"]["id"]]
    assert [(e["verdict"], e["outcome"], e["label"]) for e in entries] == [
        ("spam", "corrected", "ham"), ("ham", "corrected", "spam"), ("ham", "confirmed", "ham")]
    assert entries[0]["subject"] == "win the lottery now 77" and entries[0]["model_version"] == 1
    cat = data["summary"]["users"][0]
    assert (cat["user"], cat["classifications"], cat["labelled"], cat["confirmed"], cat["false_positives"],
            cat["false_negatives"]) == ("cat", 4, 3, 1, 1, 1)
    summary = json.loads(run(db, "history", "--summary", "--format", "json").stdout)["summary"]
    assert summary["overall"]["false_positives"] == 1 and summary["overall"]["false_negatives"] == 1
    assert run(db, "history", "cat", "--since", "2999-01-01", "--format", "json").stdout.count('"id"') == 0
    text = run(db, "history", "cat", "-n", "1").stdout.splitlines()
    assert text[0].split()[:4] == ["classified", "(UTC)", "id", "verdict"]
    assert verdicts["spam"]["id"] in text[1] and "corrected (ham)" in text[1] and "win the lottery now 77" in text[1]
    assert run(db, "history").stderr == "Error: name a USER, or use --summary for every user\n"
    assert run(db, "history", "nobody").stderr == "Error: no user 'nobody' in the store; `spamtl users` lists them\n"


def test_log_lines_per_verdict_feedback_training_without_subjects(trained: dict[str, object], tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:

    db = copy_sqlite(str(trained["db"]), tmp_path / "l.sqlite3")
    log = tmp_path / "spamtl.log"
    raw = make_mail("secret subject words", "private body words", sender="x@garden.example")
    # default: filter mode writes nothing to stderr
    assert run(db, "classify", "ann", "--filter", input=raw).stderr == ""
    monkeypatch.setenv("SPAMTL_LOG_DESTINATION", str(log))
    monkeypatch.setenv("SPAMTL_LOG_LEVEL", "info")
    out = run(db, "classify", "ann", "--filter", input=raw)
    assert out.stderr == ""
    short_id = out.stdout.splitlines()[0].rsplit("id=", 1)[1]
    run(db, "feedback", "ann", "--ham", "--id", short_id)
    run(db, "train")
    lines = log.read_text().splitlines()
    assert len(lines) == 3
    verdict, feedback, training = (parse_line(line) for line in lines)
    assert {k: verdict[k] for k in ("level", "event", "user", "id", "reason")} == {
        "level": "info", "event": "verdict", "user": "ann", "id": short_id, "reason": "model"}
    header_cutoff = out.stdout.splitlines()[0].split("cutoff=", 1)[1].split(",", 1)[0]  # ann's own (trained) cutoff
    assert float(verdict["probability"]) > 0 and verdict["cutoff"] == header_cutoff and verdict["version"] == "1"
    assert (feedback["event"], feedback["label"], feedback["id"]) == ("feedback", "ham", short_id)
    assert training["event"] == "training" and training["version"] == "2"
    text = log.read_text()
    assert "secret" not in text and "private" not in text and "subject" not in text
    monkeypatch.setenv("SPAMTL_LOG_DESTINATION", "stderr")
    assert run(db, "classify", "ann", "--filter", input=raw).stderr.count("event=verdict user=ann") == 1
    monkeypatch.setenv("SPAMTL_LOG_LEVEL", "warning")
    assert run(db, "classify", "ann", "--filter", input=raw).stderr == ""


def test_log_values_are_quoted_and_one_line() -> None:
    from spamtl.logs import format_fields

    fields = {"user": 'we ird"=\nname', "id": "abc", "p": 0.5, "none": None}
    line = format_fields(fields)
    assert "\n" not in line and line.isascii()
    assert line == 'user="we ird\\"=\\x0aname" id=abc p=0.5000 none=-'
    assert parse_line(line)["user"] == 'we ird"=\\x0aname' and parse_line(line)["id"] == "abc"


def test_bad_config_in_filter_mode_still_delivers(trained: dict[str, object], tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPAMTL_SPAM_CUTOFF", "high")
    raw = make_mail("hello", "world")
    result = run(str(trained["db"]), "classify", "ann", "--filter", input=raw)
    assert result.exit_code == 1
    assert result.stdout_bytes == b"X-Spamtl-Status: error\n" + raw
    assert result.stderr == ('Error: SPAMTL_SPAM_CUTOFF: spam_cutoff must be a number between 0 and 1, got "high" '
                             "(message passed through unfiltered)\n")
