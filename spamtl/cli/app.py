"""The ``spamtl`` command line: the app, its global options, and every command group merged into it.

Each group is a module of :mod:`spamtl.cli` with an ``app`` of its own; the shared options and the
one error exit are :mod:`spamtl.cli.options`.  Nothing in :mod:`spamtl.cli` imports this module but
:mod:`spamtl.cli.entry`.
"""

from __future__ import annotations

from typing import Annotated

import typer

from spamtl.cli import (
    classify,
    config,
    cutoffs,
    demo,
    explain,
    labels,
    models,
    serve,
    store,
    tell,
    training,
    users,
    web,
)
from spamtl.cli.options import CONFIG_PATH

__all__ = ["app"]

app = typer.Typer(
    name="spamtl",
    help="A per-user spam filter that learns from every user's mail (multi-task learning).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,  # message bodies are private
    rich_markup_mode=None,
)


def _version_callback(value: bool) -> None:
    if value:
        from spamtl import __version__

        typer.echo(f"spamtl {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    config: Annotated[str | None, typer.Option("--config", metavar="PATH",
                                               help="Configuration file (TOML); default: $SPAMTL_CONFIG, else "
                                                    "~/.config/spamtl/config.toml and /etc/spamtl/config.toml.")] = None,
    version: Annotated[bool, typer.Option("--version", is_eager=True, callback=_version_callback,
                                          help="Show the version and exit.")] = False,
) -> None:
    """A per-user spam filter that learns from every user's mail (multi-task learning)."""
    CONFIG_PATH.set(config)  # set on every invocation, so one run's --config never leaks into the next


for _group in (store, labels, training, demo, classify, config, explain, serve, web, tell, users, models, cutoffs):
    app.add_typer(_group.app)
