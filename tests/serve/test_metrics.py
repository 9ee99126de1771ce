"""``spamtl serve --metrics``: every worker's counts at one endpoint, the store's model gauges, loopback only.

Expected values come from what the test sent, the daemon's answers, its verdict log and the store, never
from the metrics code.
"""

from __future__ import annotations

import calendar
import json
import os
import re
import signal
import sqlite3
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from spamtl.cli.app import app

from ..cli.test_loop import run
from ..conftest import free_port, make_mail
from .test_daemon import SPAM, Daemon, status, store  # noqa: F401 - the module's trained store fixture
from .test_supervision import serving_workers, wait_for

runner = CliRunner()


class MetricsDaemon:
    """A daemon with --metrics on a free loopback port, its verdict log in a file, its TMPDIR its own."""

    def __init__(self, store: dict[str, object], tmp: Path, *args: str) -> None:  # noqa: F811
        self.db = str(store["db"])
        self.log = tmp / "events.log"
        self.tmpdir = tmp / "tmpdir"
        self.tmpdir.mkdir(exist_ok=True)
        self.url = f"http://127.0.0.1:{free_port()}/metrics"
        with pytest.MonkeyPatch.context() as env:
            env.setenv("SPAMTL_LOG_DESTINATION", str(self.log))
            env.setenv("SPAMTL_LOG_LEVEL", "info")
            env.setenv("TMPDIR", str(self.tmpdir))
            self.daemon = Daemon(self.db, tmp, "--metrics", self.url.split("/")[2], *args)

    def scrape(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """Every sample: (name, sorted labels) -> value."""
        with urllib.request.urlopen(self.url, timeout=10) as answer:
            assert answer.headers["Content-Type"].startswith("text/plain; version=")
            text = answer.read().decode()
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}

    def verdict_log(self) -> list[tuple[int, str]]:
        """(worker pid, verdict) of each verdict line of the log."""
        lines = self.log.read_text().splitlines() if self.log.exists() else []
        return [(int(m.group(1)), m.group(2)) for line in lines
                if (m := re.search(r"spamtl\[(\d+)\]: .*event=verdict .*\bverdict=(\w+)", line))]


def value(samples: dict, name: str, **labels: str) -> float:  # type: ignore[type-arg]
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def delta(after: dict, before: dict, name: str, **labels: str) -> float:  # type: ignore[type-arg]
    return value(after, name, **labels) - value(before, name, **labels)


@pytest.fixture(scope="module")
def metrics(store: dict[str, object], tmp_path_factory: pytest.TempPathFactory) -> Iterator[MetricsDaemon]:  # noqa: F811
    d = MetricsDaemon(store, tmp_path_factory.mktemp("metrics"), "--workers", "2", "--allow-tell", "--timeout", "5")
    yield d
    code, err = d.daemon.stop()
    assert code == 0, err
    assert list(d.tmpdir.iterdir()) == []  # the workers' counter files went with the daemon


def send(d: MetricsDaemon, count: int, tag: str) -> Counter[str]:
    """``count`` PROCESS requests for alice, spam and ham alternately; the verdicts the answers state."""
    said: Counter[str] = Counter()
    for i in range(count):
        if i % 2:
            raw = make_mail(f"win the lottery now {tag}{i}", "claim your prize viagra casino", sender="x@cheap-1.example")
        else:
            raw = make_mail(f"weekly newsletter digest {tag}{i}", "this week in gardening news roses tulips",
                            sender="news@garden.example")
        said[status(d.daemon.request("PROCESS", raw, user="alice"))["verdict"]] += 1
    return said


def stored_verdicts(db: str) -> Counter[str]:
    con = sqlite3.connect(db.removeprefix("sqlite:///"))
    try:
        return Counter(dict(con.execute("SELECT verdict, count(*) FROM classifications GROUP BY verdict")))
    finally:
        con.close()


def test_verdicts_of_every_worker_add_up(metrics: MetricsDaemon) -> None:
    """Both workers' counts, also those of a worker that was killed, are in one scrape: per class what the
    answers said, the verdict log and the store hold; the latency histogram counts each scanned message."""
    before, logged_before, stored_before = metrics.scrape(), Counter(v for _, v in metrics.verdict_log()), \
        stored_verdicts(metrics.db)
    said = send(metrics, 16, "a")
    stored_now = lambda: sum((stored_verdicts(metrics.db) - stored_before).values())  # noqa: E731
    assert wait_for(lambda: stored_now() == 16, 10)  # written before the kill (the writer queues them)
    served = {pid for pid, _ in metrics.verdict_log()}
    victim = min(served)  # a worker that scanned some of them
    os.kill(victim, signal.SIGKILL)
    assert wait_for(lambda: serving_workers(metrics.daemon.proc.pid, gone={victim}), 5)
    said += send(metrics, 16, "b")
    after = metrics.scrape()  # the endpoint answered throughout: it lives in the supervisor
    logged = Counter(v for _, v in metrics.verdict_log()) - logged_before
    assert len({pid for pid, _ in metrics.verdict_log()}) >= 2
    assert wait_for(lambda: stored_now() == 32, 10)
    stored = stored_verdicts(metrics.db) - stored_before
    assert sum(said.values()) == 32 and said["spam"] > 0 and said["ham"] > 0
    for verdict in ("spam", "ham", "unsure"):
        assert delta(after, before, "spamtl_verdicts_total", verdict=verdict) == said[verdict] == logged[verdict] \
            == stored[verdict], verdict
    assert delta(after, before, "spamtl_scan_seconds_count") == 32
    assert delta(after, before, "spamtl_scan_seconds_bucket", le="+Inf") == 32
    assert delta(after, before, "spamtl_scan_seconds_sum") > 0


