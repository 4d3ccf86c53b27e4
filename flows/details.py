"""The artifacts that let one execution be read back whole after it ended (``regflow executions
show``, ``retry``): what happened to each tag, and the failed-images report.

Beside the summary artifacts of flows/runtime.py; the readers are in flows/history.py.
"""

from __future__ import annotations

import asyncio
import re

from prefect.artifacts import acreate_table_artifact

from tasks.report import FailedImagesReport
from tasks.summary import Execution

# Keys of an execution's table artifacts, each followed by the policy's name (key()); none
# starts with another's prefix, so readers can tell them apart by key.
TASK_TABLE_KEY = "replication-"  # flows/runtime.py's task table
FAILED_IMAGES_KEY = "failed-images-"
TAG_RESULTS_KEY = "tag-results-"
# Tags identical on the target are counted per task, not listed: a no-change resync of a large
# registry would otherwise store a row per tag on every run.
UNLISTED_REASON = "identical on target"


def key(prefix: str, policy: str) -> str:
    # Artifact keys allow lowercase letters, digits and dashes only.
    return prefix + re.sub(r"[^a-z0-9-]", "-", policy.lower())


def tag_rows(execution: Execution) -> list[dict[str, object]]:
    # pushed_digest: what the target's tag names when it is not the source's digest (an index
    # rewritten for the policy's platforms); empty otherwise.
    return [{"repository": t.source, "target": t.target, "tag": o.tag,
             "digest": str(o.digest) if o.digest else "",
             "pushed_digest": str(o.pushed_digest) if o.pushed_digest and o.pushed_digest != o.digest else "",
             "status": o.status, "reason": o.reason, "bytes": o.bytes}
            for t in execution.tasks for o in t.tags
            if not (o.status == "skipped" and o.reason == UNLISTED_REASON)]


async def publish(execution: Execution) -> None:
    """Only what there is: no failed-images artifact for an execution without failures."""
    if not execution.flow_run_id:
        return
    jobs = []
    if rows := tag_rows(execution):
        jobs.append(acreate_table_artifact(rows, key=key(TAG_RESULTS_KEY, execution.policy),
                                           description=f"{execution.policy}: each tag's outcome"))
    report: FailedImagesReport | None = execution.report
    if report is not None and report.images:
        jobs.append(acreate_table_artifact(
            [i.model_dump(mode="json") for i in report.images],
            key=key(FAILED_IMAGES_KEY, execution.policy),
            description=f"{len(report.images)} image(s) not copied; "
                        f"`regflow executions retry {report.execution_id}` copies exactly these"))
    await asyncio.gather(*jobs)
