"""Console entry point, with one guard for mail pipelines.

In ``classify --filter`` mode fed by a pipe, nothing on the command line may
keep the message from coming out the other side: a user name such as
``--help`` (from ``$LOGNAME`` in a recipe) is taken as a user name, not as a
request for help, and a usage error still passes the message through.
"""

from __future__ import annotations

import sys

_OPTIONS_WITH_VALUE = ("--db", "--format")


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
        elif arg in ("--filter", "--report") or arg.startswith(tuple(f"{o}=" for o in _OPTIONS_WITH_VALUE)):
            options.append(arg)
        else:
            words.append(arg)
    return [*prefix, "classify", *options, "--", *words]


def main() -> None:
    from spamtl.cli import app, pass_through

    argv = sys.argv[1:]
    guarded = _filter_argv(argv)
    if guarded is None:
        app()
        return
    try:
        code = app(guarded, standalone_mode=False)
    except Exception as exc:
        # The argument parser's usage errors (click's ClickException: a bad option or value).
        show, code = getattr(exc, "show", None), getattr(exc, "exit_code", None)
        if show is None or not isinstance(code, int):
            raise
        show()
        sys.exit(pass_through(code))
    sys.exit(code if isinstance(code, int) else 0)