def test_unscanned_mail_is_counted_by_reason(metrics: MetricsDaemon) -> None:
    before = metrics.scrape()
    big = make_mail("big", "x" * 600_000)
    assert metrics.daemon.request("PROCESS", big, user="alice").startswith(b"SPAMD/1.5 65 ")
    assert metrics.daemon.request("CHECK", b"", user="alice").startswith(b"SPAMD/1.5 0 EX_OK")  # nothing to scan
    assert metrics.daemon.request("CHECK", SPAM, user="-rf").startswith(b"SPAMD/1.5 67 ")
    assert metrics.daemon.request("TELL", big, user="alice", Message_class="spam", Set="local").startswith(
        b"SPAMD/1.5 65 ")  # a lesson refused, not mail passed through
    after = metrics.scrape()
    assert delta(after, before, "spamtl_unscanned_total", reason="too_big") == 1
    assert delta(after, before, "spamtl_unscanned_total", reason="not_mail") == 1
    assert delta(after, before, "spamtl_unscanned_total", reason="bad_request") == 1
    assert sum(delta(after, before, "spamtl_verdicts_total", verdict=v) for v in ("spam", "ham", "unsure")) == 0


def test_a_request_not_sent_in_time_is_counted(metrics: MetricsDaemon) -> None:
    import socket

    before = metrics.scrape()
    with socket.create_connection(("127.0.0.1", metrics.daemon.port), timeout=20) as sock:
        sock.sendall(b"CHECK SPAMC/1.5\r\nUser: alice\r\nContent-length: 500\r\n\r\nFrom: a@b\r\n")  # and no more
        assert sock.recv(1000).startswith(b"SPAMD/1.5 75 ")  # EX_TEMPFAIL after --timeout 5
    assert delta(metrics.scrape(), before, "spamtl_unscanned_total", reason="timeout") == 1


def test_tell_counts_feedback(metrics: MetricsDaemon) -> None:
    mail = make_mail("a one-off note 77", "see you at the allotment on sunday", sender="kim@garden.example")
    before = metrics.scrape()
    learn = metrics.daemon.request("TELL", mail, user="alice", Message_class="spam", Set="local")
    assert learn.startswith(b"SPAMD/1.5 0 EX_OK") and b"DidSet: local" in learn
    again = metrics.daemon.request("TELL", mail, user="alice", Message_class="spam", Set="local")
    assert again.startswith(b"SPAMD/1.5 0 EX_OK") and b"DidSet" not in again  # already learnt: nothing stored
    middle = metrics.scrape()
    assert delta(middle, before, "spamtl_feedback_total", label="spam", via="tell") == 1
    assert delta(middle, before, "spamtl_feedback_total", label="ham", via="tell") == 0
    forget = metrics.daemon.request("TELL", mail, user="alice", Remove="local")
    assert b"DidRemove: local" in forget
    assert delta(metrics.scrape(), middle, "spamtl_feedback_total", label="forget", via="tell") == 1


def versions(db: str) -> list[tuple[int, str, str, dict]]:  # type: ignore[type-arg]
    con = sqlite3.connect(db.removeprefix("sqlite:///"))
    try:
        return [(v, s, c, json.loads(m)) for v, s, c, m in
                con.execute("SELECT id, status, created_at, metrics FROM model_versions ORDER BY id")]
    finally:
        con.close()


def copy_version(db: str, version: int, status: str) -> int:
    """A new version row with ``version``'s weights and metrics, created now (what a training would store)."""
    con = sqlite3.connect(db.removeprefix("sqlite:///"))
    try:
        con.execute("INSERT INTO model_versions (created_at, status, params, metrics, feature_key, n_features, "
                    "format_version, n_users, n_messages, note) SELECT strftime('%Y-%m-%d %H:%M:%f', 'now'), ?, "
                    "params, metrics, feature_key, n_features, format_version, n_users, n_messages, 'copy' "
                    "FROM model_versions WHERE id = ?", (status, version))
        new = con.execute("SELECT max(id) FROM model_versions").fetchone()[0]
        con.execute("INSERT INTO model_parts (model_version_id, kind, name, data, revision) "
                    "SELECT ?, kind, name, data, revision FROM model_parts WHERE model_version_id = ?", (new, version))
        con.commit()
        return int(new)
    finally:
        con.close()


