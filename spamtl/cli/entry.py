"""Console entry point, with one guard for mail pipelines and one short way through for them.

In ``classify --filter`` mode fed by a pipe, nothing on the command line may
keep the message from coming out the other side: a user name such as
``--help`` (from ``$LOGNAME`` in a recipe) is taken as a user name, not as a
request for help, and a usage error still passes the message through.
With ``classify --exit-code`` (where 2 means unsure) a usage error exits 3.

A piped filter line that holds only what filter mode takes (``--config``,
``--db``, ``--format``, the three flags, a user, paths) runs
:func:`spamtl.services.filtering.filter_stdin` without building the command
line (Typer, and every command's imports): a delivery pipeline starts one
process per message.  Anything else, and every error of the line itself, is
the full parser's.
"""

from __future__ import annotations

import os
import sys

_OPTIONS_WITH_VALUE = ("--db", "--format")
_FLAGS = ("--filter", "--report", "--exit-code")
_FORMATS = ("text", "json")
EXIT_INTERRUPTED = 130
"""Ctrl-C, silently, as Typer ends every command it interrupts (the shell's code for SIGINT)."""
_BLAS_THREADS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
"""One message has no work for a BLAS thread pool, whose threads would spin up (CPU time) as numpy loads."""


def _split_filter_argv(argv: list[str]) -> tuple[list[str], list[str], list[str]] | None:
    """A piped filter line as (global options, the command's options, every other word); None for any other."""
    prefix: list[str] = []  # global options before the command: --config PATH
    while argv and (argv[0] == "--config" or argv[0].startswith("--config=")):
        take = 2 if argv[0] == "--config" else 1
        prefix, argv = prefix + argv[:take], argv[take:]
    if not argv or argv[0] != "classify" or "--filter" not in argv or "--" in argv or sys.stdin.isatty():
        return None
    options: list[str] = []
    words: list[str] = []
    args = iter(argv[1:])
    for arg in args:
        if arg in _OPTIONS_WITH_VALUE:
            options += [arg, next(args, "")]
        elif arg in _FLAGS or arg.startswith(tuple(f"{o}=" for o in _OPTIONS_WITH_VALUE)):
            options.append(arg)
        else:
            words.append(arg)
    return prefix, options, words


def _filter_argv(argv: list[str]) -> list[str] | None:
    """``argv`` with options first and every other word after ``--``, for piped filter mode."""
    split = _split_filter_argv(argv)
    if split is None:
        return None
    prefix, options, words = split
    return [*prefix, "classify", *options, "--", *words]


def _short_line(argv: list[str]) -> tuple[list[str], list[str], list[str]] | None:
    """:func:`_split_filter_argv` of a piped filter line, also of one with its own ``--`` (the recipes' form)
    when only options come before it; None for any other line."""
    if "--" not in argv:
        return _split_filter_argv(argv)
    at = argv.index("--")
    split = _split_filter_argv(argv[:at])
    if split is None or split[2] or argv[at - 1] in ("--config", *_OPTIONS_WITH_VALUE):
        return None  # a word before `--`, or an option whose value `--` would be: the full parser's
    return split[0], split[1], argv[at + 1:]


def _plain_filter(prefix: list[str], options: list[str], words: list[str]) -> dict[str, str] | None:
    """The option values of a filter line the full parser would take as they are; None for any other line.

    Every option at most once, no value that starts with ``-``, a known ``--format``, a user: whatever
    is not plainly so (a repeated option, a missing user, a bad value) goes to the full parser.
    """
    given: dict[str, str] = {}
    for tokens, names in ((prefix, ("--config",)), (options, (*_OPTIONS_WITH_VALUE, *_FLAGS))):
        args = iter(tokens)
        for arg in args:
            name, is_inline, value = arg.partition("=")
            if name not in _FLAGS and not is_inline:
                value = next(args, "")
            if name not in names or name in given or (name in _FLAGS and is_inline) or value.startswith("-"):
                return None
            given[name] = value
    if "--filter" not in given or not words or given.get("--format", "text") not in _FORMATS:
        return None
    return given


def _run_filter(given: dict[str, str], words: list[str]) -> int:
    """``classify --filter`` as the full command runs it (the same function, settings and clock)."""
    from spamtl.services.filtering import filter_stdin, to_stderr
    from spamtl.settings import load_command_line
    from spamtl.store import utcnow

    db, config = given.get("--db"), given.get("--config")
    return filter_stdin(lambda: load_command_line(db, config=config).settings, words[0], paths=words[1:],
                        report="--report" in given, verdict_codes="--exit-code" in given,
                        source=sys.stdin.buffer, sink=sys.stdout.buffer, now=utcnow(), warn=to_stderr)


def main() -> None:
    argv = sys.argv[1:]
    if argv[:1] == ["tell"]:
        # Run once per message moved to or from Junk, as the mail system's account: only the
        # command itself, not the whole command line (whose settings import numpy).
        from spamtl.cli.tell import main as tell

        tell(argv[1:])
        return
    short = _short_line(argv)
    # `classify --exit-code`: 2 means unsure there, so the parser's usage errors exit 3 (Ctrl-C: 130, as anywhere).
    verdict_codes = _is_exit_code(argv)
    if short is not None:
        for name in _BLAS_THREADS:
            os.environ.setdefault(name, "1")
        given = _plain_filter(*short)
        if given is not None:
            try:
                code = _run_filter(given, short[2])
            except KeyboardInterrupt:
                code = EXIT_INTERRUPTED
            sys.exit(code)
    from spamtl.cli.app import app

    guarded = _filter_argv(argv)
    if guarded is None and not verdict_codes:
        app()
        return
    try:
        code = app(guarded or argv, standalone_mode=False)
    except Exception as exc:
        sys.exit(_usage_error_code(exc, verdict_codes=verdict_codes, guarded=guarded is not None))
    sys.exit(code if isinstance(code, int) else 0)


def _usage_error_code(exc: BaseException, *, verdict_codes: bool, guarded: bool) -> int:
    """The exit code of the argument parser's usage error (click's ClickException: a bad option or value),
    shown on stderr; in piped filter mode the message is passed through first.  Anything else is re-raised.
    With ``verdict_codes``, click's Abort exits 3."""
    from spamtl.services.filtering import EXIT_CODE_ERROR, pass_through

    show, code = getattr(exc, "show", None), getattr(exc, "exit_code", None)
    if verdict_codes and type(exc).__name__ == "Abort":
        print("Aborted!", file=sys.stderr)  # click's words (typer vendors its own click)
        return EXIT_CODE_ERROR
    if show is None or not isinstance(code, int):
        raise exc
    show()
    code = EXIT_CODE_ERROR if verdict_codes else code
    return pass_through(sys.stdin.buffer, sys.stdout.buffer, code) if guarded else code


def _is_exit_code(argv: list[str]) -> bool:
    """A ``classify ... --exit-code`` command line (the option before any ``--``)."""
    words = argv[:argv.index("--")] if "--" in argv else argv
    return "classify" in words and "--exit-code" in words
