"""A flow process killed with SIGKILL does not leave its execution Running forever."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time

import pytest
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags
from prefect.client.schemas.objects import StateType
from prefect.settings import PREFECT_API_URL, temporary_settings

from deployments.zombies import SILENCE_SECONDS, ensure_zombie_automation, heartbeat_environment
from tests.support.corpus import ImageKind

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CONFIG = """\
version: 1
registries:
  - {{name: src, type: docker-registry, url: "{src}"}}
  - {{name: dst, type: docker-registry, url: "{dst}"}}
policies:
  - name: doomed
    src_registry: src
    dest_registry: dst
    filters: [{{type: name, value: big/app}}]
    speed: {speed}
"""


async def test_killed_execution_is_marked_crashed_and_the_next_run_completes(
        prefect_server, make_registry, make_corpus, tmp_path):
    with temporary_settings(updates={PREFECT_API_URL: prefect_server.api_url}):
        await ensure_zombie_automation()
        await ensure_zombie_automation()  # idempotent
    src, dst = make_registry("anonymous"), make_registry("anonymous")
    pushed = make_corpus(src).push("big/app", ["1"], ImageKind.OCI, layer_sizes=[8 * 1024 * 1024])
    config = tmp_path / "c.yaml"
    env = prefect_server.env() | heartbeat_environment() | {"REGFLOW_HOME": str(tmp_path / "home")}
    cli = [sys.executable, "-m", "regflow_cli.main"]

    config.write_text(CONFIG.format(src=src.url, dst=dst.url, speed=800))  # 100 KB/s: minutes
    subprocess.run([*cli, "apply", "-f", str(config)], env=env, check=True, capture_output=True)
    victim = subprocess.Popen([*cli, "replicate", "doomed", "--json"], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    async with prefect_server.client() as client:
        run = None
        deadline = time.monotonic() + 90
        while run is None and time.monotonic() < deadline:
            runs = await client.read_flow_runs(flow_run_filter=FlowRunFilter(
                tags=FlowRunFilterTags(all_=["policy:doomed"])))
            run = next((r for r in runs if r.state and r.state.type == StateType.RUNNING), None)
            await asyncio.sleep(0.5)
        assert run is not None, "the execution never started"
        await asyncio.sleep(3)  # its first heartbeat is out
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        killed_at = time.monotonic()

        state = None
        while time.monotonic() - killed_at < SILENCE_SECONDS + 90:
            state = (await client.read_flow_run(run.id)).state
            if state is not None and state.type != StateType.RUNNING:
                break
            await asyncio.sleep(2)
        assert state is not None and state.type == StateType.CRASHED, state
        assert "heartbeat" in (state.message or "")

    config.write_text(CONFIG.format(src=src.url, dst=dst.url, speed=-1))
    subprocess.run([*cli, "apply", "-f", str(config)], env=env, check=True, capture_output=True)
    again = subprocess.run([*cli, "replicate", "doomed", "--json"], env=env, capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert json.loads(again.stdout)["status"] == "Succeeded"
    from tests.support.skopeo import inspect_raw_digest
    assert inspect_raw_digest(dst.ref("big/app", "1")) == pushed.digest
