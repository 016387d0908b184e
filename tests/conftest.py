"""Shared fixtures: a real PostgreSQL server for tests marked ``@pytest.mark.postgres``.

``postgres_dsn`` (session-scoped) returns ``postgresql://postgres@127.0.0.1:PORT/ductwork_test``:

* with ``DUCTWORK_TEST_PG_DSN`` set, that server is used and the database in it is created if
  missing (under pytest-xdist each worker gets its own database, ``<name>_gw0`` ...);
* otherwise a throwaway cluster is made with ``initdb`` and started with ``pg_ctl`` on a free
  port (as the ``postgres`` user via ``runuser`` when running as root), then stopped and
  deleted at the end of the session; under pytest-xdist each worker starts its own cluster;
* when neither is possible the tests are skipped with the reason, except when ``CI=true``:
  then they fail, because CI must never skip the real-server tests silently.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

PG_DATABASE = "ductwork_test"


class _Unavailable(Exception):
    """PostgreSQL cannot be provided on this machine (the message says why)."""


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"PostgreSQL tests cannot run on CI: {reason}", pytrace=False)
    pytest.skip(f"no PostgreSQL: {reason}")


def _worker_suffix() -> str:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    return f"_{worker}" if worker else ""


def _create_database(dsn: str) -> str:
    """Create the database named in ``dsn`` (if missing) and return the DSN."""
    try:
        import psycopg
        from psycopg import sql
    except ImportError as exc:
        raise _Unavailable("psycopg is not installed (pip install 'ductwork[sql]')") from exc
    parts = urlsplit(dsn)
    name = parts.path.lstrip("/") or PG_DATABASE
    admin = urlunsplit(parts._replace(path="/postgres"))
    try:
        with psycopg.connect(admin, autocommit=True, connect_timeout=10) as con:
            exists = con.execute("select 1 from pg_database where datname = %s", [name]).fetchone()
            if not exists:
                with contextlib.suppress(psycopg.errors.DuplicateDatabase):
                    con.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    except psycopg.OperationalError as exc:
        host = f"{parts.hostname}:{parts.port or 5432}"
        raise _Unavailable(f"cannot connect to {host}: {str(exc).strip()}") from exc
    return urlunsplit(parts._replace(path=f"/{name}"))


def _bindir() -> Path:
    found = shutil.which("pg_config")
    if found:
        out = subprocess.run([found, "--bindir"], capture_output=True, text=True, check=False)
        candidate = Path(out.stdout.strip())
        if (candidate / "initdb").exists():
            return candidate
    for path in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if (Path(path) / "initdb").exists():
            return Path(path)
    if shutil.which("initdb"):
        return Path(shutil.which("initdb") or "").parent
    msg = "initdb not found (install the server: apt-get install -y postgresql)"
    raise _Unavailable(msg)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_cluster() -> tuple[str, Callable[[], None]]:
    """initdb + pg_ctl start on a free port; returns the DSN and a stop function."""
    bindir = _bindir()
    prefix: list[str] = []
    base = Path(tempfile.mkdtemp(prefix="ductwork-pg-"))
    if os.geteuid() == 0:  # initdb and postgres refuse to run as root
        runuser = shutil.which("runuser")
        try:
            shutil.chown(base, user="postgres", group="postgres")
        except (LookupError, PermissionError) as exc:
            shutil.rmtree(base, ignore_errors=True)
            raise _Unavailable("running as root and there is no 'postgres' user") from exc
        if runuser is None:
            shutil.rmtree(base, ignore_errors=True)
            raise _Unavailable("running as root and runuser is missing")
        prefix = [runuser, "-u", "postgres", "--"]
    data, log = base / "data", base / "server.log"

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*prefix, *args], capture_output=True, text=True, check=False)

    init = run(
        str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
        "--no-sync",
    )  # fmt: skip
    if init.returncode != 0:
        shutil.rmtree(base, ignore_errors=True)
        raise _Unavailable(f"initdb failed: {init.stderr.strip()[-500:]}")
    stopped = False

    def stop() -> None:
        nonlocal stopped
        if stopped:
            return
        stopped = True
        run(str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(base, ignore_errors=True)

    for _attempt in range(3):  # another process may take the free port before the server
        port = _free_port()
        opts = (
            f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off"
        )
        started = run(
            str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60",
            "-o", opts, "start",
        )  # fmt: skip
        if started.returncode == 0:
            atexit.register(stop)
            return f"postgresql://postgres@127.0.0.1:{port}/{PG_DATABASE}", stop
    detail = log.read_text(errors="replace")[-500:] if log.exists() else started.stderr
    stop()
    raise _Unavailable(f"pg_ctl start failed: {detail.strip()}")


@pytest.fixture(scope="session")
def postgres_dsn() -> Iterator[str]:
    """DSN of a real, empty-at-start PostgreSQL database for this test session (or worker)."""
    stop: Callable[[], None] | None = None
    try:
        given = os.environ.get("DUCTWORK_TEST_PG_DSN")
        if given:
            parts = urlsplit(given)
            name = (parts.path.lstrip("/") or PG_DATABASE) + _worker_suffix()
            dsn = _create_database(urlunsplit(parts._replace(path=f"/{name}")))
        else:
            dsn, stop = _start_cluster()
            dsn = _create_database(dsn)
    except _Unavailable as exc:
        if stop is not None:
            stop()
        _unavailable(str(exc))
        raise  # unreachable: skip/fail raise
    try:
        yield dsn
    finally:
        if stop is not None:
            stop()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[dict[str, str]]:
    """A real S3 API (``moto_server``, moto[server]) on 127.0.0.1 for this test session.

    Yields the ``DUCTWORK_S3_*`` settings (endpoint, region and throwaway credentials) to put
    in the environment; buckets are the tests' to create. Data lives in the server's memory
    only and goes with it. The server is stopped (by its pid) at the end of the session.
    """
    pytest.importorskip("moto", reason="moto[server] is not installed (pip install 'moto[server]')")
    import sys
    import time
    import urllib.request
    import uuid

    exe = Path(sys.executable).with_name("moto_server")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "moto.server"]
    proc: subprocess.Popen[bytes] | None = None
    try:
        for _attempt in range(3):  # another process may take the free port first
            port = _free_port()
            proc = subprocess.Popen(
                [*cmd, "-H", "127.0.0.1", "-p", str(port)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            deadline = time.monotonic() + 60
            while proc.poll() is None and time.monotonic() < deadline:
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1).close()
                    break
                except OSError:
                    time.sleep(0.1)
            if proc.poll() is None and time.monotonic() < deadline:
                break
            proc.kill()
            proc.wait()
            proc = None
        if proc is None:
            pytest.fail("moto_server did not start on 127.0.0.1", pytrace=False)
        yield {
            "DUCTWORK_S3_ENDPOINT_URL": f"http://127.0.0.1:{port}",
            "DUCTWORK_S3_REGION": "us-east-1",
            "DUCTWORK_S3_KEY": "AKIDTEST" + uuid.uuid4().hex[:12].upper(),
            "DUCTWORK_S3_SECRET": "s3cret-" + uuid.uuid4().hex,
        }
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
