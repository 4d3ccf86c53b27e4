"""A flow process killed with SIGKILL does not leave its execution Running forever, whoever
started it: the run's own heartbeats stop, and the next run of a single-active policy (or the
automation every run ensures) marks it Crashed."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

import pytest
from prefect import flow
from prefect.automations import Automation
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.events import Event
from prefect.exceptions import ObjectNotFound
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.states import Running

from flows.liveness import (
    AUTOMATION_DESCRIPTION,
    AUTOMATION_NAME,
    HEARTBEAT_EVENT,
    SILENCE_SECONDS,
    ensure_automation,
    last_heartbeat,
)
from flows.runtime import active_run_of
from tests.support.corpus import ImageKind
from tests.support.skopeo import inspect_raw_digest
from tests.support.waiting import until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# The acceptance bound: a dead run blocks its single-active policy at most this long.
DETECTION_BOUND_SECONDS = 90

CONFIG = """\
version: 1
registries:
  - {{name: src, type: docker-registry, url: "{src}"}}
  - {{name: dst, type: docker-registry, url: "{dst}"}}
policies:
  - name: doomed
    src_registry: src
    dest_registry: dst
    single_active_replication: true
    filters: [{{type: name, value: big/app}}]
    speed: {speed}
"""


@flow(name="replicate")
def _stand_in() -> None:
    """Only its name: runs of it are made by hand, never executed."""


async def _running_run(client: PrefectClient, policy: str) -> FlowRun:
    return await client.create_flow_run(_stand_in, tags=[f"policy:{policy}"], state=Running())


async def _heartbeat(client: PrefectClient, run: FlowRun, seconds_ago: float) -> None:
    event = Event(event=HEARTBEAT_EVENT, occurred=datetime.now(UTC) - timedelta(seconds=seconds_ago),
                  resource={"prefect.resource.id": f"prefect.flow-run.{run.id}"})
    await client.request("POST", "/events", json=[event.model_dump(mode="json")])
    deadline = time.monotonic() + 30
    while await last_heartbeat(client, run) is None:  # the server persists events in batches
        assert time.monotonic() < deadline, "the heartbeat was never recorded"
        await asyncio.sleep(0.3)


@asynccontextmanager
async def _automation_paused() -> AsyncIterator[None]:
    """Only regflow's own check may act while it is on: the automation would race it."""
    await ensure_automation()
    automation = await Automation.aread(name=AUTOMATION_NAME)
    await automation.adisable()
    try:
        yield
    finally:
        await automation.aenable()


async def test_the_next_run_crashes_a_silent_run_and_leaves_live_and_unheard_ones(prefect_server):
    tag = uuid.uuid4().hex[:8]
    with temporary_settings(updates={PREFECT_API_URL: prefect_server.api_url}):
        async with prefect_server.client() as client, _automation_paused():
            silent = await _running_run(client, f"silent-{tag}")
            await _heartbeat(client, silent, seconds_ago=SILENCE_SECONDS + 20)
            alive = await _running_run(client, f"alive-{tag}")
            await _heartbeat(client, alive, seconds_ago=1)
            unheard = await _running_run(client, f"unheard-{tag}")

            assert await active_run_of(f"silent-{tag}") is None
            state = (await client.read_flow_run(silent.id)).state
            assert state is not None and state.type == StateType.CRASHED, state
            assert "no heartbeat for" in (state.message or "")

            assert await active_run_of(f"alive-{tag}") == str(alive.id)
            # Never heard of (an older regflow, a server keeping no events): never judged.
            assert await active_run_of(f"unheard-{tag}") == str(unheard.id)
            for run in (alive, unheard):
                still = (await client.read_flow_run(run.id)).state
                assert still is not None and still.type == StateType.RUNNING


async def test_the_automation_is_ensured_once_and_brought_up_to_date(prefect_server):
    with temporary_settings(updates={PREFECT_API_URL: prefect_server.api_url}):
        await ensure_automation()
        automation = await Automation.aread(name=AUTOMATION_NAME)
        automation.description = "an older definition"
        await automation.aupdate()
        await ensure_automation()
        await ensure_automation()
        async with prefect_server.client() as client:
            found = await client.read_automations_by_name(AUTOMATION_NAME)
        assert len(found) == 1
        assert found[0].description == AUTOMATION_DESCRIPTION


