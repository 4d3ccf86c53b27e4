"""prefect.yaml deploys the replicate flow to regflow's process work pool on a real server."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from flows.spread import WORK_POOL

pytestmark = [pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[2]


async def test_prefect_deploy_registers_the_replicate_flow(prefect_server):
    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    assert spec["deployments"][0]["work_pool"]["name"] == WORK_POOL

    async with prefect_server.client() as client:
        from prefect.client.schemas.actions import WorkPoolCreate
        from prefect.exceptions import ObjectAlreadyExists
        try:
            await client.create_work_pool(WorkPoolCreate(name=WORK_POOL, type="process"))
        except ObjectAlreadyExists:
            pass
    env = prefect_server.env() | {"REGFLOW_CHECKOUT": str(ROOT)}
    result = subprocess.run([sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]

    async with prefect_server.client() as client:
        deployment = await client.read_deployment_by_name("replicate/replicate")
    assert deployment.entrypoint == "flows/replicate.py:replicate"
    assert deployment.work_pool_name == WORK_POOL
    # Prefect fills {{ $REGFLOW_CHECKOUT }} in at deploy time: workers need the checkout there.
    assert deployment.pull_steps == [{"prefect.deployments.steps.set_working_directory": {
        "directory": str(ROOT)}}]
    assert "policy" in deployment.parameter_openapi_schema["required"]