def test_model_gauges_follow_the_store(metrics: MetricsDaemon) -> None:
    """Active version and age, the last training's version, outcome, duration and end; a rollback shows."""
    [(first, _, created, _)] = [v for v in versions(metrics.db) if v[1] == "active"]
    samples = metrics.scrape()
    scraped = time.time()
    assert value(samples, "spamtl_model_active_version") == first
    created_at = calendar.timegm(time.strptime(created[:19], "%Y-%m-%d %H:%M:%S"))  # the store keeps UTC
    assert abs(value(samples, "spamtl_model_active_age_seconds") - (scraped - created_at)) < 5
    assert value(samples, "spamtl_training_last_version") == max(v for v, *_ in versions(metrics.db))
    newest = versions(metrics.db)[-1]
    assert value(samples, "spamtl_training_last_duration_seconds") == pytest.approx(newest[3]["train_seconds"])
    assert newest[3]["train_seconds"] > 0
    assert value(samples, "spamtl_training_last_promoted") == (1 if newest[1] in ("active", "retired") else 0)

    new = copy_version(metrics.db, first, "candidate")
    assert run(metrics.db, "models", "activate", str(new)).exit_code == 0
    samples = metrics.scrape()
    assert value(samples, "spamtl_model_active_version") == new
    assert value(samples, "spamtl_model_active_age_seconds") < 60
    assert run(metrics.db, "models", "activate", str(first)).exit_code == 0  # the rollback
    samples = metrics.scrape()
    assert value(samples, "spamtl_model_active_version") == first
    assert (value(samples, "spamtl_training_last_version"), value(samples, "spamtl_training_last_promoted")) == (new, 1)

    rejected = copy_version(metrics.db, first, "rejected")  # a training whose candidate lost at the gate
    samples = metrics.scrape()
    assert (value(samples, "spamtl_training_last_version"), value(samples, "spamtl_training_last_promoted")) == (
        rejected, 0)
    assert value(samples, "spamtl_model_active_version") == first


def test_only_get_metrics_is_served(metrics: MetricsDaemon) -> None:
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(metrics.url.replace("/metrics", "/other"), timeout=10)
    assert err.value.code == 404


def test_one_worker_counts_in_its_own_process(store: dict[str, object], tmp_path: Path) -> None:  # noqa: F811
    d = MetricsDaemon(store, tmp_path, "--workers", "1")
    try:
        before = d.scrape()
        said = send(d, 3, "one")
        after = d.scrape()
    finally:
        code, err = d.daemon.stop()
    assert code == 0, err
    for verdict in ("spam", "ham", "unsure"):
        assert delta(after, before, "spamtl_verdicts_total", verdict=verdict) == said[verdict]
    assert delta(after, before, "spamtl_scan_seconds_count") == 3
    assert value(after, "spamtl_model_active_version") > 0


def test_the_next_daemon_removes_what_a_killed_one_left(store: dict[str, object], tmp_path: Path) -> None:  # noqa: F811
    """A daemon killed with SIGKILL cannot remove its workers' counter files; the next one does, and leaves
    alone a directory of a daemon that still runs, and anything not named as spamtl names them."""
    first = MetricsDaemon(store, tmp_path, "--workers", "2")
    pid = first.daemon.proc.pid
    workers = wait_for(lambda: serving_workers(pid), 30)
    assert workers, "the first daemon's workers did not start"
    [left] = list(first.tmpdir.iterdir())
    assert left.name.startswith(f"spamtl-metrics-{pid}-")
    first.daemon.proc.kill()
    first.daemon.proc.communicate()
    assert wait_for(lambda: not any(Path(f"/proc/{w}").exists() for w in workers), 30), "workers outlived it"
    running = first.tmpdir / f"spamtl-metrics-{os.getpid()}-running"  # this test's process: alive
    other = first.tmpdir / "spamtl-metrics-notes"
    for folder in (running, other):
        folder.mkdir()
    second = MetricsDaemon(store, tmp_path, "--workers", "2")
    try:
        names = sorted(p.name for p in second.tmpdir.iterdir())
        assert left.name not in names and running.name in names and other.name in names, names
        assert any(n.startswith(f"spamtl-metrics-{second.daemon.proc.pid}-") for n in names), names
    finally:
        code, err = second.daemon.stop()
    assert code == 0, err
    assert sorted(p.name for p in second.tmpdir.iterdir()) == sorted([running.name, other.name])


def test_a_non_loopback_metrics_host_is_refused(store: dict[str, object]) -> None:  # noqa: F811
    result = runner.invoke(app, ["serve", "--db", str(store["db"]), "--port", "0", "--metrics", "0.0.0.0:9783"])
    assert (result.exit_code, result.stderr.strip()) == (
        1, "Error: refusing to listen on 0.0.0.0 (not a loopback address); "
           "add --allow-remote to accept connections from other hosts")


def test_a_metrics_port_in_use_is_one_line(store: dict[str, object]) -> None:  # noqa: F811
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = runner.invoke(app, ["serve", "--db", str(store["db"]), "--port", "0", "--metrics",
                                     f"127.0.0.1:{port}"])
    assert (result.exit_code, result.stderr.strip()) == (
        1, f"Error: cannot serve metrics on 127.0.0.1:{port}: Address already in use")
