"""``spamtl tell``: teach `spamtl serve` that one message is spam or ham (the client side of TELL).

It runs once per message a user moves into or out of Junk (Dovecot's IMAPSieve,
``contrib/dovecot/``), as the mail system's account, which has no access to the
store: it only talks to the daemon.  So it stays light: the standard library,
typer and :mod:`spamtl.serve.protocol`, never numpy or SQLAlchemy, and
``spamtl tell`` skips loading the rest of the command line (``spamtl.cli.entry``).
A test checks both.
"""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from spamtl.serve import protocol as proto

__all__ = ["app", "tell", "main"]

EX_USAGE_CLI = 2
"""Wrong usage exits 2, as Typer's own usage errors do everywhere in spamtl."""

app = typer.Typer(add_completion=False, pretty_exceptions_show_locals=False, rich_markup_mode=None)


def _fail(code: int, reason: str) -> typer.Exit:
    typer.echo(f"Error: {' '.join(reason.split())}", err=True)
    return typer.Exit(code)


@app.command()
def tell(
    spam: Annotated[bool, typer.Option("--spam", help="The message is spam.")] = False,
    ham: Annotated[bool, typer.Option("--ham", help="The message is not spam.")] = False,
    forget: Annotated[bool, typer.Option("--forget", help="Forget the user's label for the message.")] = False,
    user: Annotated[str | None, typer.Option("--user", "-u", metavar="USER",
                                             help="Whose filter learns. Default: your login name.")] = None,
    socket_path: Annotated[str | None, typer.Option("--socket", metavar="PATH",
                                                    help="The daemon's Unix socket (serve --socket).")] = None,
    port: Annotated[int | None, typer.Option("--port", metavar="N", min=1, max=65535,
                                             help="The daemon's TCP port (serve --port), instead of --socket.")] = None,
    host: Annotated[str, typer.Option("--host", metavar="HOST", help="The daemon's address for --port.")] = "127.0.0.1",
    timeout: Annotated[float, typer.Option("--timeout", min=0.1, metavar="SECONDS",
                                           help="Give up (exit 75) when the daemon is silent this long.")] = 30.0,
) -> None:
    """Teach the daemon's filter that the message on stdin is spam or ham (or forget its label).

    Sends TELL to `spamtl serve` (which needs --allow-tell, and --trust for an
    account that teaches other users' filters) and needs no access to the
    store.  Exits 0 only when the daemon confirms that the label is stored
    (now, or already: the user had it); otherwise prints one `Error: ...` line
    and exits 65 (message too large, empty or not mail), 67 (bad or unknown user), 69 (daemon not
    reachable), 75 (temporary: the store failed, the daemon is busy or slow;
    try again later), 76 (an answer that is not a confirmation) or 77 (not
    permitted).

    Example: spamtl tell --socket /run/spamtl/spamd.sock --user alice --spam < message.eml
    """
    labels = [name for name, is_on in (("spam", spam), ("ham", ham), ("forget", forget)) if is_on]
    if len(labels) != 1:
        raise _fail(EX_USAGE_CLI, "say exactly one of --spam, --ham or --forget")
    if (socket_path is None) == (port is None):
        raise _fail(EX_USAGE_CLI, "give the daemon's address: --socket PATH or --port N (not both)")
    if sys.stdin.isatty():
        raise _fail(EX_USAGE_CLI, "give the message on standard input: spamtl tell ... < message.eml")
    if user is None:
        import pwd

        try:
            user = pwd.getpwuid(os.geteuid()).pw_name
        except KeyError:
            raise _fail(EX_USAGE_CLI, f"uid {os.geteuid()} has no login name; give --user") from None
    message = sys.stdin.buffer.read(proto.MAX_SENT_BYTES + 1)
    if not message:
        raise _fail(proto.EX_DATAERR, "no message on standard input; nothing learned")
    if len(message) > proto.MAX_SENT_BYTES:
        raise _fail(proto.EX_DATAERR, f"message larger than {proto.MAX_SENT_BYTES} bytes; not sent")
    address: str | tuple[str, int] = socket_path if socket_path is not None else (host, port or 0)
    try:
        request = proto.tell_request(user, labels[0], message)
        answer = proto.parse_response(proto.exchange(address, request, timeout))
    except proto.ProtocolError as exc:
        raise _fail(exc.code, exc.reason) from None
    code, reason = proto.tell_outcome(answer, labels[0])
    if code != proto.EX_OK:
        raise _fail(code, reason)


def main(argv: list[str]) -> None:
    """``spamtl tell ARGS`` without the rest of the command line (its settings pull in numpy)."""
    app(argv, prog_name="spamtl tell")
