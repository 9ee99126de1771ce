"""The deployment files in ``contrib/``: the documentation (README.md and docs/*.md) shows each of them
once, as it is; the learn script passes ``spamtl tell``'s exit status on, and systemd accepts the units.

Dovecot running the IMAPSieve files for real is ``tests/delivery/test_imapsieve.py``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO

CONTRIB = REPO / "contrib"
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
INSTALLED_SPAMTL = "/usr/local/bin/spamtl"
INSTALLED_SOCKET = "/run/spamtl/spamd.sock"
# A fenced block, with the marker line ``<!-- contrib/PATH -->`` right above it when it shows that file.
FENCE = re.compile(r"^(<!-- (contrib/\S+) -->\n)?```[\w-]*\n(.*?)^```$", re.M | re.S)
MARKER = re.compile(r"<!--\s*contrib/")


def contrib_files() -> list[Path]:
    return sorted(p for p in CONTRIB.rglob("*") if p.is_file())


def doc_blocks() -> list[tuple[str, str | None, str]]:
    """Every fenced block of README.md and docs/*.md: (its page, the contrib path it says it is or None, its text)."""
    return [(str(page.relative_to(REPO)), m.group(2), m.group(3))
            for page in PAGES for m in FENCE.finditer(page.read_text())]


def test_docs_pages_exist() -> None:
    assert len(PAGES) > 1, "docs/*.md is missing"


def test_docs_show_each_contrib_file_exactly_once() -> None:
    """A block marked ``<!-- contrib/PATH -->`` is that file, byte for byte, and every file is shown once."""
    shown: dict[str, list[str]] = {}
    for page, path, text in doc_blocks():
        if path is None:
            continue
        assert (REPO / path).is_file(), f"{page} shows {path}, which does not exist"
        assert text == (REPO / path).read_text(), f"{page}'s copy of {path} differs from the file"
        shown.setdefault(path, []).append(page)
    assert {path: pages for path, pages in shown.items() if len(pages) > 1} == {}, "a contrib file shown twice"
    assert sorted(shown) == [str(p.relative_to(REPO)) for p in contrib_files()], "a contrib file is never shown"


def test_every_contrib_marker_is_on_a_block() -> None:
    """A marker not directly above a fenced block would mark nothing, and its file would go unchecked."""
    for page in PAGES:
        markers = len(MARKER.findall(page.read_text()))
        blocks = sum(1 for m in FENCE.finditer(page.read_text()) if m.group(2))
        assert markers == blocks, f"{page.name}: {markers} contrib markers, {blocks} marked blocks"


def test_docs_have_no_unmarked_copy_of_a_contrib_file() -> None:
    """An unmarked block repeating a contrib file's lines would drift from it unchecked."""
    for path in contrib_files():
        lines = {line.strip() for line in path.read_text().splitlines()
                 if len(line.strip()) > 12 and not line.lstrip().startswith("#")}
        for page, marked, text in doc_blocks():
            if marked is None:
                common = lines & {line.strip() for line in text.splitlines()}
                assert len(common) < 3, f"an unmarked block in {page} repeats {path.name}: {sorted(common)}"


# ------------------------------------------------------------------ the learn script
@pytest.fixture
def learn(tmp_path: Path):  # type: ignore[no-untyped-def]
    """contrib's spamtl-learn.sh with spamtl replaced by a stand-in that logs its arguments and exits $CODE."""
    fake = tmp_path / "spamtl"
    fake.write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$(dirname "$0")/args"\ncat > "$(dirname "$0")/stdin"\n'
                    'echo "Error: what spamtl tell says" >&2\nexit "$CODE"\n')
    fake.chmod(0o755)
    script = tmp_path / "spamtl-learn.sh"
    script.write_text((CONTRIB / "dovecot" / "spamtl-learn.sh").read_text().replace(INSTALLED_SPAMTL, str(fake)))
    script.chmod(0o755)

    def run(*args: str, code: int = 0) -> subprocess.CompletedProcess[str]:
        (tmp_path / "args").unlink(missing_ok=True)
        return subprocess.run([str(script), *args], input="Subject: x\n\nbody\n", capture_output=True, text=True,
                              env={"PATH": "/usr/bin:/bin", "CODE": str(code)}, timeout=30)

    return run, tmp_path


@pytest.mark.parametrize("code", [0, 69, 75, 77])
def test_learn_script_exits_with_spamtl_tells_status(learn, code: int) -> None:  # type: ignore[no-untyped-def]
    run, tmp = learn
    out = run("spam", "alice", code=code)
    assert out.returncode == code, out.stderr
    assert out.stderr == "Error: what spamtl tell says\n"  # reaches Dovecot's log
    assert (tmp / "args").read_text().splitlines() == ["tell", "--socket", INSTALLED_SOCKET, "--user", "alice",
                                                       "--spam"]
    assert (tmp / "stdin").read_text() == "Subject: x\n\nbody\n"
    assert run("ham", "bob", code=code).returncode == code
    assert (tmp / "args").read_text().splitlines()[-2:] == ["bob", "--ham"]


@pytest.mark.parametrize("args", [(), ("forget", "alice"), ("--spam", "alice"), ("spam",)],
                         ids=["nothing", "forget", "option", "no-user"])
def test_learn_script_refuses_other_arguments(learn, args: tuple[str, ...]) -> None:  # type: ignore[no-untyped-def]
    run, tmp = learn
    out = run(*args)
    assert out.returncode != 0 and "usage: spamtl-learn.sh spam|ham USER" in out.stderr
    assert not (tmp / "args").exists()


# ------------------------------------------------------------------ the systemd units
@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed (apt-get install systemd)")
def test_systemd_units_verify(tmp_path: Path) -> None:
    """contrib/systemd's units pass `systemd-analyze verify` (ExecStart pointed at this checkout's spamtl)."""
    spamtl = Path(sys.executable).with_name("spamtl")
    assert spamtl.exists()
    service = (CONTRIB / "systemd" / "spamtl.service").read_text()
    socket_unit = (CONTRIB / "systemd" / "spamtl.socket").read_text()
    for line in ("Type=notify", "Requires=spamtl.socket", f"ListenStream={INSTALLED_SOCKET}", "SocketMode=0660",
                 "SocketGroup=mail"):
        assert re.search(rf"^{re.escape(line)}$", service + socket_unit, re.M), line
    assert re.search(r"^WatchdogSec=\d+", service, re.M)
    assert re.search(rf"^ExecStart={re.escape(INSTALLED_SPAMTL)} serve .*--allow-tell.* --trust mail\b", service, re.M)
    assert re.search(r"^User=spamtl$", (CONTRIB / "systemd" / "spamtl-train.service").read_text(), re.M)  # the store's owner
    units = ["spamtl.socket", "spamtl.service", "spamtl-train.service", "spamtl-train.timer"]
    for unit in units:
        (tmp_path / unit).write_text((CONTRIB / "systemd" / unit).read_text().replace(INSTALLED_SPAMTL, str(spamtl)))
    out = subprocess.run([SYSTEMD_ANALYZE or "systemd-analyze", "verify", *(str(tmp_path / u) for u in units)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert [line for line in (out.stdout + out.stderr).splitlines() if "spamtl" in line] == []
