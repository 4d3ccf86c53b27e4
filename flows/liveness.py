"""Whether an execution's process is still alive, whoever started it (`regflow replicate` on
the embedded server, a `regflow serve` worker, a user's own worker or script).

Every run emits Prefect's ``prefect.flow-run.heartbeat`` event every HEARTBEAT_SECONDS from a
thread of its own. Two watchers act on silence: an automation on the run's server (ensured by
every run, once per process) marks a run Crashed once its heartbeats stop without a final
state following; and a single_active_replication run, before it refuses to start, marks any
silent Running run of its policy Crashed itself, so a server without a working triggers
service still unblocks the policy. A SIGKILLed run's registry slots come back when their
leases expire (flows/runtime.py REGISTRY_SLOT_LEASE_SECONDS).

Only runs that have sent at least one heartbeat are ever judged: a run of an older regflow,
or a server that keeps no events, must not be crashed for a silence that says nothing.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from prefect import __version__ as prefect_version
from prefect.automations import Automation
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.client.schemas.responses import OrchestrationResult
from prefect.context import FlowRunContext
from prefect.events import emit_event
from prefect.events.actions import ChangeFlowRunState
from prefect.events.filters import EventFilter, EventNameFilter, EventOccurredFilter, EventResourceFilter
from prefect.events.schemas.automations import EventTrigger, Posture
from prefect.events.schemas.events import RelatedResource
from prefect.settings import PREFECT_API_URL
from prefect.states import Crashed

logger = logging.getLogger(__name__)

FLOW_NAME = "replicate"
HEARTBEAT_EVENT = "prefect.flow-run.heartbeat"
# The share of a spread execution another worker runs (flows/part.py): judged the same way, so
# a part whose machine was lost is Crashed and its execution schedules it again.
PART_FLOW_NAME = "replicate-part"
# Often enough that three heartbeats fit in the silence window; one event a run, cheap.
DEFAULT_HEARTBEAT_SECONDS = 15
# Four heartbeats: a busy machine or a slow event pipeline delays one or two, never four. With
# the automation's evaluation loop (5 s) a dead run is Crashed within 90 s of its last word.
DEFAULT_SILENCE_SECONDS = 60
# Both can be shortened where a lost machine must be noticed sooner (a test bed): every process
# sharing the server must then be given the same values.
HEARTBEAT_ENV, SILENCE_ENV = "REGFLOW_HEARTBEAT_SECONDS", "REGFLOW_SILENCE_SECONDS"
# Fewer heartbeats per window and one late event would crash a live run.
HEARTBEATS_PER_SILENCE = 3
# Prefect refuses a proactive trigger watching a shorter window.
MIN_SILENCE_SECONDS = 10


def _windows() -> tuple[int, int]:
    try:
        beat = int(os.environ.get(HEARTBEAT_ENV, DEFAULT_HEARTBEAT_SECONDS))
        silence = int(os.environ.get(SILENCE_ENV, DEFAULT_SILENCE_SECONDS))
    except ValueError:
        beat, silence = 0, 0
    if beat < 1 or silence < max(beat * HEARTBEATS_PER_SILENCE, MIN_SILENCE_SECONDS):
        logger.warning("%s/%s ignored: need whole seconds, silence >= %d heartbeats and >= %d s; "
                       "using %d/%d s", HEARTBEAT_ENV, SILENCE_ENV, HEARTBEATS_PER_SILENCE,
                       MIN_SILENCE_SECONDS, DEFAULT_HEARTBEAT_SECONDS, DEFAULT_SILENCE_SECONDS)
        return DEFAULT_HEARTBEAT_SECONDS, DEFAULT_SILENCE_SECONDS
    return beat, silence


HEARTBEAT_SECONDS, SILENCE_SECONDS = _windows()
# Prefect's own flow-run heartbeats (a serve worker's runs) have a floor of 30 s; they add to
# the run's own and are never what the silence window relies on.
ENGINE_HEARTBEAT_SECONDS = 30
# A sender's clock may be behind ours; a heartbeat is looked for this far before the run began.
CLOCK_SKEW = timedelta(minutes=10)

AUTOMATION_NAME = "regflow: crash executions without heartbeats"
# The description carries the definition's version: a server holding an older one is updated.
AUTOMATION_DESCRIPTION = ("Marks a regflow execution (or a part of one) Crashed when its heartbeats "
                          f"stop for {SILENCE_SECONDS} s (its process died). Definition v3.")
FINAL_EVENTS = frozenset(f"prefect.flow-run.{s}" for s in ("Completed", "Failed", "Cancelled", "Crashed"))
SILENCE_MESSAGE = f"no heartbeat for {SILENCE_SECONDS} s: the process running this execution died"

# API URLs this process has ensured the automation on.
_ensured: set[str] = set()
_ensuring: set[asyncio.Task[None]] = set()


def heartbeat_environment() -> dict[str, str]:
    """Prefect's own heartbeats for a worker's flow runs: they start before the flow body does."""
    return {"PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(ENGINE_HEARTBEAT_SECONDS)}


def keep_alive(flow_name: str = FLOW_NAME) -> None:
    """Called first thing in the flow body: heartbeats for this run until its state is final,
    and the crash automation ensured on its server in the background."""
    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        return
    run = context.flow_run
    loop = asyncio.get_running_loop()
    resource = {"prefect.resource.id": f"prefect.flow-run.{run.id}",
                "prefect.resource.name": run.name or "", "prefect.version": prefect_version}
    related = [RelatedResource.model_validate({"prefect.resource.id": f"prefect.flow.{run.flow_id}",
                                               "prefect.resource.role": "flow",
                                               "prefect.resource.name": flow_name})]
    # The thread sees this context's settings (the run's API URL), not the process defaults.
    settings = contextvars.copy_context()
    threading.Thread(target=settings.run, args=(_beat, run, loop, resource, related), daemon=True,
                     name=f"regflow-heartbeat-{run.id}").start()
    _ensure_in_background(loop)


def _beat(run: FlowRun, loop: asyncio.AbstractEventLoop, resource: dict[str, str],
          related: list[RelatedResource]) -> None:
    # A thread, not a task: a loop busy for a while must not look like a dead process. It ends
    # with the run's final state (the engine sets it on this same object) or the run's loop.
    def over() -> bool:
        return (run.state is not None and run.state.is_final()) or loop.is_closed()

    while not over():
        try:
            emit_event(event=HEARTBEAT_EVENT, resource=resource, related=related)
        except Exception as exc:  # the next heartbeat tries again
            logger.debug("heartbeat not sent: %s", exc)
        for _ in range(HEARTBEAT_SECONDS):
            time.sleep(1)
            if over():
                return


def crash_automation() -> Automation:
    return Automation(
        name=AUTOMATION_NAME,
        description=AUTOMATION_DESCRIPTION,
        trigger=EventTrigger(
            after={HEARTBEAT_EVENT},
            expect={HEARTBEAT_EVENT, *FINAL_EVENTS},
            match={"prefect.resource.id": ["prefect.flow-run.*"]},
            # Only regflow's executions: other flows on a shared server may beat more slowly.
            match_related={"prefect.resource.role": "flow",
                           "prefect.resource.name": [FLOW_NAME, PART_FLOW_NAME]},
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=SILENCE_SECONDS),
        ),
        actions=[ChangeFlowRunState(state=StateType.CRASHED, name="Crashed", force=False,
                                    message=SILENCE_MESSAGE)],
    )


async def ensure_automation() -> None:
    """Create the automation on the current server, or bring an older definition up to date."""
    wanted = crash_automation()
    try:
        existing = await Automation.aread(name=AUTOMATION_NAME)
    except ValueError:  # not there yet
        await wanted.acreate()
        return
    if existing.description != wanted.description:
        wanted.id = existing.id
        await wanted.aupdate()


def _ensure_in_background(loop: asyncio.AbstractEventLoop) -> None:
    url = str(PREFECT_API_URL.value() or "")
    if url in _ensured:
        return
    _ensured.add(url)  # one attempt per process and server; a failure is retried next process

    async def ensure() -> None:
        try:
            await ensure_automation()
        except Exception as exc:  # a second line of defence; the run goes on without it
            logger.warning("crash-detection automation not ensured on %s: %s", url or "this server", exc)

    task = loop.create_task(ensure())
    _ensuring.add(task)
    task.add_done_callback(_ensuring.discard)


async def last_heartbeat(client: PrefectClient, run: FlowRun) -> datetime | None:
    """When the run last said it was alive, by the sender's clock, as Prefect's automations
    judge it: hosts sharing a server must keep their clocks in step (NTP)."""
    began = run.start_time or run.created or datetime.now(UTC) - timedelta(days=1)
    page = await client.read_events(EventFilter(
        occurred=EventOccurredFilter.model_validate({"since": began - CLOCK_SKEW,
                                                    "until": datetime.now(UTC) + CLOCK_SKEW}),
        event=EventNameFilter(name=[HEARTBEAT_EVENT]),
        resource=EventResourceFilter(id=[f"prefect.flow-run.{run.id}"]),
    ), limit=1)
    if not page.events:
        return None
    return page.events[0].occurred


async def crash_if_silent(client: PrefectClient, run: FlowRun, seen_by: str | None = None, *,
                          unheard_is_silent: bool = False) -> bool:
    """True when ``run``, Running as far as the server knows, has gone silent and is now
    Crashed (by this call or a moment earlier by the automation). A run never heard of is
    left alone (an older regflow, a server keeping no events) unless ``unheard_is_silent``:
    the caller knows the server keeps heartbeats and that this run sends them."""
    heard = await last_heartbeat(client, run)
    never = heard is None
    if never and unheard_is_silent:
        # A process killed between Running and its first heartbeat (while starting) sent none:
        # the automation, which waits for a heartbeat's successor, never judges it. Its silence
        # counts from when it went Running.
        heard = run.state.timestamp if run.state is not None and run.state.type == StateType.RUNNING else None
    if heard is None or datetime.now(UTC) - heard < timedelta(seconds=SILENCE_SECONDS):
        return False
    silent = int((datetime.now(UTC) - heard).total_seconds())
    by = f" (noticed by execution {seen_by})" if seen_by else ""
    what = f"no heartbeat in {silent} s since it started" if never else f"no heartbeat for {silent} s"
    result: OrchestrationResult[Any] = await client.set_flow_run_state(run.id, Crashed(
        message=f"{what}: the process running this execution died{by}"))
    state = result.state or (await client.read_flow_run(run.id)).state
    crashed = state is not None and state.type != StateType.RUNNING
    if state is not None and crashed:
        logger.warning("execution %s was silent for %d s: marked %s", run.id, silent, state.name)
    return crashed
