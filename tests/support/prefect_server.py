"""A real Prefect server for tests, on a free loopback port, with its own PREFECT_HOME."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from prefect.client.orchestration import PrefectClient

from flows.embedded import SERVER_TUNING
from tests.support.registry import free_port

STARTUP_SECONDS = 90.0


class PrefectServer:
    def __init__(self) -> None:
        self.home = Path(tempfile.mkdtemp(prefix="regflow-prefect-"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.api_url = f"{self.url}/api"
        self.log_path = self.home / "server.log"
        self._proc: subprocess.Popen[bytes] | None = None

    def env(self) -> dict[str, str]:
        """Environment for a client process of this server."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env.update(PREFECT_API_URL=self.api_url, PREFECT_HOME=str(self.home / "client"))
        return env

    def client(self) -> PrefectClient:
        """A client of this server, whatever the test process's own Prefect settings say."""
        return PrefectClient(api=self.api_url)

    def start(self) -> PrefectServer:
        env = self.env()
        del env["PREFECT_API_URL"]
        env.update(SERVER_TUNING, PREFECT_HOME=str(self.home), PREFECT_SERVER_ANALYTICS_ENABLED="false",
                   DO_NOT_TRACK="1")
        with self.log_path.open("wb") as log:
            # A session of its own: the server's workers are ours to end with it.
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                 "--port", str(self.port)], env=env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        deadline = time.monotonic() + STARTUP_SECONDS
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"prefect server exited: {self.log_path.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.api_url}/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"prefect server not healthy after {STARTUP_SECONDS}s")

    def stop(self) -> None:
        if self._proc is None:
            return
        if self._proc.poll() is None:
            os.killpg(self._proc.pid, signal.SIGTERM)
            try:
                self._proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self._proc.pid, signal.SIGKILL)
                self._proc.wait()
        self._proc = None

    def __enter__(self) -> PrefectServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
