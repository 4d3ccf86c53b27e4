"""The ``replicate`` flow: one run is one Harbor execution, one transfer task run per source
repository is one Harbor task. The body is the table of contents; the steps live in ``tasks/``.

A run with ``retry_of`` (an execution's id or name; the Prefect UI's "custom run" of a policy's
deployment takes it too) or ``retry_report`` (a failed-images report, from ``executions retry
--from-report``) copies exactly the images that execution did not, pinned to the digests it
planned, and carries the tag ``retry-of:<id>``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Literal

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State
from prefect.context import FlowRunContext
from prefect.runtime import flow_run
from prefect.states import Cancelled, Completed, Failed

from adapters import Adapter
from adapters.errors import ConfigError, ReplicationError
from flows import details, history, liveness, runtime, spread
from flows.transfers import (
    MAX_ATTEMPTS_PER_BLOB,
    RUN,
    TRANSFER_BACKOFF,
    TRANSFER_CONCURRENCY,
    TRANSFER_RETRIES,
    Lanes,
    Run,
    TransferIncomplete,
    retry_transient,
    settle,
    transfer,
)
from policies.models import Policy
from policies.store import Store
from tasks.bandwidth import Bandwidth
from tasks.blobs import BlobCopier
from tasks.delete import DeleteSpec, delete_manifest, delete_specs
from tasks.discover import RepositoryTags, Resource, discover
from tasks.load import LoadedPolicy, load_policy, open_adapters
from tasks.models import Traffic, TransferResult, TransferSpec
from tasks.plan import Pins, Plan, PlannedRepository, named, plan_each, prefetch_target_tokens
from tasks.prepare import prepare
from tasks.prune import PruneReport, prune_after_run
from tasks.report import FailedImagesReport, build_report
from tasks.sessions import UploadSessions
from tasks.stop import StopSignal
from tasks.summary import MESSAGE_FAILURES, Execution, summarize, summarize_deletions
from tasks.traffic import traffic_of
from tasks.verify import VerifyReport, verify_policy

# Re-exported: the retry table's names, where readers of this flow look for them.
__all__ = ["MAX_ATTEMPTS_PER_BLOB", "TRANSFER_CONCURRENCY", "TRANSFER_RETRIES", "TransferIncomplete",
           "replicate", "transfer"]


@flow(name="replicate", flow_run_name=runtime.run_name, persist_result=False, log_prints=False)
async def replicate(policy: str, resources: list[Resource] | None = None, trigger: str = "manual",
                    event_id: str | None = None, operation: Literal["copy", "delete"] = "copy",
                    retry_of: str | None = None, retry_report: FailedImagesReport | None = None,
                    force_prune: bool = False) -> State:
    """Returns a final state whose data is the Execution (callers awaiting the flow get it).

    ``resources`` narrows the run to what an event named; ``operation="delete"`` replicates a
    deletion (only for policies with replicate_deletion); ``retry_of``/``retry_report`` make it
    a retry of what an execution did not copy; ``force_prune`` lets a policy's mirror prune
    delete more than its prune_limit."""
    liveness.keep_alive()
    logger = get_run_logger()
    trigger = runtime.effective_trigger(trigger)
    store = Store()
    if trigger == "schedule" and not store.policy(policy).enabled:
        # Prefect's worker takes scheduled runs up to its look-ahead early, so one may start
        # just after `regflow policy disable` paused the schedule: that occurrence is skipped
        # (Stopped, in the policy's history), not a failure to alert on. A run started by hand
        # is refused below, as before.
        await runtime.label_run(policy, trigger, event_id)
        skipped = f"policy {policy!r} was disabled before this scheduled run started"
        return await _final(summarize(policy, Plan(repositories=[]), {}, stopped_reason=skipped),
                            trigger, event_id)
    loaded = load_policy(policy, store)
    pins: Pins | None = None
    if retry_of is not None or retry_report is not None:
        if resources is not None or operation != "copy":
            raise ConfigError("a retry takes its images from the execution it retries: "
                              "no resources, operation copy")
        retried = await _retried(policy, retry_of, retry_report)
        retry_of = retried.execution_id
        resources, pins = retried.retry_selection()
        if retry_of:
            _label_retry(retry_of)
    await runtime.label_run(policy, trigger, event_id)
    if loaded.policy.single_active_replication and (other := await runtime.active_run_of(policy)):
        refused = f"refused: execution {other} of policy {policy} is still running " \
                  "and single_active_replication is on"
        return await _final(summarize(policy, Plan(repositories=[]), {}, refused=refused), trigger,
                            event_id, retry_of)

    if operation == "delete":
        return await _final(await _replicate_deletion(loaded, resources or []), trigger, event_id)
    if resources == [] and pins is not None:  # a retry of an execution that copied everything
        return await _final(summarize(policy, Plan(repositories=[]), {}), trigger, event_id, retry_of)

    stop = StopSignal()
    async with runtime.watch_cancellation(stop), open_adapters(loaded) as (source, target):
        found = await _discover(source, target, loaded.policy, resources)
        await prepare(target, named(found, loaded.policy, target), source)
        done = await _plan_and_transfer(source, target, loaded.policy, found, stop, pins)
        logger.info("plan: %d repositories, %d with tags to transfer", len(done.plan.repositories),
                    len(done.results))
        verified = await _verify(source, target, loaded.policy, found, stop)
        summary = partial(summarize, policy, done.plan, done.results,
                          stopped_reason=stop.reason if stop.is_set else "", verify=verified)
        execution = summary()
        pruned = await _prune(source, target, loaded.policy, found, stop, execution, force=force_prune,
                              whole=resources is None and pins is None)
        if pruned is not None:
            execution = summary(prune=pruned)
    execution.transfers = done.started
    execution.traffic = traffic_of(source.client, target.client, done.blobs)
    if done.parts_traffic is not None:
        execution.traffic = execution.traffic.plus(done.parts_traffic)
    execution.report = build_report(policy, done.plan, done.results, source_host=source.client.host,
                                    target_host=target.client.host, stopped=stop.is_set)
    return await _final(execution, trigger, event_id, retry_of)


async def _discover(source: Adapter, target: Adapter, policy: Policy,
                    resources: list[Resource] | None) -> list[RepositoryTags]:
    """Discovery, with the target's tokens fetched while the source's tags are listed rather
    than after them, and its token service learnt (its connection opened) while the source's
    catalog is read: a few round trips off a remote resync's path."""
    warming: list[asyncio.Task[None]] = [asyncio.create_task(target.client.learn_realm())]
    ended = False

    def selected(names: list[str]) -> None:
        if not ended:  # a late call after discovery failed starts nothing
            warming.append(asyncio.create_task(prefetch_target_tokens(target, policy, names)))

    try:
        found = await discover(source, policy, resources, on_selected=selected)
    except BaseException:
        ended = True
        for job in warming:
            job.cancel()
        await asyncio.gather(*warming, return_exceptions=True)
        raise
    await asyncio.gather(*warming)  # the fetches are under way; each request waits for its own
    return found


