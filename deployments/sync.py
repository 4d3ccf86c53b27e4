"""Every policy is one Prefect deployment of the ``replicate`` flow, named after it.

Deployments are plain API objects in one process work pool: applying policies never restarts
the worker that runs them. A disabled policy keeps its deployment, paused with its schedule
inactive (the UI shows it switched off, its past runs stay attached to it); a removed policy
loses its deployment.
"""

from __future__ import annotations

from typing import Any

from prefect import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterTags, FlowFilter, FlowFilterName
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from prefect.schedules import Cron, Interval, Schedule
from pydantic import BaseModel

from flows.replicate import replicate
from flows.spread import REPO_ROOT, WORK_POOL
from policies.models import Policy

# Every deployment regflow manages carries this tag, so sync never touches anyone else's.
MANAGED_TAG = "regflow"


class DeploymentSpec(BaseModel):
    name: str
    parameters: dict[str, Any]
    cron: str | None = None
    interval_seconds: int | None = None
    concurrency_limit: int | None = None
    tags: list[str]
    description: str
    # A disabled policy: no schedule fires (Prefect's scheduler skips paused deployments and
    # inactive schedules alike; both are set so the UI and API agree on it).
    paused: bool = False

    def schedules(self) -> list[Schedule]:
        active = not self.paused
        if self.cron is not None:
            return [Cron(self.cron, active=active)]
        if self.interval_seconds is not None:
            return [Interval(self.interval_seconds, active=active)]
        return []


class SyncReport(BaseModel):
    applied: list[str] = []
    deleted: list[str] = []


def spec_for(policy: Policy) -> DeploymentSpec:
    settings = policy.trigger.trigger_settings
    scheduled = policy.trigger.type == "scheduled"
    return DeploymentSpec(
        name=policy.name,
        parameters={"policy": policy.name},
        cron=settings.cron if scheduled else None,
        interval_seconds=settings.interval_seconds if scheduled else None,
        concurrency_limit=1 if policy.single_active_replication else None,
        tags=sorted({MANAGED_TAG, f"policy:{policy.name}", f"registry:{policy.src_registry}",
                     f"registry:{policy.dest_registry}"}),
        description=policy.description or f"{policy.src_registry} → {policy.dest_registry}",
        paused=not policy.enabled,
    )


async def ensure_work_pool() -> None:
    async with get_client() as client:
        try:
            await client.read_work_pool(WORK_POOL)
        except ObjectNotFound:
            try:
                await client.create_work_pool(WorkPoolCreate(name=WORK_POOL, type="process"))
            except ObjectAlreadyExists:
                pass


async def apply_deployment(spec: DeploymentSpec) -> None:
    # Applying is an upsert, which also drops the runs the scheduler had already queued.
    deployment = await replicate.ato_deployment(
        name=spec.name, parameters=spec.parameters, schedules=spec.schedules(), paused=spec.paused,
        concurrency_limit=spec.concurrency_limit, tags=spec.tags, description=spec.description,
        # The worker starts each run in the repository, where the flow's imports resolve.
        job_variables={"working_dir": str(REPO_ROOT)},
    )
    await deployment.aapply(work_pool_name=WORK_POOL)


async def managed_deployments() -> dict[str, Any]:
    async with get_client() as client:
        found = await client.read_deployments(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["replicate"])),
            deployment_filter=DeploymentFilter(tags=DeploymentFilterTags(all_=[MANAGED_TAG])))
    return {d.name: d for d in found}


async def sync_deployments(policies: list[Policy]) -> SyncReport:
    """Make the server's deployments match the policies (paused where disabled); idempotent."""
    await ensure_work_pool()
    report = SyncReport()
    wanted = {p.name: spec_for(p) for p in policies}
    for spec in wanted.values():
        await apply_deployment(spec)
        report.applied.append(spec.name)
    existing = await managed_deployments()
    async with get_client() as client:
        for name, deployment in existing.items():
            if name not in wanted:
                await client.delete_deployment(deployment.id)
                report.deleted.append(name)
    return report
