"""``spamtl serve``: the spamd-protocol daemon (options -> ServeOptions -> serve)."""

from __future__ import annotations

from typing import Annotated

import typer

from spamtl.cli.app import DbOption, _errors, _settings, app


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
    allow_tell: Annotated[bool | None, typer.Option("--allow-tell/--no-allow-tell",
                                                    help="Answer TELL (spamc -L): learn from clients that may act "
                                                         "for the user. Default: serve_allow_tell (off).")] = None,
    trust: Annotated[list[str] | None, typer.Option("--trust", metavar="ACCOUNT",
                                                    help="A local account (name or uid) that acts for every user: "
                                                         "the mail system's (Dovecot's, Postfix's pipe user). "
                                                         "Repeat for more. root and the daemon's own account always "
                                                         "do; any other client acts only for the user of its own "
                                                         "login name. Default: serve_trusted.")] = None,
    trust_network: Annotated[list[str] | None, typer.Option("--trust-network", metavar="CIDR",
                                                            help="Clients from this address or network act for "
                                                                 "every user over TCP (a remote MTA). Repeatable. "
                                                                 "Default: serve_trusted_networks (none).")] = None,
    socket_mode: Annotated[str | None, typer.Option("--socket-mode", metavar="OCTAL",
                                                    help="Mode of the --socket file; clients need read and write. "
                                                         "Default: serve_socket_mode (0660).")] = None,
    socket_group: Annotated[str | None, typer.Option("--socket-group", metavar="GROUP",
                                                     help="Group of the --socket file, e.g. the mail system's "
                                                          "group. Default: serve_socket_group (the daemon's).")] = None,
    header_timeout: Annotated[float | None, typer.Option("--header-timeout", min=0.1,
                                                         help="Seconds a client has to send the request line and "
                                                              "headers. Default: serve_header_timeout (5).")] = None,
    max_per_client: Annotated[int | None, typer.Option("--max-per-client", min=1,
                                                       help="Connections one untrusted client (account or address) "
                                                            "may hold open. Default: serve_max_per_client (8).")] = None,
    db: DbOption = None,
) -> None:
    """Run the spamd-protocol daemon: spamc, milters and MTA recipes for SpamAssassin work unchanged.

    Keeps each user's model loaded, sees new models and feedback within a
    second, learns from `spamc -L spam|ham|forget` when --allow-tell is on.
    A client is known by its account (the Unix socket's peer, or the owner of
    a loopback TCP connection): it may store verdicts and teach only for the
    user of its own login name, unless it is trusted (--trust).  SIGTERM stops
    after the requests in flight; SIGHUP drops cached models and rereads the
    settings.

    Example: spamtl serve --socket /run/spamtl/spamd.sock --socket-group mail --allow-tell --trust mail
    """
    with _errors():
        from spamtl.config import validate_name
        from spamtl.serve.daemon import serve as run
        from spamtl.serve.daemon import ServeOptions

        if default_user is not None:
            validate_name(default_user)
        given: dict[str, tuple[str, object]] = {
            "serve_workers": ("--workers", workers),
            "serve_max_connections": ("--max-connections", max_connections),
            "serve_read_timeout": ("--timeout", timeout),
            "serve_allow_tell": ("--allow-tell", allow_tell),
            "serve_trusted": ("--trust", tuple(trust) if trust else None),
            "serve_trusted_networks": ("--trust-network", tuple(trust_network) if trust_network else None),
            "serve_socket_mode": ("--socket-mode", socket_mode),
            "serve_socket_group": ("--socket-group", socket_group),
            "serve_header_timeout": ("--header-timeout", header_timeout),
            "serve_max_per_client": ("--max-per-client", max_per_client),
        }
        _settings(db, given)  # a bad option or setting is one line now, not in every worker
        options = ServeOptions(socket_path=socket_path, host=host, port=port, allow_remote=allow_remote,
                               default_user=default_user)

        def announce(line: str) -> None:
            typer.echo(line)

        raise typer.Exit(run(lambda: _settings(db, given), options, announce=announce))
