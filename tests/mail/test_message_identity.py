"""The same mail after delivery is the same stored message (spamtl.mail.headers.message_identity).

A copy a user moves in IMAP has CRLF line ends, the delivery agent's trace
fields above it, spamtl's own headers, maybe another final line end; its
correction must reach the verdict logged for the message.  Any other change
is another message, and an id in a forged X-Spamtl-Status names nothing.
Migration 0006 gives old stores the new digests and merges the copies.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import text
from typer.testing import CliRunner

from spamtl.cli.app import app
from spamtl.mail import headers as mail_headers
from spamtl.mail.headers import MAX_STATUS_CHECKS, add_headers, message_identity
from spamtl.services.classify import Verdict, verdict_headers
from spamtl.services.feedback import forget_feedback, record_feedback

from ..cli.test_loop import _mails
from ..conftest import blank_database, count_rows, make_mail
from ..delivery import test_imapsieve as imapsieve
from ..delivery.test_imapsieve import (
    mailserver,  # noqa: F401 - the real Dovecot of tests/delivery/test_imapsieve.py, as a fixture
)
from ..services.test_training import _build, _filter, _verdict

runner = CliRunner()


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)

BASE = (b"Received: from mx.example.net (mx.example.net [192.0.2.1])\n"
        b"\tby mail.example.org (Postfix) with ESMTPS id 4AbCdE\n"
        b"\tfor <bob@example.org>; Thu, 26 Nov 2026 10:00:00 +0000 (UTC)\n"
        b"From: Ann <ann@example.net>\nTo: bob@example.org\nSubject: lunch on friday\n"
        b"Date: Thu, 26 Nov 2026 09:59:00 +0000\nMessage-ID: <lunch-1@example.net>\n"
        b"MIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\n\n"
        b"Shall we meet at noon?\n\n-- \nAnn\n")
OTHER = BASE.replace(b"lunch-1@", b"lunch-2@").replace(b"noon", b"one")
DIGEST = message_identity(BASE)[1]

# What MTAs and delivery agents write above a message (Postfix pipe/local, Dovecot LDA/LMTP, Exim, milters).
TRACE = {
    "return-path": b"Return-Path: <ann@example.net>",
    "delivered-to": b"Delivered-To: bob@example.org",
    "x-original-to": b"X-Original-To: bob@example.org",
    "received": b"Received: from mail.example.org by imap.example.org with LMTP id Xy12; Thu, 26 Nov 2026 10:00:02 +0000",
    "received-folded": b"Received: from mail.example.org\n\tby imap.example.org (Dovecot) with LMTP\n\tid Xy12; Thu, 26 Nov 2026",
    "envelope-to": b"Envelope-to: bob@example.org",
    "delivery-date": b"Delivery-date: Thu, 26 Nov 2026 10:00:03 +0000",
    "x-envelope-to": b"X-Envelope-To: <bob@example.org>",
    "x-envelope-from": b"X-Envelope-From: <ann@example.net>",
    "x-delivered-to": b"X-Delivered-To: bob@example.org",
    "received-spf": b"Received-SPF: pass (mail.example.org: 192.0.2.1 is permitted) client-ip=192.0.2.1",
    "authentication-results": b"Authentication-Results: mail.example.org; spf=pass smtp.mailfrom=example.net",
    "mbox-envelope": b"From ann@example.net Thu Nov 26 10:00:00 2026",
    "lowercase": b"return-path: <ann@example.net>",
}
DELIVERY = (TRACE["return-path"], TRACE["delivered-to"], TRACE["received"])


def crlf(raw: bytes) -> bytes:
    return raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def lf(raw: bytes) -> bytes:
    return raw.replace(b"\r\n", b"\n")


def on_top(*fields: bytes) -> Callable[[bytes], bytes]:
    return lambda raw: b"".join(f + b"\n" for f in fields) + raw


def filtered(raw: bytes, verdict: str = "spam", reason: str = "model") -> bytes:
    """What `classify --filter` / the daemon's PROCESS write: spamtl's headers on top, its id in them."""
    v = Verdict(user="bob", origin="-", message_id="", sha256=message_identity(raw)[1], verdict=verdict,
                probability=0.99, model_version=3, reason=reason)
    return add_headers(raw, verdict_headers(v) + [("X-Spamtl-Report", "shared +1.20 (body:noon)")])


SAME: dict[str, Callable[[bytes], bytes]] = {
    "identical": lambda raw: raw,
    "crlf": crlf,
    "lf-of-crlf": lambda raw: lf(crlf(raw)),
    **{f"trace-{name}": on_top(field) for name, field in TRACE.items()},
    "several-trace": on_top(*DELIVERY, TRACE["x-original-to"], TRACE["received-folded"]),
    "spamtl-headers": filtered,
    "spamtl-headers-ham-label": lambda raw: filtered(raw, "ham", "label"),
    "foreign-filter-headers": on_top(b"X-Spam-Flag: NO", b"X-Spam-Status: No, score=-1.0", b"X-Bogosity: Ham"),
    "append-drops-final-newline": lambda raw: raw.rstrip(b"\n"),
    "append-adds-final-newline": lambda raw: raw + b"\n",
    "append-crlf-adds-final-newline": lambda raw: crlf(raw) + b"\r\n",
    "delivered": lambda raw: crlf(on_top(*DELIVERY)(filtered(raw))),
    "delivered-append-no-final-newline": lambda raw: crlf(on_top(*DELIVERY)(filtered(raw))).rstrip(b"\r\n"),
    "delivered-trace-between-spamtl-headers": lambda raw: on_top(TRACE["delivered-to"])(
        filtered(on_top(TRACE["received"])(filtered(raw)))),
    "mbox-delivered-lf": lambda raw: on_top(TRACE["mbox-envelope"], TRACE["return-path"])(filtered(raw)),
    # Not trace: believed only because spamtl's header below it carries the id of what follows it.
    "lda-field-above-spamtl-header": lambda raw: crlf(on_top(b"X-Virus-Scanned: clamav at example.org",
                                                             *DELIVERY)(filtered(raw))),
    "filtered-twice-field-between": lambda raw: filtered(on_top(b"X-Sieve: Pigeonhole")(filtered(raw))),
}

DIFFERENT: dict[str, Callable[[bytes], bytes]] = {
    "body-byte": lambda raw: raw.replace(b"noon", b"nooN"),
    "body-byte-delivered": lambda raw: crlf(on_top(*DELIVERY)(filtered(raw))).replace(b"noon", b"nooN"),
    "subject": lambda raw: raw.replace(b"lunch on friday", b"lunch on Friday"),
    "message-id": lambda raw: raw.replace(b"lunch-1@", b"lunch-9@"),
    "received-in-the-middle": lambda raw: raw.replace(b"Subject:", TRACE["received"] + b"\nSubject:"),
    "return-path-after-from": lambda raw: raw.replace(b"To:", TRACE["return-path"] + b"\nTo:"),
    "trace-below-a-field-on-top": on_top(b"X-Mailer: mutt", TRACE["received"]),
    "unknown-field-on-top": on_top(b"X-Virus-Scanned: clamav at example.org"),
    "unknown-field-above-unverified-status": on_top(b"X-Virus-Scanned: yes",
                                                    b"X-Spamtl-Status: ham, probability=0.0100, id=000000000000"),
    "subject-above-spamtl-header": lambda raw: on_top(b"Subject: free money")(filtered(raw)),
    "content-type-above-spamtl-header": lambda raw: on_top(b"Content-Type: text/html")(filtered(raw)),
    "blank-line-more-in-body": lambda raw: raw.replace(b"noon?\n", b"noon?\n\n"),
    "line-end-in-body-removed": lambda raw: raw.replace(b"noon?\n\n", b"noon? \n"),
}


@pytest.mark.parametrize("transform", SAME.values(), ids=SAME.keys())
@pytest.mark.parametrize("base", [BASE, crlf(BASE)], ids=["lf", "crlf"])
def test_a_copy_after_transport_is_the_same_message(transform: Callable[[bytes], bytes], base: bytes) -> None:
    kept, digest = message_identity(transform(base))
    assert digest == DIGEST
    assert message_identity(kept) == (kept, digest)  # the stored bytes give their digest back
    assert b"X-Spamtl-" not in kept and b"X-Spam-Flag" not in kept


@pytest.mark.parametrize("transform", DIFFERENT.values(), ids=DIFFERENT.keys())
def test_a_different_message_never_matches(transform: Callable[[bytes], bytes]) -> None:
    changed = transform(BASE)
    assert changed != BASE
    assert message_identity(changed)[1] != DIGEST
    assert message_identity(crlf(changed))[1] != DIGEST


def test_bytes_that_are_not_mail_count_whole() -> None:
    """No header field: a first line that looks like an mbox envelope is text, not transport."""
    assert message_identity(b"From the desk of Ann\nhello\n")[1] != message_identity(b"From the desk of Bob\nhello\n")[1]
    assert message_identity(b"\x00\xff binary")[1] == hashlib.sha256(b"\x00\xff binary").hexdigest()


def test_spamtl_copy_is_kept_without_what_the_lda_wrote_above_it() -> None:
    copy = crlf(on_top(b"X-Virus-Scanned: clamav at example.org", *DELIVERY)(filtered(BASE)))
    assert message_identity(copy)[0] == crlf(BASE)  # the bytes spamtl classified: stored and featurised


@pytest.mark.parametrize("base", [OTHER, on_top(b"X-Virus-Scanned: yes")(OTHER)], ids=["plain", "field-above"])
def test_a_forged_id_names_no_other_message(base: bytes) -> None:
    """X-Spamtl-Status with the id of BASE on another message: the id is checked against the bytes below
    it, never looked up, so the copy is the other message (or a message of its own), never BASE."""
    status = f"X-Spamtl-Status: ham, probability=0.0100, cutoff=0.9000, version=1, id={DIGEST[:12]}".encode()
    forged = base.replace(b"Received:", status + b"\nReceived:", 1)
    assert message_identity(forged)[1] == message_identity(base)[1] != DIGEST
    # The same header on BASE itself is what spamtl writes: it changes nothing.
    assert message_identity(on_top(status)(BASE))[1] == DIGEST


def test_status_checks_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each id check hashes the message: a message full of forged X-Spamtl-Status fields costs a few hashes."""
    calls: list[int] = []
    digest = mail_headers._digest
    monkeypatch.setattr(mail_headers, "_digest", lambda kept: calls.append(len(kept)) or digest(kept))
    forged = b"".join(f"X-Spamtl-Status: ham, id={n:012x}\n".encode() for n in range(1000)) + BASE
    assert message_identity(forged)[1] == DIGEST
    assert len(calls) == MAX_STATUS_CHECKS + 1


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.lists(st.sampled_from(sorted(TRACE)), max_size=4), st.booleans())
def test_identity_on_any_bytes(raw: bytes, trace: list[str], is_crlf: bool) -> None:
    """Any bytes: no exception, the kept bytes give the digest back, and trace on top of mail changes nothing."""
    kept, digest = message_identity(raw)
    assert message_identity(kept)[1] == digest
    mail_ = BASE + raw
    copy = on_top(*(TRACE[name] for name in trace))(filtered(mail_))
    assert message_identity(crlf(copy) if is_crlf else copy)[1] == message_identity(mail_)[1]


