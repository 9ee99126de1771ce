"""``spamtl web``: the pages for users and admins (and their /metrics), served by uvicorn."""

from __future__ import annotations

from typing import Annotated

import typer

from spamtl.cli.options import DbOption, engine_for, exit_on_errors, new_typer, settings_from

app = new_typer()

_Listen = Annotated[str | None, typer.Option("--listen", metavar="HOST:PORT",
                                             help="Where the pages listen; loopback unless --allow-remote. "
                                                  "Default: web_listen (127.0.0.1:8783).")]
_AllowRemote = Annotated[bool, typer.Option("--allow-remote",
                                            help="Allow a non-loopback host (put HTTPS in front of it).")]


@app.command()
def web(listen: _Listen = None, allow_remote: _AllowRemote = False, db: DbOption = None) -> None:
    """Serve the pages: each user's verdicts, review queue, explanations (shared, group and personal
    parts beside their cutoffs) and one-click corrections; the admin's users, quality, model versions
    with rollback and plots over time; GET /metrics for Prometheus.

    Users log in with a token from `spamtl users token NAME` (admins: `--admin`), or through a
    reverse proxy that sets web_user_header.  Needs the web extra: pip install 'spamtl[web]'.

    Example: spamtl web --listen 127.0.0.1:8783
    """
    with exit_on_errors():
        from spamtl.errors import OptionalDependencyError

        settings = settings_from(db, {"web_listen": ("--listen", listen)})
        try:
            from spamtl.web.server import run
        except ImportError as exc:
            raise OptionalDependencyError(f"spamtl web needs the web extra ({exc.name} is missing): "
                             "pip install 'spamtl[web]'") from None
        from spamtl.store.engine import check_schema

        engine = engine_for(settings)
        check_schema(engine)
        run(settings, engine, allow_remote=allow_remote, announce=typer.echo)
