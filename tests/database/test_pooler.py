"""A pooler in transaction mode is refused at start, saying why; a pooler in session mode works. Real PgBouncer
(Debian's package, installed by `make services`) in front of the tests' PostgreSQL."""

from __future__ import annotations

import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from typer.testing import CliRunner

from agentctl.cli import app
from server.database.pooler import TransactionPoolerError, ensure_sessions
from tests.support import free_port

PGBOUNCER = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
runner = CliRunner()


@contextmanager
def pgbouncer(postgres_url: str, mode: str) -> Iterator[str]:
    """PgBouncer in ``mode`` in front of ``postgres_url``, on loopback; yields the URL to connect through it. It
    refuses to run as root: it runs as the system user of the embedded PostgreSQL (pgserver), which can reach its
    socket, or else as postgres, from a folder that user can read."""
    parts = urlsplit(postgres_url)
    socket_dir = parse_qs(parts.query).get("host", [parts.hostname or "127.0.0.1"])[0]
    database = parts.path.lstrip("/") or "postgres"
    user = parts.username or "postgres"
    folder = Path(tempfile.mkdtemp(prefix="agentctl-pgbouncer-"))
    folder.chmod(0o777)
    port = free_port()
    target = f"host={socket_dir} dbname={database} user={user}"
    if parts.port:
        target += f" port={parts.port}"
    (folder / "pgbouncer.ini").write_text(
        f"""[databases]
{database} = {target}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = any
pool_mode = {mode}
logfile = {folder}/pgbouncer.log
pidfile = {folder}/pgbouncer.pid
ignore_startup_parameters = extra_float_digits,options,statement_timeout,idle_in_transaction_session_timeout,jit
"""
    )
    process = subprocess.Popen(
        ["runuser", "-u", _system_user(), "--", PGBOUNCER, str(folder / "pgbouncer.ini")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                log = folder / "pgbouncer.log"
                assert process.poll() is None, log.read_text() if log.exists() else "pgbouncer exited"
                assert time.monotonic() < deadline, "pgbouncer did not listen"
                time.sleep(0.1)
        yield f"postgresql://{user}@127.0.0.1:{port}/{database}"
    finally:
        process.terminate()
        process.wait(timeout=10)
        shutil.rmtree(folder, ignore_errors=True)


def _system_user() -> str:
    for name in ("pgserver", "postgres"):
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return name
    return "nobody"


async def test_through_postgresql_itself_a_notification_arrives(migrated_database_url: str) -> None:
    await ensure_sessions(migrated_database_url, connect_timeout=5)


async def test_a_pooler_in_session_mode_passes(migrated_database_url: str) -> None:
    with pgbouncer(migrated_database_url, "session") as url:
        await ensure_sessions(url, connect_timeout=5)


async def test_a_pooler_in_transaction_mode_is_told_apart(migrated_database_url: str) -> None:
    with pgbouncer(migrated_database_url, "transaction") as url, pytest.raises(TransactionPoolerError):
        await ensure_sessions(url, connect_timeout=5, probe_seconds=1)


@pytest.mark.usefixtures("workdir")
def test_migrate_and_serve_refuse_a_transaction_pooler_in_one_line(migrated_database_url: str) -> None:
    with pgbouncer(migrated_database_url, "transaction") as url:
        for command in (["migrate"], ["serve"]):
            result = runner.invoke(app, command, env={"DATABASE_URL": url})
            assert result.exit_code == 1, result.output
            lines = result.stderr.strip().splitlines()
            assert len(lines) == 1, lines
            assert "pooler in transaction mode" in lines[0]
