"""spamtl.services.telemetry: off costs no import; the model gauges read the store (SQLite or PostgreSQL)."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, timedelta

from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.orm import Session

from spamtl.services.telemetry import exposition
from spamtl.store.schema import ModelVersion

from ..conftest import NOW


def samples(body: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body.decode()) for s in family.samples}


def test_metrics_off_imports_no_prometheus_client() -> None:
    """The filter path and a daemon without --metrics never load the library; notes are no-ops."""
    code = ("import sys, spamtl.serve.daemon, spamtl.cli.app, spamtl.services.classify\n"
            "from spamtl.services import telemetry\n"
            "telemetry.note_verdict('spam', 0.01); telemetry.note_unscanned('too_big')\n"
            "telemetry.note_feedback('ham', 'tell'); telemetry.note_process_gone(1)\n"
            "print(sorted(m for m in sys.modules if m.startswith(('prometheus_client', 'http.server'))))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert proc.stdout.strip() == "[]", proc.stdout


def test_enabled_in_one_process_counts_each_note(db_url: str) -> None:
    """enable() without a directory: this process's counts, every known label at 0 from the start."""
    code = ("import sys\n"
            "from spamtl.services import telemetry\n"
            "from spamtl.store.engine import make_engine\n"
            "telemetry.enable()\n"
            "telemetry.note_verdict('spam', 0.003); telemetry.note_verdict('spam', 0.2)\n"
            "telemetry.note_verdict('unsure', 0.004); telemetry.note_unscanned('timeout')\n"
            "telemetry.note_feedback('ham', 'web')\n"
            "sys.stdout.write(telemetry.exposition(make_engine(sys.argv[1]))[0].decode())\n")
    proc = subprocess.run([sys.executable, "-c", code, db_url], capture_output=True, timeout=60, check=True)
    found = samples(proc.stdout)
    assert [found[("spamtl_verdicts_total", (("verdict", v),))] for v in ("spam", "ham", "unsure")] == [2, 0, 1]
    assert found[("spamtl_unscanned_total", (("reason", "timeout"),))] == 1
    assert found[("spamtl_unscanned_total", (("reason", "too_big"),))] == 0
    assert found[("spamtl_feedback_total", (("label", "ham"), ("via", "web")))] == 1
    assert found[("spamtl_feedback_total", (("label", "ham"), ("via", "tell")))] == 0
    assert found[("spamtl_scan_seconds_count", ())] == 3
    assert found[("spamtl_scan_seconds_bucket", (("le", "0.005"),))] == 2  # 3 ms and 4 ms
    assert found[("spamtl_scan_seconds_sum", ())] == 0.003 + 0.2 + 0.004
    assert not any(name.startswith(("spamtl_model_", "spamtl_training_")) for name, _ in found)  # no model yet


def _version(status: str, age: timedelta, metrics: dict[str, object]) -> ModelVersion:
    return ModelVersion(created_at=NOW - age, status=status, params={}, metrics=metrics, feature_key="k",
                        n_features=1, format_version=1, n_users=0, n_messages=0)


def test_model_gauges_read_the_store(engine) -> None:  # type: ignore[no-untyped-def]
    with Session(engine) as session, session.begin():
        session.add_all([_version("retired", timedelta(days=2), {"train_seconds": 12.5}),
                         _version("active", timedelta(days=1), {"train_seconds": 30.0, "cutoffs": {"a": 1}}),
                         _version("rejected", timedelta(hours=1), {"train_seconds": 7.25})])
    found = samples(exposition(engine, now=NOW)[0])
    model = {name: v for (name, _), v in found.items() if name.startswith(("spamtl_model_", "spamtl_training_"))}
    finished = (NOW - timedelta(hours=1) + timedelta(seconds=7.25)).replace(tzinfo=UTC).timestamp()
    assert model == {"spamtl_model_active_version": 2, "spamtl_model_active_age_seconds": 86400,
                     "spamtl_training_last_version": 3, "spamtl_training_last_promoted": 0,
                     "spamtl_training_last_duration_seconds": 7.25,
                     "spamtl_training_last_finished_timestamp_seconds": finished}


def test_a_version_without_training_seconds_has_no_duration(engine) -> None:  # type: ignore[no-untyped-def]
    """Versions trained before the duration was recorded: outcome yes, duration and end not made up."""
    with Session(engine) as session, session.begin():
        session.add(_version("active", timedelta(minutes=5), {}))
    found = samples(exposition(engine, now=NOW)[0])
    model = {name: v for (name, _), v in found.items() if name.startswith(("spamtl_model_", "spamtl_training_"))}
    assert model == {"spamtl_model_active_version": 1, "spamtl_model_active_age_seconds": 300,
                     "spamtl_training_last_version": 1, "spamtl_training_last_promoted": 1}
