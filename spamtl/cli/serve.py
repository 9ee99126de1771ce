"""``spamtl serve``: the spamd-protocol daemon (options -> ServeOptions -> serve)."""

from __future__ import annotations

import dataclasses
from typing import Annotated

import typer

from spamtl.cli.options import DbOption, exit_on_errors, new_typer, settings_from
from spamtl.settings import Settings

app = new_typer()


def _default(name: str) -> str:
    """``Default: name (value)`` for an option's help, from the Settings field's default."""
    value = next(f.default for f in dataclasses.fields(Settings) if f.name == name)
    return f"Default: {name} ({format(value, 'g') if isinstance(value, float) else value})"


_Socket = Annotated[str | None, typer.Option("--socket", metavar="PATH", help="Listen on this Unix socket (spamc -U PATH).")]
_Port = Annotated[int | None, typer.Option("--port", metavar="N",
                                           help="Listen on this TCP port (spamc -p N); 0 picks a free one.")]
_Host = Annotated[str, typer.Option("--host", help="Address for --port; loopback unless --allow-remote.")]
_AllowRemote = Annotated[bool, typer.Option("--allow-remote", help="Allow a non-loopback --host.")]
_Workers = Annotated[int | None, typer.Option("--workers", min=1, max=64,
                                              help="Worker processes (scoring is CPU-bound: one per core). "
                                                   f"{_default('serve_workers')}.")]
_MaxConnections = Annotated[int | None, typer.Option("--max-connections", min=1,
                                                     help="Connections served at once; more get EX_TEMPFAIL. "
                                                          f"{_default('serve_max_connections')}.")]
_Timeout = Annotated[float | None, typer.Option("--timeout", min=0.1, help="Seconds a client has to send a request. "
                                                                           f"{_default('serve_read_timeout')}.")]
_DefaultUser = Annotated[str | None, typer.Option("--default-user", metavar="USER",
                                                  help="Whose model scores a request without a User header "
                                                       "(default: the shared model).")]
_AllowTell = Annotated[bool | None, typer.Option("--allow-tell/--no-allow-tell",
                                                 help="Answer TELL (spamc -L): learn from clients that may act "
                                                      "for the user. Default: serve_allow_tell (off).")]
_Trust = Annotated[list[str] | None, typer.Option("--trust", metavar="ACCOUNT",
                                                  help="A local account (name or uid) that acts for every user: "
                                                       "the mail system's (Dovecot's, Postfix's pipe user). "
                                                       "Repeat for more. root and the daemon's own account always "
                                                       "do; any other client acts only for the user of its own "
                                                       "login name. Default: serve_trusted.")]
_TrustNetwork = Annotated[list[str] | None, typer.Option("--trust-network", metavar="CIDR",
                                                         help="Clients from this address or network act for "
                                                              "every user over TCP (a remote MTA). Repeatable. "
                                                              "Default: serve_trusted_networks (none).")]
_SocketMode = Annotated[str | None, typer.Option("--socket-mode", metavar="OCTAL",
                                                 help="Mode of the --socket file; clients need read and write. "
                                                      f"{_default('serve_socket_mode')}.")]
_SocketGroup = Annotated[str | None, typer.Option("--socket-group", metavar="GROUP",
                                                  help="Group of the --socket file, e.g. the mail system's "
                                                       "group. Default: serve_socket_group (the daemon's).")]
_HeaderTimeout = Annotated[float | None, typer.Option("--header-timeout", min=0.1,
                                                      help="Seconds a client has to send the request line and "
                                                           f"headers. {_default('serve_header_timeout')}.")]
_MaxPerClient = Annotated[int | None, typer.Option("--max-per-client", min=1,
                                                   help="Connections one untrusted client (account or address) "
                                                        f"may hold open. {_default('serve_max_per_client')}.")]
_Metrics = Annotated[str | None, typer.Option("--metrics", metavar="HOST:PORT",
                                             help="Serve Prometheus metrics at http://HOST:PORT/metrics "
                                                  "(loopback unless --allow-remote). Default: serve_metrics "
                                                  "(none).")]


@app.command()
def serve(socket_path: _Socket = None, port: _Port = None, host: _Host = "127.0.0.1", allow_remote: _AllowRemote = False,
          workers: _Workers = None, max_connections: _MaxConnections = None, timeout: _Timeout = None,
          default_user: _DefaultUser = None, allow_tell: _AllowTell = None, trust: _Trust = None,
          trust_network: _TrustNetwork = None, socket_mode: _SocketMode = None, socket_group: _SocketGroup = None,
          header_timeout: _HeaderTimeout = None, max_per_client: _MaxPerClient = None, metrics: _Metrics = None,
          db: DbOption = None) -> None:
    """Run the spamd-protocol daemon: spamc, milters and MTA recipes for SpamAssassin work unchanged.

    Keeps each user's model loaded, sees new models and feedback within a
    second, learns from `spamc -L spam|ham|forget` when --allow-tell is on.
    A client is known by its account (the Unix socket's peer, or the owner of
    a loopback TCP connection): it may store verdicts and teach only for the
    user of its own login name, unless it is trusted (--trust).  SIGTERM stops
    after the requests in flight; SIGHUP drops cached models and rereads the
    settings.  --metrics 127.0.0.1:9783 serves Prometheus metrics (docs/serving.md).

    Example: spamtl serve --socket /run/spamtl/spamd.sock --socket-group mail --allow-tell --trust mail
    """
    with exit_on_errors():
        from spamtl.serve.daemon import ServeOptions
        from spamtl.serve.daemon import serve as run
        from spamtl.settings import validate_name

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
            "serve_metrics": ("--metrics", metrics),
        }
        settings_from(db, given)  # a bad option or setting is one line now, not in every worker
        options = ServeOptions(socket_path=socket_path, host=host, port=port, allow_remote=allow_remote,
                               default_user=default_user)
        raise typer.Exit(run(lambda: settings_from(db, given), options, announce=typer.echo))
