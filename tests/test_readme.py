"""The README and docs/ as a user reads them: the quick start runs as printed, every ``spamtl ...``
command line shown parses, links land on a page and heading that exist, no commit hash is left in
them, and docs/operations.md names every setting.

The two quick-start commands are the fenced blocks marked ``<!-- quick-start: demo -->`` and
``<!-- quick-start: tests -->`` in README.md.  The slow test runs them, exactly as printed, in a copy
of this checkout with a throw-away HOME and TMPDIR and none of the caller's ``SPAMTL_*`` variables,
so it touches no real store, configuration or cache.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import runpy
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import REPO

README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))
PAGES = [README, *DOCS, REPO / "benchmarks" / "README.md"]
FENCE = re.compile(r"^(?:<!-- ([^>]*?) -->\n)?```[\w-]*\n(.*?)^```$", re.M | re.S)
QUICK_START = ("demo", "tests")
SHELL_OPERATORS = {"<", ">", ">>", "|", "||", "&&", ";", "&", "2>&1"}


def fenced_blocks(page: Path) -> Iterator[tuple[str | None, str]]:
    """(the marker right above the block, or None; the block's text) for every fenced block of ``page``."""
    for m in FENCE.finditer(page.read_text()):
        yield m.group(1), m.group(2)


def quick_start() -> dict[str, str]:
    """README's quick-start commands by name: the one line of each marked block."""
    found: dict[str, str] = {}
    for marker, text in fenced_blocks(README):
        if marker and marker.startswith("quick-start:"):
            name = marker.split(":", 1)[1].strip()
            assert name not in found, f"two quick-start blocks named {name!r}"
            lines = [line for line in text.splitlines() if line.strip()]
            assert len(lines) == 1, f"quick-start {name!r} should be one command line: {lines}"
            found[name] = lines[0]
    return found


def test_readme_has_both_quick_start_commands() -> None:
    commands = quick_start()
    assert sorted(commands) == sorted(QUICK_START)
    assert commands["demo"].endswith("spamtl demo")
    assert "pytest" in commands["tests"]
    for command in commands.values():  # from the repository root, into its own venv
        assert command.startswith("python3 -m venv .venv && "), command


def test_readme_is_a_first_screen() -> None:
    assert len(README.read_text().splitlines()) <= 300
    assert "docs/" in README.read_text()


# ------------------------------------------------------------------ the quick start, run as printed
def _copy_checkout(target: Path) -> Path:
    """This checkout as a fresh clone would have it: what .gitignore leaves out (venvs, caches, stores) stays out."""
    ignored = [line.strip().rstrip("/") for line in (REPO / ".gitignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    shutil.copytree(REPO, target, ignore=shutil.ignore_patterns(".git", *ignored), symlinks=True)
    return target


def _clean_env(tmp: Path) -> dict[str, str]:
    """A login with nothing of ours: a throw-away HOME and TMPDIR, no SPAMTL_*, no PYTHON*, no venv.

    ``python3`` is the interpreter this test suite's venv was made from.  The network settings pip
    needs on this machine (its index, proxy and certificates) are kept.
    """
    home, scratch = tmp / "home", tmp / "tmp"
    home.mkdir()
    scratch.mkdir()
    base_bin = Path(sys.base_prefix) / "bin"
    env = {"HOME": str(home), "TMPDIR": str(scratch), "PATH": f"{base_bin}:/usr/bin:/bin",
           "LANG": "C.UTF-8", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    for name, value in os.environ.items():
        if name.startswith("PIP_") or name.lower() in ("http_proxy", "https_proxy", "no_proxy", "all_proxy") \
                or name in ("SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE"):
            env.setdefault(name, value)
    return env


def _run(command: str, cwd: Path, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["/bin/sh", "-c", command], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.slow
@pytest.mark.sqlite_only(reason="the quick start makes its own SQLite store; what it runs does not change with the test backend")
def test_quick_start_runs_as_printed(tmp_path: Path) -> None:
    """The demo command on a fresh copy, then the test command in the same copy.

    The test command runs the whole fast suite; here its pytest only collects it
    (``PYTEST_ADDOPTS=--collect-only``), which still needs every test dependency installed and
    every test module importable, without running the suite inside itself.
    """
    commands = quick_start()
    checkout = _copy_checkout(tmp_path / "spamtl")
    env = _clean_env(tmp_path)

    demo = _run(commands["demo"], checkout, env, timeout=1200)
    shown = f"$ {commands['demo']}\n{demo.stdout[-3000:]}\n{demo.stderr[-3000:]}"
    assert demo.returncode == 0, shown
    database = re.search(r"^Demo database: sqlite:///(\S+)$", demo.stdout, re.M)
    assert database is not None, shown
    assert Path(database.group(1)).is_relative_to(tmp_path), shown  # the throw-away TMPDIR, never a real store
    assert "Multi-task learning against the single-task alternatives" in demo.stdout, shown
    assert re.search(r"^Done in \d+ s\.", demo.stdout, re.M), shown
    assert (checkout / ".venv" / "bin" / "spamtl").exists()

    tests = _run(commands["tests"], checkout, {**env, "PYTEST_ADDOPTS": "--collect-only -q"}, timeout=1200)
    shown = f"$ {commands['tests']}\n{tests.stdout[-3000:]}\n{tests.stderr[-3000:]}"
    assert tests.returncode == 0, shown
    assert re.search(r"^tests/test_readme\.py: \d+$", tests.stdout, re.M), shown  # the suite was collected
    assert not any(path.name.startswith("spamtl") for path in (tmp_path / "home").rglob("*")), \
        "the quick start wrote a store or settings into HOME"


# ------------------------------------------------------------------ every `spamtl ...` line shown parses
def shown_command_lines() -> list[tuple[str, str]]:
    """(page, line) for every line of a fenced block that runs spamtl: ``spamtl ...`` or ``$ spamtl ...``."""
    lines: list[tuple[str, str]] = []
    for page in PAGES:
        for marker, text in fenced_blocks(page):
            if marker and marker.startswith("contrib/"):
                continue  # the contrib files run spamtl by its installed path; tests/test_contrib.py checks them
            for line in text.replace("\\\n", " ").splitlines():
                line = line.strip().removeprefix("$ ")
                if line.startswith("spamtl "):
                    lines.append((page.name, line))
    return lines


def spamtl_arguments(line: str) -> list[str]:
    """The line's arguments to spamtl, without the shell's comment, redirections and pipes."""
    words = shlex.split(line, comments=True)
    assert words[0] == "spamtl", line
    args: list[str] = []
    for word in words[1:]:
        if word in SHELL_OPERATORS or word.startswith(("<", ">", "2>")):
            break
        args.append(word)
    return args


def with_help(args: list[str]) -> list[str]:
    """``args`` with ``--help`` before any ``--`` (after it, --help would be a user name)."""
    cut = args.index("--") if "--" in args else len(args)
    return [*args[:cut], "--help", *args[cut:]]


class _Terminal(io.StringIO):
    """stdin as a terminal: the entry point's filter-mode guard then leaves the command line alone."""

    def isatty(self) -> bool:
        return True


def run_spamtl(args: list[str]) -> tuple[int, str]:
    """``python -m spamtl ARGS`` in this process: its exit code and what it printed."""
    out = io.StringIO()
    code = 0
    argv, stdin = sys.argv, sys.stdin
    sys.argv, sys.stdin = ["spamtl", *args], _Terminal("")
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            runpy.run_module("spamtl", run_name="__main__", alter_sys=False)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv, sys.stdin = argv, stdin
    return code, out.getvalue()


@pytest.fixture
def nothing_real(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever a command line would open is under tmp_path: the store, the settings, HOME."""
    for name in [n for n in os.environ if n.startswith("SPAMTL_")]:
        monkeypatch.delenv(name)
    empty = tmp_path / "config.toml"
    empty.write_text("")
    monkeypatch.setenv("SPAMTL_CONFIG", str(empty))  # and /etc/spamtl/config.toml is not read
    monkeypatch.setenv("SPAMTL_DATABASE_URL", f"sqlite:///{tmp_path / 'store.sqlite3'}")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))


def test_the_docs_show_spamtl_command_lines() -> None:
    pages = {page for page, _ in shown_command_lines()}
    assert {"README.md", "training.md", "operations.md", "serving.md"} <= pages


@pytest.mark.parametrize(("page", "line"), shown_command_lines(), ids=lambda v: v[:60])
def test_shown_command_line_parses(page: str, line: str, nothing_real: None) -> None:
    """Each command and option shown exists: with ``--help`` added, the parser accepts the line and prints help."""
    args = spamtl_arguments(line)
    code, output = run_spamtl(with_help(args))
    assert code == 0, f"{page}: `{line}` does not parse:\n{output}"
    if args[:1] == ["--version"]:  # eager: it answers before --help does
        assert re.search(r"\d+\.\d+", output), output
    else:
        assert "Usage:" in output, f"{page}: `{line}` ran instead of printing its help:\n{output}"


def test_a_wrong_command_line_is_caught(nothing_real: None) -> None:
    """The check above fails for a misspelt command or option."""
    assert run_spamtl(with_help(spamtl_arguments("spamtl clasify alice message.eml")))[0] == 2
    assert run_spamtl(with_help(spamtl_arguments("spamtl classify --fliter -- alice < in.eml")))[0] == 2


# ------------------------------------------------------------------ links, hashes, settings
def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text())
    found: set[str] = set()
    for m in re.finditer(r"^#{1,6} (.+)$", text, re.M):
        slug, n = _slug(m.group(1)), 1
        while slug in found:  # GitHub numbers repeated headings
            slug, n = f"{_slug(m.group(1))}-{n}", n + 1
        found.add(slug)
    return found


def test_links_reach_a_page_and_heading() -> None:
    for page in PAGES:
        text = FENCE.sub("", page.read_text())
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue  # another site
            path, _, anchor = target.partition("#")
            where = (page.parent / path).resolve() if path else page
            assert where.exists(), f"{page.name} links to {target}, which does not exist"
            if anchor:
                assert anchor in anchors(where), f"{page.name} links to {target}: no such heading in {where.name}"


def test_no_commit_hashes() -> None:
    """Figures say which command made them, not which commit: a hash in the docs is a lab note."""
    if not (REPO / ".git").exists() or shutil.which("git") is None:
        pytest.skip("not a git checkout")
    candidates = {(page.name, word) for page in PAGES
                  for word in re.findall(r"\b[0-9a-f]{7,40}\b", page.read_text())
                  if re.search(r"[a-f]", word) and re.search(r"\d", word)}
    if not candidates:
        return
    words = sorted({word for _, word in candidates})
    out = subprocess.run(["git", "-C", str(REPO), "cat-file", "--batch-check"], capture_output=True, text=True,
                         input="".join(f"{w}^{{commit}}\n" for w in words), timeout=60)
    commits = {w for w, line in zip(words, out.stdout.splitlines(), strict=True) if " commit " in line}
    assert [(page, word) for page, word in sorted(candidates) if word in commits] == []


def test_operations_names_every_setting(nothing_real: None) -> None:
    """docs/operations.md's table has a row for every setting `spamtl config` knows."""
    code, output = run_spamtl(["config", "--format", "json"])
    assert code == 0, output
    settings = json.loads(output)["settings"]
    table = (REPO / "docs" / "operations.md").read_text()
    missing = [name for name in settings if f"\n| `{name}` |" not in table]
    assert missing == []
    features = next(line for line in table.splitlines() if line.startswith("| `features` |"))
    assert [key for key in settings["features"]["value"] if f"`{key} = " not in features] == []
