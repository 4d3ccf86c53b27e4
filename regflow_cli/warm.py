"""A warm regflow process that runs repeated ``regflow replicate`` calls.

A no-change resync spends more CPU importing Prefect (~1.2 s) than checking the registries
(measured, docs/performance.md). The first ``regflow replicate`` therefore starts a *warm*
process: it imports Prefect and the replication code once, then waits on a Unix socket. Each
later call hands it its argv, environment, working directory and its stdin/stdout/stderr
(SCM_RIGHTS); the warm process forks, and the fork runs the ordinary CLI on the caller's own
terminal or pipes. The caller waits, forwards SIGINT/SIGTERM/SIGHUP to the fork and exits with
its exit code, so the call behaves like an in-process one: same output, exit codes, Ctrl-C.

Who may connect: only the user the warm process runs as (SO_PEERCRED, checked on both ends, so
neither a command nor its environment ever reaches another user's process). Which calls use
it: only one with the same Python, the same regflow code (file sizes and mtimes) and the same
environment, apart from the variables in ``IGNORED_ENV``; anything else gets a warm process
of its own. A fork starts from a process that holds no threads, sockets or event loops.

``REGFLOW_WARM_IDLE_SECONDS`` (default 600) ends a warm process unused for that long; 0 runs
every call in its own process as before. This module imports only the standard library: the
caller's side must stay cheap.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterator
from pathlib import Path

IDLE_ENV = "REGFLOW_WARM_IDLE_SECONDS"
# The same as the resident Prefect server's: a cron'd resync every few minutes stays warm,
# ten quiet minutes give the memory back (~130 MiB with Prefect imported).
DEFAULT_IDLE_SECONDS = 600.0
# Commands that go through the warm process: the one users repeat (cron, CI) and whose cost
# is mostly Prefect's import. Everything else imports little and runs in its own process.
WARM_COMMANDS = frozenset({"replicate"})
# Variables that differ between two shells of one user without changing what regflow does.
IGNORED_ENV = frozenset({"PWD", "OLDPWD", "SHLVL", "_", "COLUMNS", "LINES", "TERM", "COLORTERM",
                         "TERM_PROGRAM", "TERM_PROGRAM_VERSION", "SSH_TTY", "SSH_CLIENT",
                         "SSH_CONNECTION", "WINDOWID", "TMUX_PANE", "STY"})
# A warm process imports Prefect (~2 s on the 2-core reference machine, more when busy);
# past this the call runs in its own process instead.
START_SECONDS = 30.0
# A stopped warm process waits for the calls it runs; stop() waits this long for it.
STOP_SECONDS = 30.0
_PACKAGES = ("adapters", "tasks", "flows", "policies", "deployments", "regflow_cli")
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
HEADER = struct.Struct("!I")
_CRED = struct.Struct("3i")  # pid, uid, gid of SO_PEERCRED


class Unavailable(Exception):
    """No warm process could take the call; it runs in this process instead."""


# -- the caller's side --------------------------------------------------------------------------

def wanted(argv: list[str]) -> bool:
    return len(argv) > 1 and argv[1] in WARM_COMMANDS and idle_seconds() > 0


def idle_seconds() -> float:
    raw = os.environ.get(IDLE_ENV, "").strip()
    try:
        value = float(raw) if raw else DEFAULT_IDLE_SECONDS
    except ValueError:
        value = -1.0
    if not value >= 0:  # also NaN
        print(f"regflow: {IDLE_ENV}={raw!r} is not a number of seconds (0 turns warm "
              "processes off); not using one", file=sys.stderr)
        return 0.0
    return value


def run(argv: list[str]) -> int:
    """Run ``argv`` in the warm process for this environment, starting it when none answers,
    and return the exit code. Raises Unavailable when the call must run in-process."""
    env = dict(os.environ)
    home = _home(env)
    key = fingerprint(env)
    sock = _connect(key)
    if sock is None:
        _start(home, key, env)
        sock = _wait_for(key)
    with sock:
        return _call(sock, argv, env)


def fingerprint(env: dict[str, str]) -> str:
    """Which warm process may run a call from this environment: same interpreter, code and
    settings. Secrets in the environment only enter a hash here."""
    digest = hashlib.sha256()
    digest.update(sys.executable.encode())
    digest.update(str(_stamp(Path(sysconfig.get_paths()["purelib"]))).encode())
    root = Path(__file__).resolve().parent.parent
    for package in _PACKAGES:
        for path in sorted(_sources(root / package)):
            digest.update(f"{path}:{_stamp(path)}".encode())
    kept = sorted((k, v) for k, v in env.items() if k not in IGNORED_ENV)
    digest.update(json.dumps(kept).encode())
    return digest.hexdigest()[:32]


def _sources(directory: Path) -> Iterator[Path]:
    with contextlib.suppress(OSError), os.scandir(directory) as entries:
        for entry in entries:
            if entry.is_dir() and entry.name != "__pycache__":
                yield from _sources(Path(entry.path))
            elif entry.name.endswith(".py"):
                yield Path(entry.path)


def _stamp(path: Path) -> tuple[int, int]:
    try:
        st = path.stat()
    except OSError:
        return (0, 0)
    return (st.st_mtime_ns, st.st_size)


def _home(env: dict[str, str]) -> Path:
    raw = env.get("REGFLOW_HOME")
    home = Path(raw).expanduser() if raw else Path.home() / ".regflow"
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    return home


def address(key: str) -> bytes:
    # Linux abstract namespace: no socket file to go stale and no path-length limit; access
    # is decided by the peer credentials instead of file modes.
    return b"\0regflow-warm-" + key.encode()


def _connect(key: str) -> socket.socket | None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(address(key))
    except OSError:
        sock.close()
        return None
    if peer_uid(sock) != os.getuid():
        sock.close()
        raise Unavailable("the warm process's socket belongs to another user")
    return sock


def peer_uid(sock: socket.socket) -> int:
    _pid, uid, _gid = _CRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CRED.size))
    return int(uid)


def _start(home: Path, key: str, env: dict[str, str]) -> None:
    directory = home / "warm"
    directory.mkdir(mode=0o700, exist_ok=True)
    with (directory / f"{key}.log").open("ab") as log:
        subprocess.Popen(
            [sys.executable, "-m", "regflow_cli.warm_process", "--home", str(home), "--key", key,
             "--idle", str(idle_seconds())],
            env=env, cwd=str(directory), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)  # outlives this call, and Ctrl-C in its terminal


def _wait_for(key: str) -> socket.socket:
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        if (sock := _connect(key)) is not None:
            return sock
        time.sleep(0.05)
    raise Unavailable(f"no warm process answered within {START_SECONDS:.0f} s")


def _call(sock: socket.socket, argv: list[str], env: dict[str, str]) -> int:
    body = json.dumps({"argv": argv, "env": env, "cwd": os.getcwd()}).encode()
    try:
        socket.send_fds(sock, [HEADER.pack(len(body))], [0, 1, 2])
        sock.sendall(body)
        reader = sock.makefile("r", encoding="utf-8")
        started = reader.readline()
    except OSError as exc:
        raise Unavailable(f"the warm process did not take the call: {exc}") from None
    if not started:
        raise Unavailable("the warm process closed the connection before running the call")
    pid = int(json.loads(started)["pid"])
    # From here the call runs: failures are its own, never a reason to run it twice.
    previous = {sig: signal.signal(sig, lambda signum, _f: forward(pid, signum)) for sig in FORWARDED_SIGNALS}
    try:
        while True:
            try:
                line = reader.readline()
                break
            except InterruptedError:
                continue
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if not line:
        print("regflow: lost the warm process running this call", file=sys.stderr)
        return 1
    return int(json.loads(line)["exit"])


def forward(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def stop(home: Path) -> list[int]:
    """End the warm processes under ``home`` (for the demo, benchmarks and tests, which started
    them) and wait for them; returns their PIDs."""
    pids = []
    for info in (home / "warm").glob("*.json"):
        with contextlib.suppress(OSError, ValueError, KeyError):
            pid = int(json.loads(info.read_text())["pid"])
            if _is_warm_process(pid, home):
                os.kill(pid, signal.SIGTERM)
                pids.append(pid)
    deadline = time.monotonic() + STOP_SECONDS
    while any(running(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return pids


def running(pid: int) -> bool:
    """The process exists and has not ended (an ended one may wait a moment to be reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2:][:1] not in ("Z", "X")


def _is_warm_process(pid: int, home: Path) -> bool:
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"regflow_cli.warm_process" in args and str(home).encode() in args
