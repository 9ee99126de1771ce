"""One client connection: reading a spamd request within its limits, and refusing or evicting politely."""

from __future__ import annotations

import asyncio
import contextlib
import time
import zlib
from typing import TYPE_CHECKING

from spamtl.serve import protocol as proto

if TYPE_CHECKING:
    from spamtl.serve.peers import Peer
    from spamtl.settings import Settings

LINGER_SECONDS = 1.0
"""How long a refused connection's unread request is read and dropped, so that the refusal arrives
(a close with unread bytes is a reset, which can destroy the answer before the client reads it)."""
LINGER_BYTES = 1 << 20
"""Most bytes read and dropped from a refused connection."""


class Connection:
    """One open connection: who it is, since when, and whether it is still sending its request."""

    __slots__ = ("peer", "opened", "writer", "is_reading", "is_evicted")

    def __init__(self, peer: Peer, opened: float, writer: asyncio.StreamWriter) -> None:
        self.peer, self.opened, self.writer = peer, opened, writer
        self.is_reading = True
        self.is_evicted = False

    def evict(self) -> None:
        """Answer EX_TEMPFAIL and end our side (spamc then passes its mail through unscanned).

        Only our side: closing while the client's bytes are still unread would make the kernel answer
        with a reset.  The request's deadline still ends the connection if the client never hangs up."""
        self.is_evicted, self.is_reading = True, False
        with contextlib.suppress(Exception):
            self.writer.write(proto.response(proto.EX_TEMPFAIL, "server busy and the request still incomplete"))
            self.writer.write_eof()


async def read_request(reader: asyncio.StreamReader, settings: Settings,
                       deadline: float) -> tuple[proto.Request, bytes | None]:
    """The request and its message (None: larger than ``max_message_bytes``).

    The request line and headers within ``serve_header_timeout`` (spamc sends them at once), the whole
    request by ``deadline``: one timer, moved once the headers are in.
    """
    async with asyncio.timeout(min(settings.serve_header_timeout, settings.serve_read_timeout)) as timer:
        request = await _read_head(reader, deadline)
        timer.reschedule(asyncio.get_running_loop().time() + max(0.0, deadline - time.monotonic()))
        return request, await _read_body(reader, request, settings.max_message_bytes)


async def _read_head(reader: asyncio.StreamReader, deadline: float) -> proto.Request:
    """The request line and header lines, up to the empty line."""
    first = await _line(reader, deadline)
    headers: list[bytes] = []
    while True:
        line = await _line(reader, deadline)
        if line in (b"\r\n", b"\n"):
            break
        headers.append(line)
        if len(headers) > proto.MAX_HEADERS:
            raise proto.ProtocolError(proto.EX_PROTOCOL, f"more than {proto.MAX_HEADERS} header lines")
    return proto.build_request(first, headers)


async def _read_body(reader: asyncio.StreamReader, request: proto.Request, limit: int) -> bytes | None:
    """The message (inflated if compressed); None when it is larger than ``limit`` bytes."""
    length = request.content_length
    if length is None:
        return b""
    if length > limit and not request.is_compressed:
        return None
    if length > limit * 2 + 1024:  # compressed mail is never bigger than this
        return None
    body = await reader.readexactly(length)  # under the request's timeout
    if request.is_compressed:
        inflater = zlib.decompressobj()
        try:
            body = inflater.decompress(body, limit + 1)
        except zlib.error:
            raise proto.ProtocolError(proto.EX_DATAERR, "bad zlib data") from None
        if len(body) > limit:
            request.headers["content-length"] = "0"  # all of it was read: nothing to drain
            return None
    return body


async def _line(reader: asyncio.StreamReader, deadline: float) -> bytes:
    if deadline - time.monotonic() <= 0:
        raise TimeoutError
    try:
        line = await reader.readuntil(b"\n")  # under the request's timeout
    except asyncio.LimitOverrunError:
        raise proto.ProtocolError(proto.EX_PROTOCOL, f"line longer than {proto.MAX_LINE_BYTES} bytes") from None
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            raise
        raise proto.ProtocolError(proto.EX_PROTOCOL, "request ends in the middle of a line") from None
    if len(line) > proto.MAX_LINE_BYTES:
        raise proto.ProtocolError(proto.EX_PROTOCOL, f"line longer than {proto.MAX_LINE_BYTES} bytes")
    return line


async def drain_rest(reader: asyncio.StreamReader, request: proto.Request, deadline: float) -> None:
    """Read and drop the rest of an oversized message, so that the client gets to read the answer."""
    await discard(reader, min(request.content_length or 0, proto.MAX_SENT_BYTES), deadline - time.monotonic())


async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, reason: str) -> None:
    """Answer EX_TEMPFAIL, end our side, and read and drop what the client still sends for a moment."""
    writer.write(proto.response(proto.EX_TEMPFAIL, reason))
    with contextlib.suppress(Exception):
        writer.write_eof()
    await discard(reader, LINGER_BYTES, LINGER_SECONDS)


async def discard(reader: asyncio.StreamReader, most: int, seconds: float) -> None:
    """Read and drop up to ``most`` bytes the client still sends, for at most ``seconds`` (or until it stops)."""
    with contextlib.suppress(Exception):
        async with asyncio.timeout(max(0.0, seconds)):
            while most > 0 and (block := await reader.read(min(most, 1 << 16))):
                most -= len(block)