async def _retried(policy: str, retry_of: str | None,
                   report: FailedImagesReport | None) -> FailedImagesReport:
    """The report a retry works from: the one given, else the execution's own artifact."""
    if report is None:
        assert retry_of is not None
        first, report = await history.read_report(retry_of)
        if report is None and not first.ended:
            raise ConfigError(f"execution {first.name} is still {first.state}: stop it "
                              f"(regflow executions stop) or let it end, then retry")
        if report is None:
            if first.state != "Completed":
                raise ConfigError(f"execution {first.name} ended {first.state} without a failed-images "
                                  "report: run the policy again instead")
            report = FailedImagesReport(policy=first.policy, execution_id=first.id,
                                        execution_name=first.name, created=datetime.now(UTC))
    if report.policy != policy:
        raise ConfigError(f"execution {report.execution_name or report.execution_id} is of policy "
                          f"{report.policy}, not {policy}")
    return report


def _label_retry(first_id: str) -> None:
    """The ``retry-of:<id>`` tag, also on a run started with the parameter alone (the UI):
    runtime.label_run keeps the tags the run began with, which this adds to."""
    context = FlowRunContext.get()
    tag = f"{history.RETRY_TAG}{first_id}"
    if context is not None and context.flow_run is not None and tag not in context.flow_run.tags:
        context.flow_run.tags.append(tag)


@task(name="delete", task_run_name="{spec.source_repository}", retries=TRANSFER_RETRIES,
      retry_delay_seconds=TRANSFER_BACKOFF, retry_jitter_factor=0.5, retry_condition_fn=retry_transient,
      cache_policy=NO_CACHE, persist_result=False)
async def delete(spec: DeleteSpec) -> TransferResult:
    run = RUN.get()
    return settle(await delete_manifest(run.target, spec, source=run.source))


async def _replicate_deletion(loaded: LoadedPolicy, resources: list[Resource]) -> Execution:
    policy = loaded.policy
    if not policy.replicate_deletion:
        return summarize_deletions(policy.name, [])  # nothing to do: deletions stay on the source
    async with open_adapters(loaded) as (source, target):
        blobs = BlobCopier(source.client, target.client)
        RUN.set(Run(source, target, blobs))
        results = []
        for spec in delete_specs(resources, policy, target):
            state: State = await delete(spec, return_state=True)  # type: ignore[misc]
            data = await state.aresult(raise_on_failure=False)
            results.append(data.result if isinstance(data, TransferIncomplete) else data)
    execution = summarize_deletions(policy.name, [r for r in results if isinstance(r, TransferResult)])
    execution.transfers = len(results)
    execution.traffic = traffic_of(source.client, target.client, blobs)
    return execution


