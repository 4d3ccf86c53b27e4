"""The Prefect processes `regflow serve` supervises: a local Prefect server (when no
PREFECT_API_URL is given) and a process worker for regflow's work pool.

Each runs in a process group of its own, which we started and which we end, by its PID.
Nothing here imports prefect: the server must be up before prefect's settings are read.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

# A fresh Prefect database takes 12-17 s to migrate on the reference machine.
SERVER_STARTUP_SECONDS = 120.0
STOP_GRACE_SECONDS = 20.0
DEFAULT_SERVER_PORT = 4200

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
            self.proc = subprocess.Popen(self.argv, env=self.process_env, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None

    def tail(self, n: int = 2000) -> str:
        return self.log_path.read_text(errors="replace")[-n:] if self.log_path.exists() else ""


class LocalPrefectServer(Supervised):
    """`prefect server start` on loopback with its SQLite database under ``home``."""

    def __init__(self, home: Path, port: int = DEFAULT_SERVER_PORT) -> None:
        self.home = home
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.api_url = f"{self.url}/api"
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        # `--port` moves only the listener: the UI would still call the API on the default
        # 127.0.0.1:4200 unless told where it is.
        env.update(SERVER_TUNING, PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false",
                   PREFECT_UI_API_URL=self.api_url, DO_NOT_TRACK="1")
        super().__init__([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                          "--port", str(port)], env, home / "server.log")

    def start(self) -> None:
        super().start()
        deadline = time.monotonic() + SERVER_STARTUP_SECONDS
        while time.monotonic() < deadline:
            if not self.alive:
                raise RuntimeError(f"prefect server exited:\n{self.tail()}")
            if self.healthy():
                return
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"prefect server not healthy after {SERVER_STARTUP_SECONDS:.0f} s")

    def healthy(self) -> bool:
        try:
            return httpx.get(f"{self.api_url}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False


class Worker(Supervised):
    """`prefect worker start` for regflow's process work pool."""

    def __init__(self, pool: str, env: dict[str, str], log_path: Path) -> None:
        super().__init__([sys.executable, "-m", "prefect", "worker", "start", "--pool", pool,
                          "--type", "process"], env, log_path)
