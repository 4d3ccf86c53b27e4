"""Issue 20: regflow as docs/operations.md "Several machines" runs it, for real. PostgreSQL (a
database for Prefect, one for the store), a Prefect server on it with an auth string, three
worker "machines" (tests/support/scale_out.py); a control machine applies the config and the
policy's deployment is run. One execution runs on one machine; a spread one (``spread``) runs
its parts on several, survives the loss of one of them, and stops everywhere when stopped.

Skipped, as the store's PostgreSQL tests are, without the Debian package `postgresql`.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING
from uuid import UUID

import httpx
import pytest
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterParentFlowRunId,
    FlowRunFilterState,
    FlowRunFilterStateType,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.deployments import run_deployment

from flows.control import stop as stop_execution
from flows.history import read_execution, read_logs
from flows.liveness import HEARTBEAT_ENV, SILENCE_ENV
from flows.spread import PART_TAG
from tests.support.corpus import ImageKind
from tests.support.postgres import unavailable_reason
from tests.support.registry import RegistryProcess
from tests.support.scale_out import WORKER_LABEL, ScaleOutBed
from tests.support.skopeo import inspect_raw_digest

if TYPE_CHECKING:
    from tests.conftest import CorpusFactory, RegistryFactory

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# A small execution: worker pickup, the flow run's start-up and a few transfers.
RUN_SECONDS = 90.0

CONFIG = """\
version: 1
registries:
  - {{name: src, type: docker-registry, url: "{src}"}}
  - {{name: dst, type: docker-registry, url: "{dst}"}}
policies:
  - name: {policy}
    src_registry: src
    dest_registry: dst
    trigger: {{type: manual}}
"""


# A lost machine is noticed within seconds, not the default minute (every process of the bed
# gets the same windows: the crash automation is defined from them).
SILENCE = {HEARTBEAT_ENV: "3", SILENCE_ENV: "10"}
# A spread execution that loses a machine: pickup and start of the parts, a silence window, a
# part started again elsewhere, its transfers at the capped speed.
SPREAD_RUN_SECONDS = 180.0
REPOSITORIES = 30
LAYER_BYTES = 150_000
# Kbit/s for the whole policy, a third for each part: past the first MiB (tasks/bandwidth.py
# BURST_BYTES) a part's last ~0.5 MB take ~7 s, so the loss and the stop land in the middle of blobs.
SPEED = 1800
# The acceptance bound: a stop reaches every machine's transfers within this.
STOP_SECONDS = 5.0
# A transfer's closing log line, which names the machine it ran on (flows/transfers.py).
TRANSFER_LINE = re.compile(r" bytes, on (\S+)$")

SPREAD_CONFIG = """\
version: 1
registries:
  - {{name: src, type: docker-registry, url: "{src}"}}
  - {{name: dst, type: docker-registry, url: "{dst}"}}
policies:
  - {{name: {policy}, src_registry: src, dest_registry: dst, dest_namespace: "{namespace}",
     trigger: {{type: manual}}, spread: 3, speed: {speed}}}
