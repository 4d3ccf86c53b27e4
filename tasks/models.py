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
    # A referrer's subject (tasks/referrers.py): pushed after it. ``tag`` is then a cosign tag,
    # or the referrer's own digest for one that travels by digest alone.
    subject: Digest | None = None


class TransferSpec(BaseModel):
    """One source repository's tags and where they land: the unit of a Prefect task."""

    source_repository: str
    target_repository: str
    tags: list[TagPlan]
    override: bool = True
    copy_by_chunk: bool = False
    # The plan found none of the repository's tags on the target (PlannedRepository.new_on_target).
    new_on_target: bool = False
    # The policy's platforms ("os/arch[/variant]", "os/*"; empty: all) and what becomes of an
    # index some of whose children stay behind (tasks/platforms.py).
    platforms: list[str] = []
    platform_index: Literal["keep", "rewrite"] = "keep"


class TagOutcome(BaseModel):
    tag: str
    digest: Digest | None = None
    # What the target's tag now names when it is not the source's digest: an index rewritten
    # for the policy's platforms.
    pushed_digest: Digest | None = None
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
    # Where it ran (flows/transfers.machine_name): a spread execution's parts run on several.
    machine: str = ""

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


TrafficRole = Literal["source", "target"]


class RegistryTraffic(BaseModel):
    """What one execution asked of one side's registry."""

    host: str = ""
    # Answers by HTTP status ("200", "429", ...); "error" for requests that got no answer.
    responses: dict[str, int] = {}
    # Times a 429's Retry-After (or a vendor's rate-limit header) held every request to it.
    holds: int = 0


class Traffic(BaseModel):
    """An execution's work beyond tags and bytes, recorded once at its end for `/metrics`
    (deployments/metrics.py reads it back from the run's ``replication-traffic-*`` artifact)."""

    blobs_uploaded: int = 0
    # Placed without sending bytes: a cross-repository mount, or the target held it already.
    blobs_mounted: int = 0
    registries: dict[TrafficRole, RegistryTraffic] = {}

    def plus(self, other: Traffic) -> Traffic:
        """Both runs' counts added (a spread execution's own requests and its parts')."""
        total = self.model_copy(deep=True)
        total.blobs_uploaded += other.blobs_uploaded
        total.blobs_mounted += other.blobs_mounted
        for role, side in other.registries.items():
            mine = total.registries.setdefault(role, RegistryTraffic(host=side.host))
            mine.holds += side.holds
            for status, n in side.responses.items():
                mine.responses[status] = mine.responses.get(status, 0) + n
        return total

    def rows(self) -> list[dict[str, object]]:
        """The artifact's table, one count a row: the blob routes, then each registry side's
        holds (its host in ``key``) and its answers by status."""
        rows: list[dict[str, object]] = [
            {"role": "target", "kind": "blobs_uploaded", "key": "", "count": self.blobs_uploaded},
            {"role": "target", "kind": "blobs_mounted", "key": "", "count": self.blobs_mounted}]
        for role, side in sorted(self.registries.items()):
            rows.append({"role": role, "kind": "holds", "key": side.host, "count": side.holds})
            rows.extend({"role": role, "kind": "responses", "key": status, "count": n}
                        for status, n in sorted(side.responses.items()))
        return rows

    @classmethod
    def from_rows(cls, rows: list[dict[str, object]]) -> Traffic:
        """The inverse of ``rows``; rows it does not know are left out, so an older or newer
        run's artifact still reads."""
        traffic = cls()
        for row in rows:
            role, kind, count = row.get("role"), row.get("kind"), row.get("count")
            key = str(row.get("key", ""))
            if role not in ("source", "target") or not isinstance(count, int) or count < 0:
                continue
            side = traffic.registries.setdefault(role, RegistryTraffic())
            if kind == "blobs_uploaded":
                traffic.blobs_uploaded = count
            elif kind == "blobs_mounted":
                traffic.blobs_mounted = count
            elif kind == "holds":
                side.host, side.holds = key, count
            elif kind == "responses" and key:
                side.responses[key] = count
        return traffic
