"""Console entry point, with one guard for mail pipelines.

In ``classify --filter`` mode fed by a pipe, nothing on the command line may
keep the message from coming out the other side: a user name such as
``--help`` (from ``$LOGNAME`` in a recipe) is taken as a user name, not as a
request for help, and a usage error still passes the message through.
With ``classify --exit-code`` (where 2 means unsure) a usage error exits 3.
"""

from __future__ import annotations

import sys

_OPTIONS_WITH_VALUE = ("--db", "--format")
_FLAGS = ("--filter", "--report", "--exit-code")


def _filter_argv(argv: list[str]) -> list[str] | None:
    """``argv`` with options first and every other word after ``--``, for piped filter mode."""
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
    return [*prefix, "classify", *options, "--", *words]


def main() -> None:
    argv = sys.argv[1:]
    if argv[:1] == ["tell"]:
        # Run once per message moved to or from Junk, as the mail system's account: only the
        # command itself, not the whole command line (whose settings import numpy).
        from spamtl.cli.tell import main as tell

        tell(argv[1:])
        return
    from spamtl.cli.app import app

    guarded = _filter_argv(argv)
    # `classify --exit-code`: 2 means unsure there, so the parser's usage errors (and Ctrl-C) exit 3.
    verdict_codes = _is_exit_code(argv)
    if guarded is None and not verdict_codes:
        app()
        return
    try:
        code = app(guarded or argv, standalone_mode=False)
    except Exception as exc:
        sys.exit(_usage_error_code(exc, verdict_codes=verdict_codes, guarded=guarded is not None))
    sys.exit(code if isinstance(code, int) else 0)


def _usage_error_code(exc: Exception, *, verdict_codes: bool, guarded: bool) -> int:
    """The exit code of the argument parser's usage error (click's ClickException: a bad option or value),
    shown on stderr; in piped filter mode the message is passed through first.  Anything else is re-raised."""
    from spamtl.services.filtering import EXIT_CODE_ERROR, pass_through

    show, code = getattr(exc, "show", None), getattr(exc, "exit_code", None)
    if verdict_codes and type(exc).__name__ == "Abort":  # click's (typer vendors its own click)
        print("Aborted!", file=sys.stderr)
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
