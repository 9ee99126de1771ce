"""A throw-away PostgreSQL server for the test suite: initdb, start on loopback, stop.

    python tests/pgserver.py start          # prints the URL, then the data directory
    python tests/pgserver.py stop DATADIR   # stops the server and deletes DATADIR

``.ci/run`` uses it to run the tests that use a database a second time with
``SPAMTL_TEST_POSTGRES`` set.  The server listens on 127.0.0.1 only, on a free
non-default port, with its Unix socket inside the data directory; the data
directory lives under the temporary directory and is deleted by ``stop``.
Durability is switched off (``fsync=off``): the data is thrown away anyway.

PostgreSQL refuses to run as root; when run as root the server runs as the
``postgres`` user (or ``$SPAMTL_PG_USER``), which must exist.  The binaries are
found through ``$SPAMTL_PG_BIN``, then ``/usr/lib/postgresql/*/bin``, then ``PATH``.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

SUPERUSER = "spamtl"  # the database role the tests connect as (trust auth on loopback)


def _bin(name: str) -> str:
    folder = os.environ.get("SPAMTL_PG_BIN")
    candidates = [folder] if folder else sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    for candidate in candidates:
        path = Path(candidate) / name
        if path.exists():
            return str(path)
    found = shutil.which(name)
    if found is None:
        raise SystemExit(f"pgserver: {name} not found; set SPAMTL_PG_BIN to PostgreSQL's bin directory")
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_server_user(argv: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return argv
    user = os.environ.get("SPAMTL_PG_USER", "postgres")
    return ["runuser", "-u", user, "--", *argv]


def _run(argv: list[str]) -> None:
    result = subprocess.run(_as_server_user(argv), capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"pgserver: {' '.join(argv[:2])} failed:\n{result.stdout}{result.stderr}")


def start() -> tuple[str, str]:
    """Create and start a server; returns (SQLAlchemy URL of its ``postgres`` database, data directory)."""
    datadir = tempfile.mkdtemp(prefix="spamtl-pg-")
    if os.geteuid() == 0:
        entry = pwd.getpwnam(os.environ.get("SPAMTL_PG_USER", "postgres"))
        os.chown(datadir, entry.pw_uid, entry.pw_gid)
    os.chmod(datadir, 0o700)
    port = _free_port()
    _run([_bin("initdb"), "-D", datadir, "-U", SUPERUSER, "-A", "trust", "--no-sync", "-E", "UTF8",
          "--locale=C"])
    # The test role logs in without a password; every other role needs one, so bad-password tests can run.
    hba = (f"local all {SUPERUSER} trust\nhost all {SUPERUSER} 127.0.0.1/32 trust\n"
           "host all all 127.0.0.1/32 scram-sha-256\n")
    _run(["sh", "-c", f"printf '%s' '{hba}' > {datadir}/pg_hba.conf"])
    options = f"-c listen_addresses=127.0.0.1 -p {port} -k {datadir} -c fsync=off -c max_connections=200"
    _run([_bin("pg_ctl"), "-D", datadir, "-o", options, "-l", f"{datadir}/server.log", "-w", "start"])
    return f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{port}/postgres", datadir


def stop(datadir: str) -> None:
    """Stop the server of ``datadir`` (fast shutdown) and delete the directory."""
    if Path(datadir, "postmaster.pid").exists():
        _run([_bin("pg_ctl"), "-D", datadir, "-m", "fast", "-w", "stop"])
    shutil.rmtree(datadir, ignore_errors=True)


def main(argv: list[str]) -> int:
    if argv[:1] == ["start"] and len(argv) == 1:
        url, datadir = start()
        print(url)
        print(datadir)
        return 0
    if argv[:1] == ["stop"] and len(argv) == 2:
        stop(argv[1])
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