def _limit_name(registry_url: str) -> str:
    return "registry-" + registry_url.split("://", 1)[1].replace(":", "-")


async def test_a_killed_replicate_is_crashed_and_the_next_run_starts_within_the_bound(
        prefect_server, make_registry, make_corpus, tmp_path):
    src, dst = make_registry("anonymous"), make_registry("anonymous")
    pushed = make_corpus(src).push("big/app", ["1"], ImageKind.OCI, layer_sizes=[8 * 1024 * 1024])
    config = tmp_path / "c.yaml"
    # No heartbeat settings: the run's own heartbeats are what is tested, as on the embedded default.
    env = prefect_server.env() | {"REGFLOW_HOME": str(tmp_path / "home")}
    cli = [sys.executable, "-m", "regflow_cli.main"]

    def apply(speed: int) -> None:
        config.write_text(CONFIG.format(src=src.url, dst=dst.url, speed=speed))
        subprocess.run([*cli, "apply", "-f", str(config)], env=env, check=True, capture_output=True)

    apply(800)  # 100 KB/s: the 8 MiB layer would take minutes
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
        deadline = time.monotonic() + 30
        while await last_heartbeat(client, run) is None:
            assert time.monotonic() < deadline, "the execution sent no heartbeat"
            await asyncio.sleep(0.5)

        async def slot_taken() -> bool:  # the lane takes its slot once the plan is known
            try:
                limit = await client.read_global_concurrency_limit_by_name(_limit_name(dst.url))
            except ObjectNotFound:  # the run creates the limit on first use: it may not be there yet
                return False
            return bool(limit.active_slots > 0)

        await until(slot_taken, 30, "the execution to take a registry slot")
        # Killed as soon as it holds its slot: the lease the server makes it wait out (60 s at
        # the least) starts then, and everything below happens within it.
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        killed_at = datetime.now(UTC)
        apply(-1)  # the runs after the kill copy at full speed

        refused = 0
        while True:
            again = subprocess.run([*cli, "replicate", "doomed", "--json"], env=env, capture_output=True,
                                   text=True, timeout=300)
            execution = json.loads(again.stdout)
            if execution["status"] == "Succeeded":
                break
            assert "single_active_replication" in execution["message"], again.stdout
            refused += 1
            since = (datetime.now(UTC) - killed_at).total_seconds()
            assert since < DETECTION_BOUND_SECONDS + 30, f"refused {refused} times, {since:.0f} s after kill"
            # The next try (a whole CLI process) once the dead run can be judged: silent for the
            # window since its last heartbeat, or already ended by the automation. A run never
            # judged still fails: the wait ends with the bound.
            await until(lambda: _judgeable(client, run), DETECTION_BOUND_SECONDS + 30,
                        "the killed run's silence window to pass")
        assert refused >= 1, "the dead run was never seen as running: the test proves nothing"
        successor = await client.read_flow_run(uuid.UUID(execution["flow_run_id"]))
        assert successor.start_time is not None
        waited = (successor.start_time - killed_at).total_seconds()
        assert waited <= DETECTION_BOUND_SECONDS, f"the next run started {waited:.0f} s after the kill"

        # Read while the dead run's lease is still running out.
        listed = subprocess.run([*cli, "executions", "doomed", "--json"], env=env, capture_output=True,
                                text=True, check=True)
        states = {r["id"]: r for r in json.loads(listed.stdout)}
        assert states[str(run.id)]["state"] == "Crashed", states[str(run.id)]
        assert "no heartbeat for" in states[str(run.id)]["message"]
        assert inspect_raw_digest(dst.ref("big/app", "1")) == pushed.digest

        # The dead run's registry slots come back when their lease runs out.
        slots = _limit_name(dst.url)
        while (limit := await client.read_global_concurrency_limit_by_name(slots)).active_slots:
            assert (datetime.now(UTC) - killed_at).total_seconds() < DETECTION_BOUND_SECONDS, \
                f"{limit.active_slots} slot(s) still held"
            await asyncio.sleep(1)


async def _judgeable(client: PrefectClient, run: FlowRun) -> bool:
    state = (await client.read_flow_run(run.id)).state
    if state is None or state.type != StateType.RUNNING:
        return True
    heard = await last_heartbeat(client, run)
    return heard is not None and datetime.now(UTC) - heard >= timedelta(seconds=SILENCE_SECONDS)
