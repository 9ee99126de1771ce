"""``spamtl serve`` under abuse: slow clients, floods and clients that vanish leave mail being scanned.

The attacker here is the test's own account (root), which the daemon trusts, so the per-client limit
does not apply (see test_serve_trust for that): what protects the daemon is the short deadline for the
request's headers and making room at capacity by dropping the connection that has spent longest
still sending its request.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

from .test_daemon import SPAM, Daemon, store  # noqa: F401 - fixture
from .test_supervision import serving_workers, wait_for

REQUEST = f"CHECK SPAMC/1.5\r\nUser: alice\r\nContent-length: {len(SPAM)}\r\n\r\n".encode() + SPAM


def is_scanned(answer: bytes) -> bool:
    return answer.startswith(b"SPAMD/1.5 0 EX_OK\r\nSpam: ")


async def _check(port: int, timeout: float = 30.0) -> bytes:
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
    try:
        writer.write(REQUEST)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()


class Slowloris(threading.Thread):
    """``count`` connections that each send one byte a second, reopened as soon as the daemon drops them."""

    def __init__(self, port: int, count: int, seconds: float) -> None:
        super().__init__(daemon=True)
        self.port, self.count, self.seconds = port, count, seconds
        self.opened = 0

    def run(self) -> None:
        asyncio.run(self._attack())

    async def _one(self, until: float) -> None:
        while time.monotonic() < until:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                await asyncio.sleep(0.1)
                continue
            self.opened += 1
            try:
                for byte in REQUEST:
                    if time.monotonic() >= until:
                        break
                    writer.write(bytes([byte]))
                    await writer.drain()
                    await asyncio.sleep(1.0)
            except OSError:
                pass  # dropped by the daemon: come back at once
            finally:
                writer.close()

    async def _attack(self) -> None:
        until = time.monotonic() + self.seconds
        await asyncio.gather(*(self._one(until) for _ in range(self.count)))


def test_slow_clients_leave_normal_checks_scanned(store: dict[str, object]) -> None:  # noqa: F811
    d = Daemon(str(store["db"]), Path(str(store["tmp"])), "--workers", "2")
    attack = Slowloris(d.port, count=100, seconds=14)
    try:
        attack.start()
        time.sleep(3)  # every slot taken many times over
        answers = []
        for _ in range(40):
            answers.append(asyncio.run(_check(d.port)))
            time.sleep(0.2)
        attack.join(30)
    finally:
        code, err = d.stop()
    assert code == 0, err
    assert attack.opened >= 100
    scanned = sum(map(is_scanned, answers))
    assert scanned >= 38, (scanned, [a[:60] for a in answers if not is_scanned(a)])


def test_a_flood_of_connections_and_vanishing_clients_leave_the_daemon_answering(store: dict[str, object]) -> None:  # noqa: F811
    d = Daemon(str(store["db"]), Path(str(store["tmp"])), "--workers", "2")

    async def vanish(kind: int) -> None:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", d.port)
        except OSError:
            return
        if kind == 1:  # half a request, then gone
            writer.write(REQUEST[: len(REQUEST) // 2])
        elif kind == 2:  # a whole request, gone before the answer
            writer.write(REQUEST)
        await writer.drain()
        writer.transport.abort()  # RST, no goodbye

    async def flood() -> list[bytes | BaseException]:
        tasks = [_check(d.port, timeout=60) if i % 3 == 0 else vanish(i % 3) for i in range(500)]
        results = await asyncio.gather(*tasks, return_exceptions=True)
        return [r for i, r in enumerate(results) if i % 3 == 0]

    try:
        workers = wait_for(lambda: serving_workers(d.proc.pid), 5)
        answered = asyncio.run(flood())
        # Every client that waited for an answer got one: scanned, or told to come back (spamc then
        # passes the mail through); none hung or was cut off without a word.
        assert all(isinstance(a, bytes) and (is_scanned(a) or a.startswith(b"SPAMD/1.5 75 ")) for a in answered), \
            [a if isinstance(a, BaseException) else a[:60] for a in answered if not isinstance(a, bytes) or
             not (is_scanned(a) or a.startswith(b"SPAMD/1.5 75 "))][:5]
        assert any(isinstance(a, bytes) and is_scanned(a) for a in answered)  # how many depends on the machine
        after = [asyncio.run(_check(d.port)) for _ in range(10)]
        assert all(map(is_scanned, after))
        assert serving_workers(d.proc.pid) == workers  # no worker died on the way
    finally:
        code, err = d.stop()
    assert code == 0, err
    assert "Traceback" not in err, err[-3000:]
