"""The local Prefect server regflow runs when no PREFECT_API_URL is given: one per REGFLOW_HOME,
shared by every CLI call and by `regflow serve`, its SQLite database in ``$REGFLOW_HOME/prefect``.

Prefect's ephemeral mode starts a server for every process that needs one: 10-13 s of CPU and
~200 MiB before a run can begin (measured, docs/performance.md). Instead the first caller starts
a *resident*: a small watcher process that runs ``prefect server start`` (UI included) on
loopback and ends it once no regflow process has used it for its idle time
(``REGFLOW_EMBEDDED_IDLE_SECONDS``, default 600; a server `regflow serve` started leaves as
soon as serve and the calls using it have ended).

Who uses it: each user process (a CLI call, serve) holds a shared ``flock`` on ``resident.users``
for its whole life (the kernel drops it when the process ends, crash or not). The watcher stops
only while it holds that lock exclusively, and it removes ``resident.json`` and stops the server
before it lets go: a user arriving then waits, finds no resident, and starts a new one.
``resident.json`` is written and removed only under ``resident.lock``.

Every server started here requires Prefect's basic auth (``PREFECT_SERVER_API_AUTH_STRING``):
the string is generated once into ``api-auth`` (0600) and handed to clients as
``PREFECT_API_AUTH_STRING``. Nothing here imports prefect: callers run this before Prefect
reads its settings.
"""

from __future__ import annotations

import argparse
import atexit
import base64
import contextlib
import fcntl
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO

import httpx
from pydantic import BaseModel, ValidationError

from adapters.errors import ConfigError

# A fresh Prefect database takes 12-17 s to migrate on the reference machine; a busy one more.
SERVER_STARTUP_SECONDS = 120.0
STOP_GRACE_SECONDS = 20.0
DEFAULT_SERVER_PORT = 4200
# One health probe; a server that takes longer to answer is counted as not up (yet).
PROBE_SECONDS = 2.0
# A running resident that does not answer (a busy machine) is given this long before a second
# server is started beside it on the same database.
REUSE_PATIENCE_SECONDS = 30.0

# The task-run recorder's defaults cost the server ~40 ms CPU per task run on the reference
# machine; these batch sizes brought it to ~10 ms (measured, see DESIGN.md). A batch that does
# not fill waits for the flush interval (5 s by default), and `regflow replicate` waits for its
# task runs to be recorded before it returns: 4 of a small full copy's 10 s went there
# (measured). One second keeps the batching and most of that time; Prefect truncates the
# interval to whole seconds, and 0 makes both services spin (a core each, measured).
SERVER_TUNING = {
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE": "200",
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_READ_BATCH_SIZE": "100",
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_FLUSH_INTERVAL": "1",
    "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_BATCH_SIZE": "200",
    "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_READ_BATCH_SIZE": "100",
    "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_FLUSH_INTERVAL": "1",
}

AUTH_FILE = "api-auth"
# Prefect's basic auth compares "user:password" as one string; the UI's login field takes it so.
AUTH_USER = "regflow"
# Variables that carry the auth string to a Prefect server and to its clients.
SERVER_AUTH_ENV = "PREFECT_SERVER_API_AUTH_STRING"
CLIENT_AUTH_ENV = "PREFECT_API_AUTH_STRING"

IDLE_ENV = "REGFLOW_EMBEDDED_IDLE_SECONDS"
# A burst of CLI calls (apply, replicate, executions, a cron'd resync every few minutes) reuses
# one server; ten quiet minutes give its memory back.
DEFAULT_IDLE_SECONDS = 600.0
# How often the watcher looks at its users and its server; also the longest a stop request waits.
CHECK_SECONDS = 2.0

_INFO = "resident.json"
_STARTING = "resident.lock"
_USERS = "resident.users"
_LOG = "resident.log"
_held: list[IO[bytes]] = []  # this process's shared lock on the users file, kept for its life


# -- files private to the user ----------------------------------------------------------------

def private_dir(path: Path) -> Path:
    """``path``, created if needed, readable by its owner only: it holds the database and the
    auth string."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


def auth_string(prefect_home: Path) -> str:
    """The auth string of the servers under ``prefect_home``, generated on first use (0600)."""
    path = private_dir(prefect_home) / AUTH_FILE
    with contextlib.suppress(FileNotFoundError):
        return path.read_text().strip()
    candidate = prefect_home / f".{AUTH_FILE}.{os.getpid()}.{secrets.token_hex(4)}"
    fd = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(f"{AUTH_USER}:{secrets.token_urlsafe(32)}\n")
    try:
        os.link(candidate, path)  # when two processes race, the first string wins for both
    except FileExistsError:
        pass
    finally:
        candidate.unlink()
    return path.read_text().strip()


def client_environment(api_url: str, auth: str | None) -> dict[str, str]:
    """What a Prefect client process (the CLI, a worker, a flow run) needs to reach the server."""
    env = {"PREFECT_API_URL": api_url}
    if auth:
        env[CLIENT_AUTH_ENV] = auth
    return env


def basic_authorization(auth: str) -> str:
    """The Authorization header Prefect's clients send for an auth string."""
    return "Basic " + base64.b64encode(auth.encode()).decode()


