"""A real Prefect server for tests: the same one regflow starts (flows/prefect_server.py), on a
free port. It runs without an auth string, as a user's own server may: tests that need auth
start regflow's own server (test_resident.py, test_ui.py)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from prefect.client.orchestration import PrefectClient

from flows.prefect_server import LocalPrefectServer
from tests.support.registry import free_port


class PrefectServer(LocalPrefectServer):
    def __init__(self) -> None:
        super().__init__(Path(tempfile.mkdtemp(prefix="regflow-prefect-")), free_port())
        # Expired concurrency leases (a killed run's registry slot) are freed ~1 s after their
        # 60 s floor instead of up to 15 s later: the zombie test waits for exactly that.
        self.process_env.setdefault("PREFECT_SERVER_SERVICES_REPOSSESSOR_LOOP_SECONDS", "1")

    def env(self) -> dict[str, str]:
        """Environment for a client process of this server."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env.update(PREFECT_API_URL=self.api_url, PREFECT_HOME=str(self.home / "client"))
        return env

    def client(self) -> PrefectClient:
        """A client of this server, whatever the test process's own Prefect settings say."""
        return PrefectClient(api=self.api_url)

    def __enter__(self) -> PrefectServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
