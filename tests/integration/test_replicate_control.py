"""Stopping an execution mid-blob, refusing an overlapping one, and the artifacts a run leaves,
against a real Prefect server (the way `regflow serve` users run)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
    FlowRunFilterTags,
)
from prefect.client.schemas.objects import StateType
from prefect.states import Cancelling

from flows.history import wait_recorded
from flows.runtime import TASK_RUNS_TAG
from tests.support.corpus import ImageKind
from tests.support.endpoints import client_for
from tests.support.prefect_server import PrefectServer

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CONFIG = """\
version: 1
registries:
  - {{name: src, type: docker-registry, url: "{src}"}}
  - {{name: dst, type: docker-registry, url: "{dst}"}}
policies:
  - name: slow
    src_registry: src
    dest_registry: dst
    filters: [{{type: name, value: big/app}}]
    speed: 8000
    single_active_replication: true
  - name: fast
    src_registry: src
    dest_registry: dst
    dest_namespace: fast
    filters: [{{type: name, value: "small/**"}}]
"""
LAYER = 24 * 1024 * 1024  # 24 s at the policy's 1 MB/s: long enough to stop mid-blob


def regflow(server: PrefectServer, home: Path, *args: str) -> subprocess.Popen[str]:
    env = server.env() | {"REGFLOW_HOME": str(home)}
    return subprocess.Popen([sys.executable, "-m", "regflow_cli.main", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


async def running_run(server: PrefectServer, policy: str) -> str:
    deadline = time.monotonic() + 90
    async with server.client() as client:
        while time.monotonic() < deadline:
            runs = await client.read_flow_runs(flow_run_filter=FlowRunFilter(
                tags=FlowRunFilterTags(all_=[f"policy:{policy}"]),
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.RUNNING]))))
            if runs:
                return str(runs[0].id)
            await asyncio.sleep(0.2)
    raise AssertionError(f"no running execution of {policy}")


async def test_stop_mid_blob_refuse_overlap_and_artifacts(prefect_server, make_registry, make_corpus,
                                                          tmp_path):
    src, dst = make_registry("anonymous"), make_registry("anonymous")
    corpus = make_corpus(src)
    corpus.push("big/app", ["1"], ImageKind.OCI, layer_sizes=[LAYER])
    corpus.push("small/a", ["1"], ImageKind.DOCKER)
    corpus.push("small/b", ["1", "2"], ImageKind.OCI_INDEX)
    config = tmp_path / "c.yaml"
    config.write_text(CONFIG.format(src=src.url, dst=dst.url))
    home = tmp_path / "home"
    applied = regflow(prefect_server, home, "apply", "-f", str(config))
    assert applied.wait(60) == 0, applied.stderr.read() if applied.stderr else ""

    slow = regflow(prefect_server, home, "replicate", "slow", "--json")
    run_id = await running_run(prefect_server, "slow")
    await asyncio.sleep(3)  # well into the 24 MiB blob

    overlapping = regflow(prefect_server, home, "replicate", "slow", "--json")
    out, _ = overlapping.communicate(timeout=120)
    assert overlapping.returncode == 1
    refused = json.loads(out)
    assert refused["status"] == "Failed"
    assert "single_active_replication" in refused["message"] and run_id in refused["message"]

    async with prefect_server.client() as client:
        await client.set_flow_run_state(run_id, Cancelling(), force=True)
    asked = time.monotonic()
    out, err = slow.communicate(timeout=60)
    stopped_after = time.monotonic() - asked
    assert stopped_after < 5, f"took {stopped_after:.1f}s to stop"
    assert slow.returncode == 1, err
    execution = json.loads(out)
    assert execution["status"] == "Stopped"
    assert execution["tasks"][0]["tags"][0]["status"] == "stopped"
    async with client_for(dst) as target:
        assert await target.head_manifest("big/app", "1") is None
    async with prefect_server.client() as client:
        assert (await client.read_flow_run(run_id)).state.type == StateType.CANCELLED

    fast = regflow(prefect_server, home, "replicate", "fast", "--json")
    out, err = fast.communicate(timeout=120)
    assert fast.returncode == 0, err
    done = json.loads(out)
    async with prefect_server.client() as client:
        run = await client.read_flow_run(done["flow_run_id"])
        assert f"{TASK_RUNS_TAG}2" in run.tags  # what readers wait to see recorded
        assert await wait_recorded(done["flow_run_id"], 2, client)
        artifacts = await client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[done["flow_run_id"]])))
        task_runs = await client.read_task_runs(flow_run_filter=FlowRunFilter(
            id={"any_": [done["flow_run_id"]]}))
    by_type = {a.type: a for a in artifacts}
    assert set(by_type) >= {"table", "progress", "markdown"}
    # The task table, by its key: the run also leaves other tables (per-tag results, traffic).
    rows = next(a for a in artifacts if a.key == "replication-fast").data
    rows = json.loads(rows) if isinstance(rows, str) else rows
    assert sorted(r["repository"] for r in rows) == ["small/a", "small/b"]
    assert {r["target"] for r in rows} == {"fast/a", "fast/b"}  # replace_count -1 flattens
    assert all(r["status"] == "Succeeded" and r["copied"] >= 1 for r in rows)
    assert float(by_type["progress"].data) == 100.0
    assert sorted(t.name for t in task_runs) == ["small/a", "small/b"]
    # By name: the session's server holds the limits of every test's registries, more than
    # one page of read_global_concurrency_limits.
    async with prefect_server.client() as client:
        for registry in (src, dst):
            limit = await client.read_global_concurrency_limit_by_name(f"registry-127.0.0.1-{registry.port}")
            assert limit.limit == 8
