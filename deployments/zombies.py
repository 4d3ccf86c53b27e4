"""Executions whose process died (SIGKILL, OOM, a lost machine) must not stay Running forever.

Prefect OSS has no zombie detection of its own. Every flow run emits a heartbeat event every
HEARTBEAT_SECONDS; this automation marks a run Crashed once its heartbeats stop without a
final state following, so the UI, `regflow executions` and single_active_replication all see
the truth and the next run can go ahead.
"""

from __future__ import annotations

from datetime import timedelta

from prefect.automations import Automation
from prefect.client.schemas.objects import StateType
from prefect.events.actions import ChangeFlowRunState
from prefect.events.schemas.automations import EventTrigger, Posture

AUTOMATION_NAME = "regflow: crash executions without heartbeats"
# Prefect's minimum heartbeat interval; the worker's flow runs get it through the environment.
HEARTBEAT_SECONDS = 30
# Two and a half missed heartbeats: a busy machine may delay one, never three.
SILENCE_SECONDS = 75
FINAL_EVENTS = {f"prefect.flow-run.{s}" for s in ("Completed", "Failed", "Cancelled", "Crashed")}


def heartbeat_environment() -> dict[str, str]:
    return {"PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(HEARTBEAT_SECONDS)}


async def ensure_zombie_automation() -> None:
    try:
        await Automation.aread(name=AUTOMATION_NAME)
        return
    except ValueError:
        pass  # not there yet
    automation = Automation(
        name=AUTOMATION_NAME,
        description="Marks a flow run Crashed when its heartbeats stop (its process died).",
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={"prefect.flow-run.heartbeat", *FINAL_EVENTS},
            match={"prefect.resource.id": ["prefect.flow-run.*"]},
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=SILENCE_SECONDS),
        ),
        actions=[ChangeFlowRunState(
            state=StateType.CRASHED, name="Crashed", force=False,
            message=f"no heartbeat for {SILENCE_SECONDS} s: the process running this execution died")],
    )
    await automation.acreate()