# ------------------------------------------------------------------ the store: feedback finds the verdict
def _imap_copy(delivered: bytes) -> bytes:
    """The copy a user moves in IMAP: the delivery agent's trace fields above it, CRLF line ends."""
    return crlf(on_top(*DELIVERY)(delivered))


def _history(db: str, user: str) -> dict:  # type: ignore[type-arg]
    result = runner.invoke(app, ["history", user, "--format", "json", "--db", db])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def test_red_team_correction_of_the_imap_copy_reaches_the_verdict(engine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings_ = _build(engine, tmp_path)
    db = settings_.database_url
    raw = make_mail("win the lottery now", "claim your prize viagra casino alpha bravo",
                    message_id="red@cheap-1.example", sender="promo@cheap-1.example")
    delivered = _filter(db, "bob", raw)
    assert delivered.startswith(b"X-Spamtl-Status: spam, ")
    copy = _imap_copy(delivered)
    fb = runner.invoke(app, ["feedback", "bob", "--ham", "-", "--db", db, "--format", "json"], input=copy)
    assert fb.exit_code == 0, fb.output
    sha = json.loads(fb.stdout)["sha256"]
    history = _history(db, "bob")
    assert [(e["sha256"], e["verdict"], e["outcome"], e["label"]) for e in history["entries"]] == [
        (sha, "spam", "corrected", "ham")]
    bob = history["summary"]["users"][0]
    assert (bob["labelled"], bob["false_positives"]) == (1, 1)
    for again in (raw, copy, lf(copy).rstrip(b"\n")):
        v = _verdict(db, "bob", again)
        assert (v["verdict"], v["reason"], v["sha256"]) == ("ham", "label", sha)
    assert count_rows(db, "messages", "WHERE message_id = 'red@cheap-1.example'") == 1


def test_two_junk_moves_are_two_labelled_verdicts(engine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """One by `spamtl feedback`, one by the daemon's TELL (record_feedback); then forgotten by another copy."""
    settings_ = _build(engine, tmp_path)
    db = settings_.database_url
    first, second = (_imap_copy(_filter(db, "bob", raw)) for raw in _mails(77, "bob", 2))
    fb = runner.invoke(app, ["feedback", "bob", "--spam", "-", "--db", db], input=first)
    assert fb.exit_code == 0, fb.output
    record_feedback(engine, settings_, user="bob", label="spam", raw=second, now=_now())
    bob = _history(db, "bob")["summary"]["users"][0]
    assert (bob["classifications"], bob["labelled"]) == (2, 2)
    assert [e["label"] for e in _history(db, "bob")["entries"]] == ["spam", "spam"]
    summary = runner.invoke(app, ["history", "--summary", "--db", db])
    assert summary.exit_code == 0, summary.output
    assert [line.split()[:3] for line in summary.stdout.splitlines() if line.startswith("bob ")] == [["bob", "2", "2"]]
    # TELL's Remove (forget) with yet another copy of the second: LF again, no final newline, no trace.
    forgot = forget_feedback(engine, settings_, user="bob", raw=lf(second).rstrip(b"\n"), now=_now())
    assert forgot.removed == 1
    assert _history(db, "bob")["summary"]["users"][0]["labelled"] == 1


def test_a_forged_id_cannot_label_another_message(engine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """bob's correction of a copy carrying a forged X-Spamtl-Status (it bypassed the filter) labels that
    copy's own message: never the one of bob's, or of cat's, whose id it names."""
    settings_ = _build(engine, tmp_path)
    db = settings_.database_url
    mine, target, cats = _mails(78, "bob", 3)
    ids = {}
    for name, user, raw in (("mine", "bob", mine), ("target", "bob", target), ("cats", "cat", cats)):
        v = _verdict(db, user, raw)
        ids[name] = v["sha256"]
    for victim in ("target", "cats"):
        status = f"X-Spamtl-Status: spam, probability=0.9900, cutoff=0.9000, version=1, id={ids[victim][:12]}"
        for forged in (on_top(status.encode())(mine), on_top(b"X-Virus-Scanned: yes", status.encode())(mine)):
            fb = runner.invoke(app, ["feedback", "bob", "--spam", "-", "--db", db, "--format", "json"], input=forged)
            assert fb.exit_code == 0, fb.output
            assert json.loads(fb.stdout)["sha256"] not in (ids["target"], ids["cats"])
    assert _verdict(db, "bob", target)["reason"] == "model"
    assert _verdict(db, "cat", cats)["reason"] == "model"
    assert _verdict(db, "bob", cats)["reason"] == "model"
    assert _verdict(db, "bob", mine)["reason"] == "label"  # the forged copy without a field above it is mine


def _with_imapsieve_marks(test: Callable[..., None]) -> Callable[..., None]:
    for mark in imapsieve.pytestmark:  # skipped where tests/delivery/test_imapsieve.py is (no Dovecot, no mail account)
        test = mark(test)
    return test


@_with_imapsieve_marks
def test_junk_move_in_a_real_dovecot_reaches_the_verdict(mailserver: dict[str, object]) -> None:  # noqa: F811
    """As deployed: the filter's output, with an LDA's trace fields above it, APPENDed in CRLF to a real
    Dovecot and moved to Junk; the IMAPSieve recipe TELLs the daemon the copy Dovecot hands it."""
    db, db_path = str(mailserver["db"]), Path(str(mailserver["db_path"]))
    raw = make_mail("meeting 77", "agenda budget minutes 77", sender="boss@work.example", message_id="moved-1@example")
    delivered = runner.invoke(app, ["classify", "alice", "--filter", "--db", db], input=raw)
    assert delivered.exit_code == 0 and delivered.stdout_bytes.startswith(b"X-Spamtl-Status: ham, ")
    start = len(imapsieve._labels(db_path))
    imapsieve._move(mailserver, "INBOX", "Junk", raw=_imap_copy(delivered.stdout_bytes))
    imapsieve._wait_for("spam label", lambda: imapsieve._labels(db_path)[start:] == ["spam"], mailserver)
    [entry] = [e for e in _history(db, "alice")["entries"] if e["message_id"] == "moved-1@example"]
    assert (entry["verdict"], entry["outcome"], entry["label"]) == ("ham", "corrected", "spam")
    assert _verdict(db, "alice", raw)["reason"] == "label"


# ------------------------------------------------------------------ migration 0006
def _insert(conn, raw: bytes | None, sha: str, message_id: str, received: str, subject: str | None = None) -> int:  # type: ignore[no-untyped-def]
    conn.execute(text("INSERT INTO messages (sha256, message_id, raw, size, date, received_at, subject) "
                      "VALUES (:sha, :mid, :raw, :size, NULL, :received, :subject)"),
                 {"sha": sha, "mid": message_id, "raw": None if raw is None else zlib.compress(raw),
                  "size": len(raw or b""), "received": received, "subject": subject})
    return int(conn.execute(text("SELECT id FROM messages WHERE sha256 = :sha"), {"sha": sha}).scalar_one())


def _old(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()  # the digest before 0006: sha256 of the stored bytes


def test_migration_0006_merges_copies_without_losing_labels_or_verdicts(tmp_path: Path) -> None:
    from spamtl.store.engine import downgrade, make_engine, upgrade

    with blank_database(tmp_path, "old") as url:
        engine = make_engine(url, create_dir=True)
        upgrade(engine, "0005")
        imap = lf(_imap_copy(BASE))  # stored by the old code from a delivered copy (own headers already gone)
        crlf_copy = crlf(BASE).rstrip(b"\r\n")
        lone = make_mail("a message of its own", "with one copy only", message_id="lone@x")
        canonical = lf(make_mail("stored canonical", "then pruned", message_id="pruned@x")).rstrip(b"\n")
        canonical_copy = on_top(TRACE["received"])(canonical + b"\n")
        gone = make_mail("pruned long ago", "body dropped", message_id="gone@x")
        t = "2026-11-2{} 00:00:00.000000".format
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO users (name, created_at) VALUES ('ann', :t), ('bob', :t)"), {"t": t(0)})
            ann, bob = (int(conn.execute(text("SELECT id FROM users WHERE name = :n"), {"n": n}).scalar_one())
                        for n in ("ann", "bob"))
            ids = {"base": _insert(conn, BASE, _old(BASE), "lunch-1@example.net", t(1)),
                   "imap": _insert(conn, imap, _old(imap), "lunch-1@example.net", t(0), "lunch on friday"),
                   "crlf": _insert(conn, crlf_copy, _old(crlf_copy), "lunch-1@example.net", t(3)),
                   "lone": _insert(conn, lone, _old(lone), "lone@x", t(1)),
                   "pruned": _insert(conn, None, message_identity(canonical)[1], "pruned@x", t(1)),
                   "pruned-copy": _insert(conn, canonical_copy, _old(canonical_copy), "pruned@x", t(2)),
                   "gone": _insert(conn, None, _old(gone), "gone@x", t(1))}
            labels = [(ann, "base", "ham", "import", t(1)), (bob, "imap", "spam", "feedback", t(4)),
                      (ann, "crlf", "spam", "feedback", t(5)), (bob, "lone", "ham", "import", t(1)),
                      (ann, "pruned-copy", "spam", "feedback", t(6)), (bob, "gone", "spam", "feedback", t(6))]
            for user, name, label, source, when in labels:
                conn.execute(text("INSERT INTO labels (user_id, message_id, label, source, created_at) "
                                  "VALUES (:u, :m, :l, :s, :t)"),
                             {"u": user, "m": ids[name], "l": label, "s": source, "t": when})
            verdicts = [(bob, "base", "ham"), (ann, "imap", "spam"), (ann, "crlf", "unsure"), (bob, "lone", "ham"),
                        (ann, "pruned", "ham"), (bob, "gone", "ham")]
            for user, name, verdict in verdicts:
                conn.execute(text("INSERT INTO classifications (user_id, message_id, probability, verdict, "
                                  "created_at) VALUES (:u, :m, 0.5, :v, :t)"),
                             {"u": user, "m": ids[name], "v": verdict, "t": t(2)})
            for pk in ids.values():
                conn.execute(text("INSERT INTO message_features (message_id, feature_key, data) VALUES (:m, 'k', :d)"),
                             {"m": pk, "d": b"\x00"})
            generation = conn.execute(text("SELECT value FROM store_state WHERE key = 'generation'")).scalar()

        def rows(sql: str) -> list[tuple[object, ...]]:
            with engine.connect() as conn:
                return [tuple(r) for r in conn.execute(text(sql))]

        upgrade(engine)
        survivors = {"base": "base", "imap": "base", "crlf": "base", "lone": "lone", "pruned": "pruned",
                     "pruned-copy": "pruned", "gone": "gone"}
        messages = {pk: (sha, None if data is None else zlib.decompress(data), str(received)[:10], subject)
                    for pk, sha, data, received, subject in rows(
                        "SELECT id, sha256, raw, received_at, subject FROM messages")}
        assert sorted(messages) == sorted(ids[n] for n in ("base", "lone", "pruned", "gone"))
        assert messages[ids["base"]] == (DIGEST, BASE, "2026-11-20", "lunch on friday")  # first copy's bytes,
        assert messages[ids["lone"]][:2] == (message_identity(lone)[1], lone)  # earliest time, a subject
        assert messages[ids["pruned"]][:2] == (message_identity(canonical)[1], canonical_copy)  # body back
        assert messages[ids["gone"]][:2] == (_old(gone), None)  # no body: the old digest stays
        # Every label and every verdict is there, on the surviving copy; the latest label of a user wins.
        assert sorted(rows("SELECT user_id, message_id, label, source FROM labels")) == sorted(
            (u, ids[survivors[n]], label, source) for u, n, label, source, _ in labels)
        assert sorted(rows("SELECT user_id, message_id, verdict FROM classifications")) == sorted(
            (u, ids[survivors[n]], verdict) for u, n, verdict in verdicts)
        latest = rows("SELECT user_id, label FROM labels WHERE id IN (SELECT max(id) FROM labels "
                      f"WHERE message_id = {ids['base']} GROUP BY user_id) ORDER BY user_id")
        assert latest == [(ann, "spam"), (bob, "spam")]
        # The merged copies' cached features went with them; the survivors' bytes, and so theirs, are unchanged.
        assert sorted(m for (m,) in rows("SELECT message_id FROM message_features")) == sorted(
            ids[n] for n in ("base", "lone", "pruned", "gone"))
        assert rows("SELECT value FROM store_state WHERE key = 'generation'") == [(generation + 1,)]

        downgrade(engine, "0005")  # the old digests back, for what is left
        assert sorted(rows("SELECT id, sha256 FROM messages")) == sorted(
            [(ids["base"], _old(BASE)), (ids["lone"], _old(lone)), (ids["pruned"], _old(canonical_copy)),
             (ids["gone"], _old(gone))])
        assert count_rows(url, "labels") == len(labels) and count_rows(url, "classifications") == len(verdicts)
        upgrade(engine)
        assert sorted(rows("SELECT id, sha256 FROM messages")) == sorted(
            [(ids["base"], DIGEST), (ids["lone"], message_identity(lone)[1]),
             (ids["pruned"], message_identity(canonical)[1]), (ids["gone"], _old(gone))])
        engine.dispose()