@dataclass
class _Transferred:
    plan: Plan
    results: dict[str, TransferResult | BaseException]  # every repository with work, started or not
    started: int  # transfer task runs, which the server records
    blobs: BlobCopier  # its counters are part of the execution's traffic
    parts_traffic: Traffic | None = None  # what the parts of a spread execution asked for


async def _plan_and_transfer(source: Adapter, target: Adapter, policy: Policy, found: list[RepositoryTags],
                             stop: StopSignal, pins: Pins | None = None) -> _Transferred:
    """Plans every repository and transfers those with work, each transfer starting as soon as
    its own repository's plan is known: planning the rest (a HEAD or two per tag) overlaps the
    copying instead of preceding it (~0.7 s of a 50-repository full copy). A policy with
    ``spread`` run by a worker plans first, then hands the transfers to its parts
    (flows/spread.py), which other workers run."""
    # Open chunked uploads are rows of the store, so any worker sharing it can continue them.
    store = Store()
    sessions = UploadSessions(target.client.endpoint.url, store)
    blobs = BlobCopier(source.client, target.client, stop=stop, bandwidth=Bandwidth(policy.speed, stop),
                       mount_probe=target.info.supports_mount, sessions=sessions)
    lanes = Lanes(Run(source, target, blobs), stop, runtime.Progress())
    spreading = await spread.wanted(policy)
    planned: dict[int, PlannedRepository] = {}
    specs: list[TransferSpec] = []
    try:
        async for i, repository in plan_each(source, target, policy, found, pins=pins):
            planned[i] = repository
            if (spec := repository.spec(policy)) is None:
                continue
            specs.append(spec)
            if not spreading:
                await lanes.put(spec)
    finally:
        if len(planned) < len(found):  # planning broke off: start nothing more
            lanes.drop_waiting()
        results = await lanes.close()
        await lanes.progress.flush()
        store.close()
    started = lanes.started
    traffic: Traffic | None = None
    if spreading and specs:
        parts = await spread.transfer_in_parts(policy, specs, stop, (source.client.host, target.client.host))
        results, started, traffic = parts.results, parts.started, parts.traffic
    return _Transferred(
        plan=Plan(repositories=[planned[i] for i in range(len(found))]),
        results={s.source_repository: results.get(s.source_repository, ReplicationError("not started"))
                 for s in specs},
        started=started, blobs=blobs, parts_traffic=traffic)


async def _verify(source: Adapter, target: Adapter, policy: Policy, found: list[RepositoryTags],
                  stop: StopSignal) -> VerifyReport | None:
    """Last step when the policy asks for it: does the target hold, whole, every tag this run
    covered? Skipped for a stopped run, which left work undone on purpose."""
    if not policy.verify or stop.is_set:
        return None
    try:
        report = await verify_policy(source, target, policy, found=found)
    except ReplicationError as exc:
        report = VerifyReport(ok=False, checked_tags=0, checked_blobs=0, error=f"{type(exc).__name__}: {exc}")
    get_run_logger().info("verify: %s", report.summary(MESSAGE_FAILURES))  # all of them: the Execution
    return report


async def _prune(source: Adapter, target: Adapter, policy: Policy, found: list[RepositoryTags],
                 stop: StopSignal, execution: Execution, *, force: bool, whole: bool) -> PruneReport | None:
    """The mirror prune (tasks/prune.py), last, only after a run over the whole policy that
    succeeded: a failed or stopped run, an event's or a retry's saw too little of the source."""
    if not policy.prune:
        return None
    logger = get_run_logger()
    if not whole or execution.status != "Succeeded":
        logger.info("prune: skipped, %s", "the run covered part of the policy" if not whole
                    else f"the execution {execution.status}")
        return None
    report = await prune_after_run(source, target, policy, found, force=force, stop=stop)
    for note in report.plan.notes if report.plan else ():
        logger.info("prune: %s", note)
    for result in report.results:
        for t in result.tags:
            log = logger.info if t.status == "deleted" else logger.warning
            log("prune: %s:%s %s: %s", result.target_repository, t.tag, t.status, t.reason)
    if report.problem:
        logger.warning("%s", report.problem)
    else:
        logger.info("prune: %d of %d tag(s) deleted", sum(r.count("deleted") for r in report.results),
                    report.plan.count if report.plan else 0)
    return report


async def _final(execution: Execution, trigger: str, event_id: str | None,
                 retry_of: str | None = None) -> State:
    execution.trigger, execution.event_id, execution.retry_of = trigger, event_id, retry_of
    execution.flow_run_id = runtime.current_run_id()
    if execution.report is not None:
        execution.report.execution_id = execution.flow_run_id
        execution.report.execution_name = flow_run.name
    await asyncio.gather(runtime.publish(execution), details.publish(execution))
    if execution.status == "Succeeded":
        return Completed(message=execution.message, data=execution)
    if execution.status == "Stopped":
        return Cancelled(message=execution.message, data=execution)
    return Failed(message=execution.message, data=execution)
