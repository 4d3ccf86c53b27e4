"""The Prefect worker `regflow serve` supervises, for regflow's work pool. (The local Prefect
server it may also need is flows/prefect_server.py's, shared with the CLI.)"""

from __future__ import annotations

import sys
from pathlib import Path

from flows.prefect_server import Supervised


class Worker(Supervised):
    """`prefect worker start` for regflow's process work pool, in a process group of its own
    that serve started and ends, by its PID."""

    def __init__(self, pool: str, env: dict[str, str], log_path: Path) -> None:
        super().__init__([sys.executable, "-m", "prefect", "worker", "start", "--pool", pool,
                          "--type", "process"], env, log_path)
