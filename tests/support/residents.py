"""Resident Prefect servers (flows/prefect_server.py) that a test's `regflow` calls started.

They outlive the CLI call that started them, by design; a test suite must not leave one per
test running for ten idle minutes. After each test the ones whose home lies under pytest's base
temporary directory (so: started by this session's tests) are asked to stop, by their PID, and
waited for.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from flows.prefect_server import CHECK_SECONDS, STOP_GRACE_SECONDS

_WATCHER = "flows.prefect_server"
STOP_WAIT_SECONDS = STOP_GRACE_SECONDS + 2 * CHECK_SECONDS + 5


def watchers_under(base: Path) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue  # ended meanwhile
        if _WATCHER not in args or "--home" not in args:
            continue
        home = Path(args[args.index("--home") + 1])
        if home.is_relative_to(base):
            found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def stop_watchers_under(base: Path) -> list[int]:
    pids = watchers_under(base)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + STOP_WAIT_SECONDS
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    return pids
