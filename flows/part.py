"""One share of a spread execution (flows/spread.py): the ``replicate-part`` flow transfers the
repositories it is given on whichever worker of the pool picks it up, and leaves what became of
each in table artifacts its execution reads back. Its transfer task runs are the execution's
Harbor tasks, tagged with the machine that ran them.

A part whose process dies (the machine lost) goes silent: the crash automation marks it Crashed
(flows/liveness.py) and its execution schedules it again for any worker. Chunked uploads it
left open are rows of the shared store, so the next attempt continues them.
"""

from __future__ import annotations

import asyncio
import json

from prefect import flow, get_run_logger
from prefect.artifacts import acreate_table_artifact
from prefect.client.schemas.objects import State
from prefect.runtime import flow_run
from prefect.states import Completed

from adapters.errors import ReplicationError
from flows import liveness, runtime
from flows.transfers import Lanes, Run, machine_name
from policies.store import Store
from tasks.bandwidth import Bandwidth
from tasks.blobs import BlobCopier
from tasks.load import load_policy, open_adapters
from tasks.models import TagOutcome, Traffic, TransferResult, TransferSpec
from tasks.sessions import UploadSessions
from tasks.stop import StopSignal
from tasks.traffic import traffic_of

PART_FLOW = liveness.PART_FLOW_NAME
PART_DEPLOYMENT = "part"
# Keys of a part's artifacts, each followed by the policy's slug.
RESULTS_KEY = "part-results-"
TRAFFIC_KEY = "part-traffic-"


def part_name() -> str:
    params = flow_run.parameters
    return f"{params.get('policy', 'replicate')}-part-{params.get('index', 0)}"


@flow(name=PART_FLOW, flow_run_name=part_name, persist_result=False, log_prints=False)
async def replicate_part(policy: str, specs: list[TransferSpec], execution: str, index: int,
                         speed: int = -1) -> State:
    """``execution``: the spread execution's flow run id (its cancelling stops this part too);
    ``speed``: this part's share of the policy's Kbit/s."""
    liveness.keep_alive(PART_FLOW)
    logger = get_run_logger()
    machine = machine_name()
    logger.info("part %d of execution %s: %d repositories on %s", index, execution, len(specs), machine)
    loaded = load_policy(policy)
    stop = StopSignal()
    store = Store()
    try:
        async with runtime.watch_cancellation(stop, execution), open_adapters(loaded) as (source, target):
            # The execution's tokens stayed in its process: this part's, in a few fetches too,
            # both registries' at once (neither fails: what they miss, requests fetch).
            await asyncio.gather(
                source.client.prefetch_tokens([s.source_repository for s in specs], "pull"),
                target.client.prefetch_tokens([s.target_repository for s in specs], "pull,push"))
            blobs = BlobCopier(source.client, target.client, stop=stop, bandwidth=Bandwidth(speed, stop),
                               mount_probe=target.info.supports_mount,
                               sessions=UploadSessions(target.client.endpoint.url, store))
            lanes = Lanes(Run(source, target, blobs), stop, runtime.Progress())
            try:
                for spec in specs:
                    await lanes.put(spec)
            finally:
                results = await lanes.close()
                await lanes.progress.flush()
            await publish(policy, results, lanes.begun, traffic_of(source.client, target.client, blobs))
    finally:
        store.close()
    failed = sum(1 for r in results.values() if not isinstance(r, TransferResult) or r.status != "Succeeded")
    # Completed either way: what failed is in the artifact, and the transfers had their retries.
    return Completed(message=f"{len(results) - failed} of {len(specs)} repositories transferred on {machine}")


def result_rows(results: dict[str, TransferResult | BaseException],
                begun: set[str]) -> list[dict[str, object]]:
    """One row a repository; ``outcome`` holds the whole result (with each failure's transient
    flag, which the model leaves out of its own dumps) or the error that ended the transfer;
    ``started``: whether it had a task run."""
    rows: list[dict[str, object]] = []
    for repository, result in sorted(results.items()):
        started = repository in begun
        if isinstance(result, TransferResult):
            dumped = result.model_dump(mode="json")
            dumped["tags"] = [t.model_dump(mode="json") | {"transient": t.transient} for t in result.tags]
            rows.append({"repository": repository, "status": result.status, "started": started,
                         "outcome": json.dumps(dumped)})
        else:
            rows.append({"repository": repository, "status": "Failed", "started": started,
                         "error": f"{type(result).__name__}: {result}"[:2000],
                         "transient": bool(getattr(result, "transient", False))})
    return rows


def read_result_rows(rows: list[dict[str, object]]) -> dict[str, TransferResult | BaseException]:
    """The inverse of ``result_rows``."""
    results: dict[str, TransferResult | BaseException] = {}
    for row in rows:
        repository = str(row.get("repository", ""))
        if "outcome" in row:
            data = json.loads(str(row["outcome"]))
            data["tags"] = [TagOutcome.model_validate(t) for t in data.get("tags", [])]
            results[repository] = TransferResult.model_validate(data)
        else:
            results[repository] = ReplicationError(str(row.get("error", "no outcome recorded")),
                                                   transient=bool(row.get("transient")))
    return results


async def publish(policy: str, results: dict[str, TransferResult | BaseException], begun: set[str],
                  traffic: Traffic) -> None:
    slug = runtime.slug(policy)
    await acreate_table_artifact(result_rows(results, begun), key=RESULTS_KEY + slug,
                                 description="each repository this part transferred")
    await acreate_table_artifact(traffic.rows(), key=TRAFFIC_KEY + slug,
                                 description="this part's registry answers and blob routes")
