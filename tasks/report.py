"""The failed-images report: every image one execution did not copy (failed or stopped), each
with the digest its plan pinned, so that a retry copies exactly those, as they were.

It is a Prefect artifact of the execution (a table, one row per image, key
``failed-images-<policy>``), the file ``--report FILE`` writes, and what ``executions retry``
reads back, from either. A repository whose tags were never known (its listing or planning
failed) is one row without tag or digest: a retry takes the whole repository again.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ValidationError

from adapters.errors import CancelledReplication, ConfigError, ReplicationError
from adapters.oci import Digest
from tasks.discover import Resource, is_digest_reference
from tasks.models import TransferResult
from tasks.plan import Pins, Plan

# The file a user hands back is read whole; a report of 100,000 failed images is ~40 MiB.
MAX_REPORT_FILE_BYTES = 64 * 1024 * 1024
# What tasks/transfer.py and tasks/summary.py put before a reason: the error's class name.
_CLASS_PREFIX = re.compile(r"^([A-Z][A-Za-z0-9_]*): ")

FailureStatus = Literal["failed", "stopped"]


class FailedImage(BaseModel):
    source_repository: str
    target_repository: str
    tag: str | None  # None: the repository failed before its tags were known
    digest: Digest | None  # the digest the execution planned for the tag
    source: str  # host/repository:tag@digest, as skopeo's docker:// takes it
    target: str  # host/repository:tag; an untagged manifest's, on both: host/repository@digest
    status: FailureStatus  # stopped: the execution was stopped before the image was done
    error_class: str  # a name of adapters/errors.py's tree (or of the exception that ended it)
    reason: str
    transient: bool  # another attempt may succeed with nothing changed (stopped images: true)


class FailedImagesReport(BaseModel):
    version: Literal[1] = 1  # a change that breaks readers of version 1 gets a new number
    policy: str
    execution_id: str | None = None  # the Prefect flow run's id
    execution_name: str | None = None
    created: datetime
    images: list[FailedImage] = []

    def retry_selection(self) -> tuple[list[Resource], Pins]:
        """What a retry asks discovery for, and the digest each tag is pinned to."""
        resources: list[Resource] = []
        pins: dict[str, dict[str, Digest]] = {}
        whole = {i.source_repository for i in self.images if i.tag is None}
        resources.extend(Resource(repository=r) for r in sorted(whole))
        for image in self.images:
            if image.tag is None or image.source_repository in whole:
                continue
            resources.append(Resource(repository=image.source_repository, tag=image.tag))
            if image.digest is not None:
                pins.setdefault(image.source_repository, {})[image.tag] = image.digest
        return resources, pins


def build_report(policy: str, plan: Plan, results: Mapping[str, TransferResult | BaseException], *,
                 source_host: str, target_host: str, stopped: bool) -> FailedImagesReport:
    """Every image the execution did not copy. A transfer that never started (the run was
    stopped first) or ended without a result reports each tag its plan gave it."""
    images: list[FailedImage] = []

    def add(repo_source: str, repo_target: str, tag: str | None, digest: Digest | None,
            status: FailureStatus, error_class: str, reason: str, transient: bool) -> None:
        if tag is not None and is_digest_reference(tag):
            # An untagged manifest's "tag" is its digest: addressed by that alone, on both sides.
            source, target = f"{source_host}/{repo_source}@{tag}", f"{target_host}/{repo_target}@{tag}"
        else:
            name = f":{tag}" if tag else ""
            source = f"{source_host}/{repo_source}{name}" + (f"@{digest}" if digest else "")
            target = f"{target_host}/{repo_target}{name}"
        images.append(FailedImage(
            source_repository=repo_source, target_repository=repo_target, tag=tag, digest=digest,
            source=source, target=target,
            status=status, error_class=error_class, reason=reason,
            transient=transient or status == "stopped"))

    for repo in plan.repositories:
        src, dst = repo.source_repository, repo.target_repository
        if repo.error:
            add(src, dst, None, None, "failed", repo.error_class or "ReplicationError", repo.error,
                repo.error_transient)
            continue
        result = results.get(src)
        if isinstance(result, TransferResult):
            for o in result.tags:
                if o.status == "failed":
                    add(src, dst, o.tag, o.digest, "failed", error_class_of(o.reason), o.reason, o.transient)
                elif o.status == "stopped":
                    add(src, dst, o.tag, o.digest, "stopped", CancelledReplication.__name__, o.reason, True)
        elif isinstance(result, BaseException):
            # Not started after a stop, or the task itself broke: each of its planned tags.
            was_stopped = stopped or isinstance(result, CancelledReplication)
            status: FailureStatus = "stopped" if was_stopped else "failed"
            error_class = CancelledReplication.__name__ if was_stopped else type(result).__name__
            transient = bool(getattr(result, "transient", False))
            for t in repo.tags:
                if t.action in ("copy", "overwrite"):
                    add(src, dst, t.tag, t.digest, status, error_class, str(result) or error_class,
                        transient)
    return FailedImagesReport(policy=policy, created=datetime.now(UTC), images=images)


def error_class_of(reason: str) -> str:
    found = _CLASS_PREFIX.match(reason)
    return found.group(1) if found else ReplicationError.__name__


def read_report_file(path: Path) -> FailedImagesReport:
    """A report file a user hands back; anything else is bad input, said in one line."""
    try:
        if path.stat().st_size > MAX_REPORT_FILE_BYTES:
            raise ConfigError(f"{path} is larger than {MAX_REPORT_FILE_BYTES} bytes: not a report")
        return FailedImagesReport.model_validate_json(path.read_bytes())
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "file"
        raise ConfigError(f"{path} is not a failed-images report: {where}: {first['msg']}") from None


def write_report_file(report: FailedImagesReport, path: Path) -> None:
    try:
        path.write_text(report.model_dump_json(indent=2) + "\n")
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror or exc}") from None
