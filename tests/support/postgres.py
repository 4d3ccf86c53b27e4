"""A real, throwaway PostgreSQL server for tests and the scale-out bed: ``initdb`` into a temporary
directory, then ``postgres`` in the foreground on a free loopback port, run as an unprivileged
user when the tests run as root (postgres refuses root). Stopped by its own PID.

Needs the PostgreSQL server binaries (Debian package `postgresql`); ``unavailable_reason`` says
when they (or, as root, a user to run them as) are missing, so a fixture can skip with it.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg

# postgres refuses to run as root; these users exist on Debian (the first with the package).
UNPRIVILEGED_USERS = ("postgres", "nobody")
# The superuser initdb creates; trust authentication on loopback, so no password.
SUPERUSER = "regflow"
# initdb and the first start of a fresh cluster on a busy 2-core machine.
START_SECONDS = 60.0
STOP_GRACE_SECONDS = 30.0


class PostgresError(RuntimeError):
    """The throwaway server could not be set up; the message carries its log's tail."""


def bin_dir() -> Path | None:
    """The directory holding ``initdb`` and ``postgres``, if installed."""
    candidates = [shutil.which("initdb"), "/usr/local/bin/initdb",
                  *sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            # Resolved: /usr/local/bin/initdb is often a link into the versioned directory.
            directory = Path(candidate).resolve().parent
            if (directory / "postgres").is_file():
                return directory
    return None


def _user(name: str) -> pwd.struct_passwd | None:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        return None


def server_user() -> pwd.struct_passwd | None:
    """Who the server runs as: None (this process's user) unless this process is root."""
    if os.geteuid() != 0:
        return None
    return next((u for u in map(_user, UNPRIVILEGED_USERS) if u is not None), None)


def unavailable_reason() -> str | None:
    """Why no throwaway server can run here, or None."""
    if bin_dir() is None:
        return ("no PostgreSQL server binaries (initdb, postgres): install the Debian package "
                "`postgresql`")
    if os.geteuid() == 0 and (server_user() is None or shutil.which("setpriv") is None):
        return "running as root needs setpriv (util-linux) and a 'postgres' or 'nobody' user"
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Postgres:
    """One server: ``initdb``, then ``postgres`` in the foreground, run as ``user`` when root."""

    def __init__(self, bin_dir: Path, base: Path, user: pwd.struct_passwd | None) -> None:
        self.bin_dir = bin_dir
        self.base = base
        self.data = base / "data"
        self.log = base / "postgres.log"
        self.user = user
        self.port = _free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def _command(self, *args: str) -> list[str]:
        if self.user is None:
            return list(args)
        # setpriv execs in place (runuser forks), so the PID we hold is the server's own.
        return ["setpriv", f"--reuid={self.user.pw_uid}", f"--regid={self.user.pw_gid}", "--clear-groups",
                "--", *args]

    def start(self) -> None:
        env = {**os.environ, "LC_ALL": "C", "LANG": "C"}
        init = subprocess.run(
            self._command(str(self.bin_dir / "initdb"), "-D", str(self.data), "-U", SUPERUSER,
                          "-A", "trust", "-E", "UTF8", "--no-instructions"),
            capture_output=True, env=env, cwd=self.base, check=False, timeout=120,
        )
        if init.returncode != 0:
            raise PostgresError(f"initdb failed: {init.stdout.decode()}{init.stderr.decode()}")
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                self._command(str(self.bin_dir / "postgres"), "-D", str(self.data), "-k", str(self.base),
                              "-p", str(self.port), "-h", "127.0.0.1", "-F"),
                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.base,
            )
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise PostgresError(f"postgres exited early:\n{self.log.read_text()[-3000:]}")
            try:
                self.connect().close()
                return
            except psycopg.OperationalError:
                time.sleep(0.1)
        raise PostgresError(f"postgres did not accept connections:\n{self.log.read_text()[-3000:]}")

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def connect(self, database: str = "postgres") -> psycopg.Connection[Any]:
        return psycopg.connect(host="127.0.0.1", port=self.port, user=SUPERUSER, dbname=database)

    def url(self, scheme: str = "postgresql+psycopg", database: str = "postgres") -> str:
        return f"{scheme}://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> None:
        with psycopg.connect(host="127.0.0.1", port=self.port, user=SUPERUSER, dbname="postgres",
                             autocommit=True) as conn:  # CREATE DATABASE refuses a transaction
            conn.execute(f'CREATE DATABASE "{name}"')

    def query(self, sql: str, database: str = "postgres") -> list[tuple[Any, ...]]:
        with self.connect(database) as conn:
            return conn.execute(sql).fetchall()

    def drop_tables(self) -> None:
        with self.connect() as conn:
            conn.execute("DROP TABLE IF EXISTS registries, policies, upload_sessions, api_ids, api_run_ids")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.kill(self.process.pid, signal.SIGINT)  # "fast" shutdown: disconnects clients
        try:
            self.process.wait(timeout=STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)


@contextlib.contextmanager
def throwaway_postgres(scratch: Path) -> Iterator[Postgres]:
    """A started server, stopped (by its PID) at the end. Its files go under ``scratch`` unless
    it runs as another user (root): then into a fresh directory of that user's, removed at the
    end (``scratch`` may be private to root, so the server's user could not reach it).
    Raises PostgresError when it cannot run here (``unavailable_reason``) or does not start."""
    reason = unavailable_reason()
    if reason is not None:
        raise PostgresError(reason)
    binaries = bin_dir()
    assert binaries is not None
    user = server_user()
    if user is not None:
        base = Path(tempfile.mkdtemp(prefix="regflow-pg-"))
        os.chown(base, user.pw_uid, user.pw_gid)
    else:
        scratch.mkdir(parents=True, exist_ok=True)
        base = Path(tempfile.mkdtemp(prefix="pg-", dir=scratch))
    server = Postgres(binaries, base, user)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        if user is not None:
            shutil.rmtree(base, ignore_errors=True)