"""


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ScaleOutBed]:
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    with ScaleOutBed(tmp_path_factory.mktemp("scale-out"), settings=SILENCE) as started:
        yield started


def regflow(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "regflow_cli.main", *args], env=env, text=True,
                          capture_output=True, timeout=120)


def write_config(path: Path, policy: str, src: RegistryProcess, dst: RegistryProcess) -> Path:
    path.write_text(CONFIG.format(policy=policy, src=src.url, dst=dst.url))
    return path


async def finished(bed: ScaleOutBed, run_id: UUID, seconds: float = RUN_SECONDS) -> FlowRun:
    return await bed.wait_final(run_id, seconds)


async def unfinished_runs(bed: ScaleOutBed) -> list[FlowRun]:
    busy = FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(
        any_=[StateType.PENDING, StateType.RUNNING, StateType.CANCELLING])))
    async with bed.client() as client:
        return await client.read_flow_runs(flow_run_filter=busy)


def test_an_execution_runs_on_one_of_the_machines(bed: ScaleOutBed, make_registry: RegistryFactory,
                                                  make_corpus: CorpusFactory, tmp_path: Path) -> None:
    src, dst = make_registry("anonymous"), make_registry("anonymous")
    corpus = make_corpus(src)
    pushed = {repo: corpus.push(repo, ["1.0"], ImageKind.OCI) for repo in ("team/app", "team/tool")}

    control = bed.client_env(tmp_path / "control")
    applied = regflow(control, "apply", "-f", str(write_config(tmp_path / "regflow.yaml", "smoke", src, dst)))
    assert applied.returncode == 0, applied.stderr
    assert "created   policy smoke" in applied.stdout
    assert bed.postgres is not None
    assert bed.postgres.query("SELECT name FROM policies", "regflow") == [("smoke",)]

    # `regflow apply` writes the store only; `regflow serve` keeps the deployments.
    assert "smoke" in bed.sync_deployments().applied
    with bed.settings():
        started = run_deployment(name="replicate/smoke", timeout=0)
    assert isinstance(started, FlowRun)
    run = asyncio.run(finished(bed, started.id))

    assert run.state_type == StateType.COMPLETED, run.state and run.state.message
    machine = bed.machine_of(run)
    assert machine is not None, run.labels
    assert run.infrastructure_pid and str(run.id) in machine.log.read_text(errors="replace")
    for repo, image in pushed.items():
        assert inspect_raw_digest(dst.ref(repo, "1.0")) == image.digest
    # Prefect's own rows are in PostgreSQL, not in a SQLite file somewhere.
    assert bed.postgres.query(f"SELECT count(*) FROM flow_run WHERE id = '{run.id}'", "prefect") == [(1,)]
    assert asyncio.run(unfinished_runs(bed)) == []
    # Every caller of the server authenticates (the machines and the control machine did).
    assert httpx.get(f"{bed.api_url}/admin/version", timeout=10).status_code == 401


async def parts_of(bed: ScaleOutBed, run_id: UUID) -> list[FlowRun]:
    async with bed.client() as client:
        return await client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[run_id])))


async def running_parts(bed: ScaleOutBed, run_id: UUID, at_least: int,
                        seconds: float = 90.0) -> list[FlowRun]:
    deadline = time.monotonic() + seconds
    while True:
        parts = [p for p in await parts_of(bed, run_id) if p.state_type == StateType.RUNNING]
        if len(parts) >= at_least:
            return parts
        if time.monotonic() > deadline:
            raise AssertionError(f"{len(parts)} part(s) of {run_id} running after {seconds:.0f} s")
        await asyncio.sleep(0.5)


def spread_policy(bed: ScaleOutBed, tmp_path: Path, policy: str, namespace: str, speed: int,
                  src: RegistryProcess, dst: RegistryProcess) -> dict[str, str]:
    control = bed.client_env(tmp_path / "control")
    config = tmp_path / f"{policy}.yaml"
    config.write_text(SPREAD_CONFIG.format(src=src.url, dst=dst.url, policy=policy, namespace=namespace,
                                           speed=speed))
    applied = regflow(control, "apply", "-f", str(config))
    assert applied.returncode == 0, applied.stderr
    assert policy in bed.sync_deployments().applied
    return control


def push_corpus(make_corpus: CorpusFactory, src: RegistryProcess) -> dict[str, str]:
    corpus = make_corpus(src)
    return {f"team/app-{i:02d}": corpus.push(f"team/app-{i:02d}", ["1.0"], ImageKind.OCI,
                                              layer_sizes=[LAYER_BYTES]).digest
            for i in range(REPOSITORIES)}


def stored_bytes(registry: RegistryProcess) -> int:
    # The registry removes upload directories while the walk runs (a finished or cancelled
    # upload): os.walk skips a directory that vanished, and a file that vanished counts nothing.
    total = 0
    for folder, _, names in os.walk(registry.data_dir):
        for name in names:
            try:
                total += os.stat(os.path.join(folder, name)).st_size
            except FileNotFoundError:
                continue
    return total


def test_a_spread_execution_loses_a_machine_and_still_succeeds_byte_exact(
        bed: ScaleOutBed, make_registry: RegistryFactory, make_corpus: CorpusFactory, tmp_path: Path) -> None:
    src, dst = make_registry("anonymous"), make_registry("anonymous")
    pushed = push_corpus(make_corpus, src)
    control = spread_policy(bed, tmp_path, "spread", "mirror", SPEED, src, dst)
    with bed.settings():
        started = run_deployment(name="replicate/spread", timeout=0)
    assert isinstance(started, FlowRun)

    # Lose a machine that runs a part (not the one running the execution itself) mid-blob.
    parts = asyncio.run(running_parts(bed, started.id, at_least=2))
    parent = bed.machine_of(asyncio.run(read_run(bed, started.id)))
    victims = [p for p in parts if bed.machine_of(p) not in (None, parent)]
    assert victims, f"every running part is on the execution's machine {parent}"
    # Once it has finished a transfer (so its machine is on record) and is in the middle of more.
    asyncio.run(first_transfer_done(bed, victims[0].id))
    lost = bed.machine_of(victims[0])
    assert lost is not None
    assert lost.kill()

    run = asyncio.run(finished(bed, started.id, SPREAD_RUN_SECONDS))
    assert run.state_type == StateType.COMPLETED, run.state and run.state.message
    parts = asyncio.run(parts_of(bed, started.id))
    assert {p.state_type for p in parts} == {StateType.COMPLETED}
    again = [p for p in parts if p.id == victims[0].id]
    assert again and again[0].run_count >= 2, "the lost machine's part ran again elsewhere"
    assert bed.machine_of(again[0]) is not lost
    assert all(PART_TAG in p.tags for p in parts)

    # One Harbor execution: a task per repository wherever it ran, each naming its machine.
    with bed.settings():
        detail = asyncio.run(read_execution(str(started.id)))
    tasks = detail.execution.tasks
    assert sorted(t.name for t in tasks) == sorted(pushed)
    assert {t.row.get("status") for t in tasks} == {"Succeeded"}
    # Where each transfer ran, the lost machine's included: their log lines name it.
    with bed.settings():
        lines = asyncio.run(read_logs(str(started.id)))
    machines = {m.group(1) for line in lines if (m := TRANSFER_LINE.search(line.message))}
    assert lost.name in machines and len(machines) >= 2, machines
    assert all(t.row.get("machine") in {m.name for m in bed.machines} for t in tasks)
    # The transfers the lost machine was running when it died do not stay Running either.
    assert asyncio.run(unfinished_task_runs(bed, [p.id for p in parts])) == []

    # Byte-exact, by regflow's verifier (every tag and blob) and skopeo (the manifests' bytes).
    verified = regflow(control, "verify", "spread")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    for repo in list(pushed)[:: REPOSITORIES // 5]:
        # dest_namespace "mirror" takes the place of the source's namespace, as in Harbor.
        assert inspect_raw_digest(dst.ref(f"mirror/{repo.split('/')[-1]}", "1.0")) == pushed[repo]
    assert asyncio.run(unfinished_runs(bed)) == []
    lost.restart()
    bed.wait_for_workers()


def test_stopping_a_spread_execution_stops_every_machines_transfers(
        bed: ScaleOutBed, make_registry: RegistryFactory, make_corpus: CorpusFactory, tmp_path: Path) -> None:
    src, dst = make_registry("anonymous"), make_registry("anonymous")
    push_corpus(make_corpus, src)
    spread_policy(bed, tmp_path, "spread-stop", "stopped", SPEED // 3, src, dst)
    with bed.settings():
        started = run_deployment(name="replicate/spread-stop", timeout=0)
    assert isinstance(started, FlowRun)
    # Three parts, two at most on one machine (the workers' --limit): at least two machines.
    parts = asyncio.run(running_parts(bed, started.id, at_least=3))
    assert len({p.labels.get(WORKER_LABEL) for p in parts}) >= 2
    before = stored_bytes(dst)
    time.sleep(1.5)
    assert stored_bytes(dst) > before, "the parts were copying when stopped"

    with bed.settings():
        asyncio.run(stop_execution(str(started.id), wait=False))
    stopped_at = time.monotonic()
    time.sleep(STOP_SECONDS)
    at_bound = stored_bytes(dst)
    time.sleep(3.0)
    assert stored_bytes(dst) <= at_bound, f"bytes still arriving {STOP_SECONDS:.0f} s after the stop"

    run = asyncio.run(finished(bed, started.id, 30))
    assert run.state_type == StateType.CANCELLED, run.state
    parts = asyncio.run(parts_of(bed, started.id))
    assert all(p.state is not None and p.state.is_final() for p in parts)
    assert asyncio.run(unfinished_task_runs(bed, [p.id for p in parts])) == []
    assert time.monotonic() - stopped_at < STOP_SECONDS + 30
    assert asyncio.run(unfinished_runs(bed)) == []


async def first_transfer_done(bed: ScaleOutBed, part_id: UUID, seconds: float = 60.0) -> None:
    """A transfer of the part Completed and its log line (naming the machine) on the server:
    a state is sent at once, log lines in batches, so a kill right after the state could lose
    the line the test later looks for."""
    deadline = time.monotonic() + seconds
    async with bed.client() as client:
        while time.monotonic() < deadline:
            task_runs = await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[part_id])))
            if any(t.state_type == StateType.COMPLETED for t in task_runs):
                logs = await client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[part_id])))
                if any(TRANSFER_LINE.search(log.message) for log in logs):
                    return
            await asyncio.sleep(0.2)
    raise AssertionError(f"part {part_id} finished no transfer in {seconds:.0f} s")


async def read_run(bed: ScaleOutBed, run_id: UUID) -> FlowRun:
    async with bed.client() as client:
        return await client.read_flow_run(run_id)


async def unfinished_task_runs(bed: ScaleOutBed, run_ids: list[UUID]) -> list[str]:
    async with bed.client() as client:
        task_runs = await client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=run_ids)))
    return [f"{t.name}: {t.state_name}" for t in task_runs if t.state is None or not t.state.is_final()]


