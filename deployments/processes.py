"""The Prefect worker `regflow serve` supervises, for regflow's work pool. (The local Prefect
server it may also need is flows/prefect_server.py's, shared with the CLI.)"""

from __future__ import annotations

import sys
from pathlib import Path

from flows.prefect_server import Supervised


class Worker(Supervised):
    """`prefect worker start` for regflow's process work pool, in a process group of its own
    that serve started and ends, by its PID."""

    def __init__(self, pool: str, env: dict[str, str], log_path: Path, limit: int | None = None) -> None:
        # --limit: runs at once on this machine; without it the worker takes every scheduled run
        # it sees, which keeps a spread execution's parts off the other machines.
        extra = ["--limit", str(limit)] if limit else []
        super().__init__([sys.executable, "-m", "prefect", "worker", "start", "--pool", pool,
                          "--type", "process", *extra], env, log_path)
