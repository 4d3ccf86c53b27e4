"""The Harbor API's real Prefect boundary (deployments/harbor_api/runs.py ``PrefectRuns``): one
real execution (``regflow replicate`` against real registries and the test Prefect server) read
back through the API in process, as a Harbor client reads it. Starting runs needs serve's
deployments and is covered with the fake boundary in tests/unit/test_harbor_api.py."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from prefect.settings import PREFECT_API_URL, temporary_settings
from pydantic import SecretStr
from starlette.applications import Starlette

from deployments.harbor_api import API_PREFIX, create_harbor_api
from deployments.harbor_api.runs import PrefectRuns
from policies.store import Store
from tests.support.corpus import ImageKind
from tests.support.prefect_server import PrefectServer

pytestmark = pytest.mark.integration

PASSWORD = "runs-Pa55word"
# The Prefect server is the session's: other tests' runs of a policy named "all" are on it too,
# and the API lists runs by policy name. A name of this test's own keeps its history to itself.
POLICY = "harbor-api-real-runs"
CONFIG = """\
version: 1
registries:
  - {{name: src, type: docker-registry, url: "{src}"}}
  - {{name: dst, type: docker-registry, url: "{dst}"}}
policies:
  - {{name: {policy}, src_registry: src, dest_registry: dst, filters: [{{type: name, value: "app/**"}}]}}
"""


def regflow(server: PrefectServer, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "regflow_cli.main", *args], text=True, capture_output=True,
                          env=server.env() | {"REGFLOW_HOME": str(home)}, timeout=300)


async def test_a_real_execution_reads_back_in_harbors_shape(prefect_server: PrefectServer, make_registry: Any,
                                                            make_corpus: Any, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    src, dst = make_registry("anonymous"), make_registry("anonymous")
    make_corpus(src).push("app/a", ["1"], ImageKind.DOCKER)
    home = tmp_path / "home"
    config = tmp_path / "c.yaml"
    config.write_text(CONFIG.format(src=src.url, dst=dst.url, policy=POLICY))
    applied = regflow(prefect_server, home, "apply", "-f", str(config))
    assert applied.returncode == 0, applied.stderr
    ran = regflow(prefect_server, home, "replicate", POLICY, "--json")
    assert ran.returncode == 0, ran.stderr
    flow_run_id = json.loads(ran.stdout)["flow_run_id"]

    monkeypatch.setenv("REGFLOW_HOME", str(home))
    auth = {"Authorization": "Basic " + base64.b64encode(f"admin:{PASSWORD}".encode()).decode()}
    with temporary_settings(updates={PREFECT_API_URL: prefect_server.api_url}), Store() as store:
        app = Starlette(routes=[create_harbor_api(store, SecretStr(PASSWORD), runs=PrefectRuns())])
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), headers=auth,
                                     base_url="http://regflow" + API_PREFIX) as api:
            listed = (await api.get("/replication/executions", params={"policy_id": 1})).json()
            assert [(e["id"], e["policy_id"], e["status"], e["trigger"], e["total"], e["succeed"])
                    for e in listed] == [(1, 1, "Succeeded", "manual", 1, 1)]
            assert store.run_key(1) == flow_run_id
            tasks = (await api.get("/replication/executions/1/tasks")).json()
            assert [(t["src_resource"], t["dst_resource"], t["status"]) for t in tasks] == [
                ("app/a", "app/a", "Success")]
            log = await api.get(f"/replication/executions/1/tasks/{tasks[0]['id']}/log")
            assert log.status_code == 200 and "app/a" in log.text, log.text
            # Stopping an execution that has ended changes nothing, as in Harbor.
            assert (await api.put("/replication/executions/1")).status_code == 200
            assert (await api.get("/replication/executions/1")).json()["status"] == "Succeeded"
