"""``spamtl serve``: the spamd-protocol daemon (options -> ServeOptions -> serve)."""

from __future__ import annotations

from typing import Annotated

import typer

from spamtl.cli import DbOption, _errors, _settings, app


@app.command()
def serve(
    socket_path: Annotated[str | None, typer.Option("--socket", metavar="PATH",
                                                    help="Listen on this Unix socket (spamc -U PATH).")] = None,
    port: Annotated[int | None, typer.Option("--port", metavar="N",
                                             help="Listen on this TCP port (spamc -p N); 0 picks a free one.")] = None,
    host: Annotated[str, typer.Option("--host", help="Address for --port; loopback unless --allow-remote.")] = "127.0.0.1",
    allow_remote: Annotated[bool, typer.Option("--allow-remote", help="Allow a non-loopback --host.")] = False,
    workers: Annotated[int | None, typer.Option("--workers", min=1, max=64,
                                                help="Worker processes (scoring is CPU-bound: one per core). "
                                                     "Default: serve_workers (2).")] = None,
    max_connections: Annotated[int | None, typer.Option("--max-connections", min=1,
                                                        help="Connections served at once; more get EX_TEMPFAIL. "
                                                             "Default: serve_max_connections (64).")] = None,
    timeout: Annotated[float | None, typer.Option("--timeout", min=0.1,
                                                  help="Seconds a client has to send a request. "
                                                       "Default: serve_read_timeout (30).")] = None,
    default_user: Annotated[str | None, typer.Option("--default-user", metavar="USER",
                                                     help="Whose model scores a request without a User header "
                                                          "(default: the shared model).")] = None,
    db: DbOption = None,
) -> None:
    """Run the spamd-protocol daemon: spamc, milters and MTA recipes for SpamAssassin work unchanged.

    Keeps each user's model loaded, sees new models and feedback within a
    second, learns from `spamc -L spam|ham|forget`.  SIGTERM stops after the
    requests in flight; SIGHUP drops cached models and rereads the settings.

    Example: spamtl serve --socket /run/spamtl/spamd.sock --port 7830
    """
    with _errors():
        from spamtl.config import validate_name
        from spamtl.serve import ServeOptions
        from spamtl.serve import serve as run

        if default_user is not None:
            validate_name(default_user)
        settings = _settings(db)
        options = ServeOptions(
            socket_path=socket_path, host=host, port=port, allow_remote=allow_remote,
            workers=workers or settings.serve_workers,
            max_connections=max_connections or settings.serve_max_connections,
            read_timeout=timeout or settings.serve_read_timeout,
            refresh_interval=settings.serve_refresh_interval, log_interval=settings.serve_log_interval,
            default_user=default_user)

        def announce(line: str) -> None:
            typer.echo(line)

        raise typer.Exit(run(lambda: _settings(db), options, announce=announce))
