"""The hand-offs between the replication steps: small pydantic models, never clients."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from adapters.oci import Digest, Manifest

TagStatus = Literal["copied", "deleted", "skipped", "failed", "stopped"]
TaskStatus = Literal["Succeeded", "Failed", "Stopped"]


class TagPlan(BaseModel):
    tag: str
    # Pinned at plan time so that a tag moved mid-run cannot change what this run copies.
    digest: Digest | None = None
    # What the plan saw on the target, so the transfer need not HEAD the tag again.
    checked_target: bool = False
    target_digest: Digest | None = None
    # The manifest itself when the plan fetched it; kept out of anything serialised.
    manifest: Manifest | None = Field(default=None, exclude=True, repr=False)


class TransferSpec(BaseModel):
    """One source repository's tags and where they land: the unit of a Prefect task."""

    source_repository: str
    target_repository: str
    tags: list[TagPlan]
    override: bool = True
    copy_by_chunk: bool = False
    # The plan found none of the repository's tags on the target (PlannedRepository.new_on_target).
    new_on_target: bool = False


class TagOutcome(BaseModel):
    tag: str
    digest: Digest | None = None
    status: TagStatus
    reason: str = ""
    bytes: int = 0
    transient: bool = Field(default=False, exclude=True)


class TransferResult(BaseModel):
    source_repository: str
    target_repository: str
    tags: list[TagOutcome] = []
    bytes: int = 0
    seconds: float = 0.0

    def count(self, status: TagStatus) -> int:
        return sum(1 for t in self.tags if t.status == status)

    @property
    def status(self) -> TaskStatus:
        if any(t.status == "failed" for t in self.tags):
            return "Failed"
        if any(t.status == "stopped" for t in self.tags):
            return "Stopped"
        return "Succeeded"

    @property
    def retryable(self) -> bool:
        """Every failure was transient: another attempt may finish the job."""
        failed = [t for t in self.tags if t.status == "failed"]
        return bool(failed) and all(t.transient for t in failed)

    @property
    def error(self) -> str:
        return "; ".join(f"{t.tag}: {t.reason}" for t in self.tags if t.status == "failed")
