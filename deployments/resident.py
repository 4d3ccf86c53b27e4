"""The embedded default's Prefect server, kept between CLI calls.

Prefect's ephemeral mode starts a server for every process that needs one: 10-13 s of CPU and
~200 MiB before a run can begin (measured, docs/performance.md). Instead the first `regflow`
call without PREFECT_API_URL starts this *resident*: a small watcher process that runs the
same server Prefect would (ephemeral services, no UI) on a free loopback port, with the
database under REGFLOW_HOME, and ends it once no regflow process has used it for
``REGFLOW_EMBEDDED_IDLE_SECONDS`` (0 turns residents off: a throwaway server per call again).

Who uses it: each CLI process holds a shared ``flock`` on ``resident.users`` for its whole life
(the kernel drops it when the process ends, crash or not). The watcher counts the server idle
only while it can take that lock exclusively, so a long replication never loses its server.

Nothing here imports prefect: the CLI calls this before Prefect reads its settings.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import fcntl
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import httpx
from pydantic import BaseModel, ValidationError

from adapters.errors import ConfigError
from deployments.processes import SERVER_STARTUP_SECONDS, SERVER_TUNING, STOP_GRACE_SECONDS

IDLE_ENV = "REGFLOW_EMBEDDED_IDLE_SECONDS"
# A burst of CLI calls (apply, replicate, executions, a cron'd resync every few minutes) reuses
# one server; ten quiet minutes give its memory back.
DEFAULT_IDLE_SECONDS = 600.0
# How often the watcher looks at its users; also the longest a stop request waits.
CHECK_SECONDS = 2.0

_INFO = "resident.json"
_STARTING = "resident.lock"
_USERS = "resident.users"
_held: list[IO[bytes]] = []  # this process's shared lock on the users file, kept for its life


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


def api_url(prefect_home: Path, env: dict[str, str]) -> str | None:
    """The API URL of the resident server under ``prefect_home``, started when none answers;
    None when residents are off. ``env`` is what the server starts with."""
    idle = idle_seconds()
    if idle == 0:
        return None
    prefect_home.mkdir(parents=True, exist_ok=True)
    _use(prefect_home)
    with _exclusive(prefect_home / _STARTING):
        info = read_info(prefect_home)
        if info is not None and _alive(info.pid) and _healthy(info.api_url):
            return info.api_url
        info = _start(prefect_home, env, idle)
        (prefect_home / _INFO).write_text(info.model_dump_json())
        return info.api_url


def read_info(prefect_home: Path) -> ResidentInfo | None:
    try:
        return ResidentInfo.model_validate_json((prefect_home / _INFO).read_text())
    except (OSError, ValidationError):
        return None


def _use(prefect_home: Path) -> None:
    """Mark this process as a user until it ends (and the idle clock as restarted)."""
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


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _start(prefect_home: Path, env: dict[str, str], idle: float) -> ResidentInfo:
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    log = prefect_home / "resident.log"
    with log.open("ab") as out:
        watcher = subprocess.Popen(
            [sys.executable, "-m", "deployments.resident", "--home", str(prefect_home),
             "--port", str(port), "--idle", str(idle)],
            env={**env, **SERVER_TUNING}, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True)  # outlives this CLI process, and Ctrl-C in its terminal
    deadline = time.monotonic() + SERVER_STARTUP_SECONDS
    while time.monotonic() < deadline:
        if watcher.poll() is not None:
            raise RuntimeError(f"the resident Prefect server exited; see {log}")
        if _healthy(url):
            return ResidentInfo(pid=watcher.pid, api_url=url)
        time.sleep(0.2)
    watcher.terminate()  # our child still: wait() reaps it (stop() would wait on a zombie)
    try:
        watcher.wait(timeout=STOP_GRACE_SECONDS + CHECK_SECONDS)
    except subprocess.TimeoutExpired:
        watcher.kill()
        watcher.wait()
    raise RuntimeError(f"the resident Prefect server did not answer within {SERVER_STARTUP_SECONDS:.0f} s")


def stop(info: ResidentInfo) -> bool:
    """End a watcher and its server (for the demo and benchmarks, which started theirs) and wait
    for it; False if it was still there after the server's grace time."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(info.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_SECONDS + CHECK_SECONDS
    while _alive(info.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not _alive(info.pid)


# -- the watcher process ----------------------------------------------------------------------

def _serve(prefect_home: Path, port: int, idle: float) -> int:
    stopping: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda signum, _frame: stopping.append(signum))
    # The same server Prefect's ephemeral mode would start, on our port, for as long as needed.
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--factory", "prefect.server.api.server:create_app",
         "--host", "127.0.0.1", "--port", str(port), "--log-level", "error", "--lifespan", "on"],
        env={**os.environ, "PREFECT_HOME": str(prefect_home), "PREFECT_UI_ENABLED": "0",
             "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
             "DO_NOT_TRACK": "1"})
    users = prefect_home / _USERS
    try:
        with users.open("ab") as handle:
            while not stopping and server.poll() is None:
                time.sleep(CHECK_SECONDS)
                if _idle(handle, users, idle):
                    break
    finally:
        with contextlib.suppress(OSError):
            info = read_info(prefect_home)
            if info is not None and info.pid == os.getpid():
                (prefect_home / _INFO).unlink()
        server.terminate()
        try:
            server.wait(timeout=STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    return 0


def _idle(handle: IO[bytes], users: Path, idle: float) -> bool:
    """No process holds the users lock and none took it for ``idle`` seconds. A user starting
    meanwhile waits on the exclusive lock, then finds resident.json gone and starts anew."""
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    quiet = time.time() - users.stat().st_mtime >= idle
    if not quiet:
        fcntl.flock(handle, fcntl.LOCK_UN)
    return quiet  # when quiet, the lock stays held until this process exits


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--idle", type=float, required=True)
    args = parser.parse_args(argv)
    return _serve(args.home, args.port, args.idle)


if __name__ == "__main__":
    sys.exit(main())