def healthy(api_url: str, auth: str | None = None) -> bool:
    """The server answers an authenticated request (its /health answers anyone)."""
    headers = {"Authorization": basic_authorization(auth)} if auth else {}
    try:
        answer = httpx.get(f"{api_url}/admin/version", headers=headers, timeout=PROBE_SECONDS)
        return answer.status_code == 200
    except httpx.HTTPError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# -- one Prefect server process ----------------------------------------------------------------

class Supervised:
    """A child process in its own session; ``stop`` ends exactly that group."""

    def __init__(self, argv: list[str], env: dict[str, str], log_path: Path) -> None:
        self.argv = argv
        self.process_env = env
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(self.argv, env=self.process_env, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                         umask=0o077)  # its files (prefect.db) are the user's alone

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None

    def tail(self, n: int = 2000) -> str:
        return self.log_path.read_text(errors="replace")[-n:] if self.log_path.exists() else ""


class LocalPrefectServer(Supervised):
    """``prefect server start`` (API, services and UI) on loopback, its database under ``home``.
    With ``auth``, every API request but /health needs it (the UI asks for it at login)."""

    def __init__(self, home: Path, port: int = DEFAULT_SERVER_PORT, *, auth: str | None = None,
                 log_path: Path | None = None, base_env: Mapping[str, str] | None = None) -> None:
        self.home = private_dir(home)
        self.port = port
        self.auth = auth
        self.url = f"http://127.0.0.1:{port}"
        self.api_url = f"{self.url}/api"
        base = os.environ if base_env is None else base_env
        # The user's server settings (tuning, a database URL) apply; client settings do not.
        env = {k: v for k, v in base.items()
               if not k.startswith("PREFECT_") or k.startswith("PREFECT_SERVER_")}
        for key, value in SERVER_TUNING.items():
            env.setdefault(key, value)
        env.pop(SERVER_AUTH_ENV, None)
        if auth:
            env[SERVER_AUTH_ENV] = auth
        # `--port` moves only the listener: the UI would still call the API on the default
        # 127.0.0.1:4200 unless told where it is.
        env.update(PREFECT_HOME=str(self.home), PREFECT_SERVER_ANALYTICS_ENABLED="false",
                   PREFECT_UI_API_URL=self.api_url, DO_NOT_TRACK="1")
        super().__init__([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                          "--port", str(port)], env, log_path or self.home / "server.log")

    def start(self, wait: bool = True) -> None:
        """Start the server and (``wait``) until it answers; the error names its log otherwise."""
        with contextlib.suppress(FileNotFoundError):
            (self.home / "prefect.db").chmod(0o600)  # one created before databases were private
        super().start()
        if not wait:
            return
        deadline = time.monotonic() + SERVER_STARTUP_SECONDS
        while time.monotonic() < deadline:
            if not self.alive:
                raise RuntimeError(f"the Prefect server on port {self.port} exited:\n{self.tail()}")
            if self.healthy():
                return
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"the Prefect server on port {self.port} did not answer within "
                           f"{SERVER_STARTUP_SECONDS:.0f} s; see {self.log_path}")

    def healthy(self) -> bool:
        return healthy(self.api_url, self.auth)


# -- the resident: one shared server per REGFLOW_HOME ------------------------------------------

class ResidentInfo(BaseModel):
    pid: int  # the watcher; it ends the server it started
    api_url: str


def idle_seconds() -> float:
    raw = os.environ.get(IDLE_ENV, "")
    if not raw.strip():
        return DEFAULT_IDLE_SECONDS
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{IDLE_ENV}={raw!r} is not a number of seconds (0 turns the resident "
                          "Prefect server off)") from None
    if value < 0 or value != value:
        raise ConfigError(f"{IDLE_ENV} must be 0 or more seconds, got {raw!r}")
    return value


