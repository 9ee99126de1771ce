"""Console entry point: the classify hot path first, the full Typer CLI otherwise."""

from __future__ import annotations

import sys


def main() -> None:
    from spamtl.fastpath import run

    code = run(sys.argv[1:])
    if code is not None:
        sys.exit(code)
    from spamtl.cli import main as cli_main

    cli_main()