def resident_url(prefect_home: Path, env: Mapping[str, str], *, start: bool = True,
                 port: int | None = None, idle: float | None = None) -> str | None:
    """The API URL of the resident server under ``prefect_home``, which this process then uses
    for its whole life. None when there is none and ``start`` is False. A new one listens on
    ``port`` (default: a free one) and leaves after ``idle`` seconds without users (default
    ``idle_seconds()``; 0: as soon as the last user ends). ``env`` is what it starts with."""
    private_dir(prefect_home)
    auth = auth_string(prefect_home)
    _use(prefect_home)
    with _exclusive(prefect_home / _STARTING):
        info = read_info(prefect_home)
        if info is not None and _answers(info, auth):
            return info.api_url
        if not start:
            return None
        if port is not None and not _port_free(port):
            raise RuntimeError(f"port {port} is in use: choose another for the local Prefect server")
        info = _start(prefect_home, env, port or free_port(), idle_seconds() if idle is None else idle)
        staged = prefect_home / f".{_INFO}.{os.getpid()}"
        staged.write_text(info.model_dump_json())
        staged.replace(prefect_home / _INFO)
        return info.api_url


def read_info(prefect_home: Path) -> ResidentInfo | None:
    try:
        return ResidentInfo.model_validate_json((prefect_home / _INFO).read_text())
    except (OSError, ValidationError):
        return None


def stop(info: ResidentInfo) -> bool:
    """End a watcher and its server (for the demo and benchmarks, which started theirs) and wait
    for it; False if it was still there after the server's grace time."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(info.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_SECONDS + CHECK_SECONDS * 2
    while _alive(info.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not _alive(info.pid)


def _use(prefect_home: Path) -> None:
    """Mark this process as a user until it ends (and the idle clock as restarted). Waits while
    a watcher is stopping its server."""
    if _held:
        return
    users = prefect_home / _USERS
    handle = users.open("ab")
    fcntl.flock(handle, fcntl.LOCK_SH)
    os.utime(users)
    # The idle time counts from the last user's end: a two-hour run is followed by ten minutes.
    atexit.register(lambda: os.utime(users))
    _held.append(handle)


@contextlib.contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    with path.open("ab") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _answers(info: ResidentInfo, auth: str) -> bool:
    deadline = time.monotonic() + REUSE_PATIENCE_SECONDS
    while _alive(info.pid):
        if healthy(info.api_url, auth):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)
    return False


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _start(prefect_home: Path, env: Mapping[str, str], port: int, idle: float) -> ResidentInfo:
    url = f"http://127.0.0.1:{port}/api"
    log = prefect_home / _LOG
    with log.open("ab") as out:
        watcher = subprocess.Popen(
            [sys.executable, "-m", "flows.prefect_server", "--home", str(prefect_home),
             "--port", str(port), "--idle", str(idle)],
            env=dict(env), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True)  # outlives this process, and Ctrl-C in its terminal
    auth = auth_string(prefect_home)
    deadline = time.monotonic() + SERVER_STARTUP_SECONDS
    while time.monotonic() < deadline:
        if watcher.poll() is not None:
            tail = log.read_text(errors="replace")[-1500:]
            raise RuntimeError(f"the local Prefect server on port {port} exited (see {log}):\n{tail}")
        if healthy(url, auth):
            return ResidentInfo(pid=watcher.pid, api_url=url)
        time.sleep(0.2)
    watcher.terminate()  # our child still: wait() reaps it (stop() would wait on a zombie)
    try:
        watcher.wait(timeout=STOP_GRACE_SECONDS + CHECK_SECONDS)
    except subprocess.TimeoutExpired:
        watcher.kill()
        watcher.wait()
    raise RuntimeError(f"the local Prefect server did not answer within {SERVER_STARTUP_SECONDS:.0f} s; "
                       f"see {log}")


# -- the watcher process ----------------------------------------------------------------------

def _watch(prefect_home: Path, port: int, idle: float) -> int:
    stopping: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda signum, _frame: stopping.append(signum))
    server = LocalPrefectServer(prefect_home, port, auth=auth_string(prefect_home),
                                log_path=prefect_home / _LOG)
    server.start(wait=False)  # the user that started this watcher waits for its health
    users = prefect_home / _USERS
    with users.open("ab") as handle:
        while not stopping and server.alive:
            time.sleep(CHECK_SECONDS)
            if _idle(handle, users, idle):
                break  # the users lock stays held until the server is gone and its info removed
        with _exclusive(prefect_home / _STARTING):
            info = read_info(prefect_home)
            if info is not None and info.pid == os.getpid():
                (prefect_home / _INFO).unlink()
        server.stop()
    return 0


def _idle(handle: IO[bytes], users: Path, idle: float) -> bool:
    """No process holds the users lock and none took it for ``idle`` seconds. When True, this
    process holds the lock exclusively: a user arriving now waits until the server is gone."""
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    quiet = time.time() - users.stat().st_mtime >= idle
    if not quiet:
        fcntl.flock(handle, fcntl.LOCK_UN)
    return quiet


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="the resident Prefect server's watcher")
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--idle", type=float, required=True)
    args = parser.parse_args(argv)
    return _watch(args.home, args.port, args.idle)


if __name__ == "__main__":
    sys.exit(main())
