"""Mirror prune (tasks/prune.py) against in-memory registries that behave like CNCF distribution
(deletion only by digest, a manifest's deletion takes every tag on it) or, where said, delete
tags alone (OCI 1.1): scope, namespace mapping, the limit, signatures, latest."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

import flows.replicate as replicate
from adapters.endpoint import Endpoint
from adapters.native import NativeAdapter
from adapters.oci import Digest
from policies.models import Filter, Latest, Policy
from tasks.discover import RepositoryTags
from tasks.models import TagOutcome, TransferResult
from tasks.plan import Plan, PlannedRepository
from tasks.prune import PrunePlan, PruneReport, can_undo_mapping, plan_prune, prune, source_of
from tasks.stop import StopSignal
from tasks.summary import summarize

IMAGE = "application/vnd.oci.image.manifest.v1+json"


def digest(name: str) -> Digest:
    return Digest.of(name.encode())


def sig(of: Digest) -> str:
    return f"sha256-{of.hex}.sig"


@dataclass
class Fake:
    """One registry: repository -> tag -> digest. ``tag_deletion``: DELETE by tag works."""

    repos: dict[str, dict[str, Digest]]
    tag_deletion: bool = False
    untagged: set[Digest] = field(default_factory=set)  # manifests held without a tag
    refusing: bool = False  # every request answered 403
    deletes: list[str] = field(default_factory=list)

    def handle(self, request: httpx.Request) -> httpx.Response:
        if self.refusing:
            return httpx.Response(403, json={"errors": [{"code": "DENIED"}]})
        path = request.url.path.removeprefix("/v2/")
        if path == "_catalog":
            return httpx.Response(200, json={"repositories": sorted(self.repos)})
        name, _, rest = path.rpartition("/tags/") if "/tags/" in path else path.rpartition("/manifests/")
        tags = self.repos.get(name)
        if tags is None:
            return httpx.Response(404, json={"errors": [{"code": "NAME_UNKNOWN"}]})
        if path.endswith("/tags/list"):
            return httpx.Response(200, json={"name": name, "tags": sorted(tags)})
        ref = rest
        if request.method == "HEAD":
            held = set(tags.values()) | self.untagged
            at = (Digest(ref) if ref in held else None) if ref.startswith("sha256:") else tags.get(ref)
            if at is None:
                return httpx.Response(404)
            return httpx.Response(200, headers={"Docker-Content-Digest": at, "Content-Type": IMAGE})
        if request.method == "DELETE":
            self.deletes.append(f"{name}:{ref}")
            if not ref.startswith("sha256:"):
                if not self.tag_deletion or ref not in tags:
                    return httpx.Response(405 if not self.tag_deletion else 404)
                del tags[ref]
                return httpx.Response(202)
            gone = [t for t, d in tags.items() if d == ref]
            for t in gone:
                del tags[t]
            return httpx.Response(202 if gone else 404)
        return httpx.Response(500)

    def adapter(self, host: str) -> NativeAdapter:
        return NativeAdapter(Endpoint(url=f"http://{host}"), transport=httpx.MockTransport(self.handle))


def policy(**fields: Any) -> Policy:
    fields.setdefault("filters", [])
    return Policy(name="p", src_registry="src", dest_registry="dst", prune=True, **fields)


def found(source: Fake, p: Policy) -> list[RepositoryTags]:
    """What discover would select: the tag filters over each source repository's tags."""
    from policies.filters import select_tags
    return [RepositoryTags(repository=r, tags=select_tags(sorted(tags), p.filters))
            for r, tags in sorted(source.repos.items()) if tags]


async def planned(source: Fake, target: Fake, p: Policy, selected: list[RepositoryTags] | None = None,
                  force: bool = False) -> PrunePlan:
    src, dst = source.adapter("src.test"), target.adapter("dst.test")
    try:
        return await plan_prune(src, dst, p, found(source, p) if selected is None else selected, force=force)
    finally:
        await src.aclose()
        await dst.aclose()


async def pruned(source: Fake, target: Fake, plan: PrunePlan) -> list[TransferResult]:
    src, dst = source.adapter("src.test"), target.adapter("dst.test")
    try:
        return await prune(src, dst, plan)
    finally:
        await src.aclose()
        await dst.aclose()


def rows(plan: PrunePlan) -> dict[str, list[str]]:
    return {r.target_repository: [t.tag for t in r.tags] for r in plan.repositories}


async def test_only_tags_inside_the_filters_that_the_source_lost_are_candidates():
    source = Fake({"app": {"1.0": digest("a1"), "2.0": digest("a2")}})
    target = Fake({"app": {"1.0": digest("a1"), "2.0": digest("a2"), "0.9": digest("a09"),
                           "dev": digest("d")}})
    plan = await planned(source, target, policy(filters=[Filter(type="tag", value="[0-9]*")]))
    assert rows(plan) == {"app": ["0.9"]}
    [repo] = plan.repositories
    assert (repo.tags[0].reason, repo.tags[0].digest, repo.tags[0].recheck_source) == \
        ("gone from the source", digest("a09"), True)

    [result] = await pruned(source, target, plan)
    assert [(o.tag, o.status) for o in result.tags] == [("0.9", "deleted")]
    assert sorted(target.repos["app"]) == ["1.0", "2.0", "dev"]


async def test_the_namespace_mapping_finds_repositories_gone_from_the_source_and_nothing_else():
    p = policy(dest_namespace="mirror", dest_namespace_replace_count=0,
               filters=[Filter(type="name", value="team/**")])
    source = Fake({"team/app": {"1.0": digest("a")}})
    target = Fake({"mirror/team/app": {"1.0": digest("a"), "0.1": digest("old")},
                   "mirror/team/gone": {"1.0": digest("g")},
                   "mirror/other/x": {"1.0": digest("x")},  # outside the name filter
                   "team/app": {"0.1": digest("old")}})  # outside the namespace
    plan = await planned(source, target, p)
    assert rows(plan) == {"mirror/team/app": ["0.1"], "mirror/team/gone": ["1.0"]}
    assert {r.target_repository: r.sources for r in plan.repositories}["mirror/team/gone"] == ["team/gone"]
    assert plan.notes == []


def test_only_a_prefixing_or_unchanged_mapping_is_undone():
    target = Fake({}).adapter("dst.test")
    assert source_of("mirror/a/b", policy(dest_namespace="mirror", dest_namespace_replace_count=0),
                     target) == "a/b"
    assert source_of("a/b", policy(dest_namespace_replace_count=-1), target) == "a/b"
    assert source_of("other/b", policy(dest_namespace="mirror", dest_namespace_replace_count=0),
                     target) is None
    for count in (-1, 1):
        assert not can_undo_mapping(policy(dest_namespace="mirror", dest_namespace_replace_count=count))
    assert source_of("mirror/b", policy(dest_namespace="mirror", dest_namespace_replace_count=-1),
                     target) is None


async def test_a_mapping_that_cannot_be_undone_prunes_selected_repositories_only_and_says_so():
    p = policy(dest_namespace="mirror", dest_namespace_replace_count=1,
               filters=[Filter(type="name", value="team/**")])
    source = Fake({"team/app": {"1.0": digest("a")}})
    target = Fake({"mirror/app": {"1.0": digest("a"), "0.1": digest("old")},
                   "mirror/gone": {"1.0": digest("g")}})
    plan = await planned(source, target, p)
    assert rows(plan) == {"mirror/app": ["0.1"]}
    assert plan.notes == ["repositories gone from the source not looked for: dest_namespace_replace_count 1 "
                          "cannot be undone from a target path"]


async def test_literal_names_find_a_gone_repository_without_the_catalog():
    p = policy(filters=[Filter(type="name", value="{app,gone}")])
    source = Fake({"app": {"1.0": digest("a")}})
    target = Fake({"app": {"1.0": digest("a")}, "gone": {"1.0": digest("g")},
                   "bystander": {"0.1": digest("b")}})
    plan = await planned(source, target, p)
    assert rows(plan) == {"gone": ["1.0"]}


async def test_over_the_limit_nothing_is_deleted_unless_forced():
    p = policy(prune_limit=2)
    source = Fake({"app": {"1.0": digest("a")}})
    lost = {f"0.{i}": digest(f"old{i}") for i in range(3)}
    target = Fake({"app": {"1.0": digest("a"), **lost}})

    plan = await planned(source, target, p)
    assert plan.count == 3
    assert plan.refused == ("prune refused: 3 tags to delete, more than prune_limit 2; nothing deleted "
                            "(regflow replicate --force, or the run parameter force_prune, deletes them)")
    assert await pruned(source, target, plan) == []
    assert target.deletes == [] and sorted(target.repos["app"]) == ["0.0", "0.1", "0.2", "1.0"]

    forced = await planned(source, target, p, force=True)
    assert forced.refused == ""
    [result] = await pruned(source, target, forced)
    assert result.count("deleted") == 3
    assert sorted(target.repos["app"]) == ["1.0"]


async def test_a_manifest_another_tag_still_uses_is_kept():
    source = Fake({"app": {"stable": digest("s")}})
    target = Fake({"app": {"stable": digest("s"), "1.0": digest("s")}})
    [result] = await pruned(source, target, await planned(source, target, policy()))
    [outcome] = result.tags
    assert outcome.status == "skipped" and "stable still use" in outcome.reason
    assert sorted(target.repos["app"]) == ["1.0", "stable"] and target.deletes == ["app:1.0"]


async def test_gone_tags_sharing_one_manifest_go_together():
    source = Fake({"app": {"2.0": digest("new")}})
    target = Fake({"app": {"2.0": digest("new"), "1.0": digest("old"), "1": digest("old")}})
    [result] = await pruned(source, target, await planned(source, target, policy()))
    assert sorted((o.tag, o.status) for o in result.tags) == [("1", "deleted"), ("1.0", "deleted")]
    assert sorted(target.repos["app"]) == ["2.0"]


async def test_a_signature_goes_only_with_every_tag_of_its_subject():
    old, kept, shared = digest("old"), digest("kept"), digest("shared")
    source = Fake({"app": {"2.0": kept, "stable": shared}})
    target = Fake({"app": {"2.0": kept, sig(kept): digest("sig-kept"),
                           "1.0": old, sig(old): digest("sig-old"),
                           "1.5": shared, "stable": shared, sig(shared): digest("sig-shared"),
                           f"sha256-{digest('untagged').hex}.sig": digest("sig-untagged")}})
    plan = await planned(source, target, policy(filters=[Filter(type="tag", value="[0-9]*")]))
    # 1.5's manifest keeps its tag "stable" (outside the filter too): its signature stays planned out.
    assert rows(plan) == {"app": ["1.0", "1.5", sig(old)]}
    [signature] = [t for t in plan.repositories[0].tags if t.subject_tags]
    assert (signature.subject_tags, signature.reason) == (["1.0"], "attached to 1.0")

    [result] = await pruned(source, target, plan)
    assert {o.tag: o.status for o in result.tags} == {"1.0": "deleted", "1.5": "skipped", sig(old): "deleted"}
    assert sorted(target.repos["app"]) == sorted(["2.0", sig(kept), "1.5", "stable", sig(shared),
                                                  f"sha256-{digest('untagged').hex}.sig"])


async def test_a_signature_stays_when_its_subject_was_not_deleted():
    old = digest("old")
    source = Fake({"app": {}})
    target = Fake({"app": {"1.0": old, sig(old): digest("sig-old")}})
    plan = await planned(source, target, policy(), selected=[])
    assert rows(plan) == {"app": ["1.0", sig(old)]}
    source.repos["app"]["1.0"] = old  # pushed back on the source before the deletion
    [result] = await pruned(source, target, plan)
    assert [(o.tag, o.status) for o in result.tags] == [("1.0", "skipped"), (sig(old), "skipped")]
    assert result.tags[0].reason == f"kept: the source has 1.0 again (at {old})"
    assert result.tags[1].reason == "kept: its subject's tag 1.0 was not deleted"
    assert target.deletes == []


async def test_with_latest_older_tags_the_source_still_has_go_and_without_it_they_stay():
    source = Fake({"app": {"1.0": digest("1"), "2.0": digest("2")}})
    target = Fake({"app": {"1.0": digest("1"), "2.0": digest("2")}})
    newest = [RepositoryTags(repository="app", tags=["2.0"])]  # what discover keeps with latest 1
    plan = await planned(source, target, policy(latest=Latest(count=1)), selected=newest)
    assert rows(plan) == {"app": ["1.0"]}
    assert (plan.repositories[0].tags[0].reason, plan.repositories[0].tags[0].recheck_source) == \
        ("not among the newest 1", False)
    assert rows(await planned(source, target, policy(), selected=newest)) == {}


async def test_a_tag_that_drops_out_of_latest_is_pruned_with_its_signature_though_the_source_keeps_it():
    """The decision (docs): with ``latest``, a mirror of the newest N drops the older tags the
    source still has; what discover selects decides, and a signature goes with its subject."""
    from tasks.discover import discover

    one, two = digest("1"), digest("2")
    tags = {"1.0": one, sig(one): digest("sig-1"), "2.0": two, sig(two): digest("sig-2")}
    source, target = Fake({"app": dict(tags)}), Fake({"app": dict(tags)})
    newest = policy(latest=Latest(count=1))
    src = source.adapter("src.test")
    try:
        selected = await discover(src, newest)
    finally:
        await src.aclose()
    # The signatures take no place among the newest: 2.0's comes with it (the plan finds it).
    assert [(f.repository, f.tags) for f in selected] == [("app", ["2.0"])]
    plan = await planned(source, target, newest, selected=selected)
    assert rows(plan) == {"app": ["1.0", sig(one)]}
    assert [t.reason for t in plan.repositories[0].tags] == ["not among the newest 1", "attached to 1.0"]

    [result] = await pruned(source, target, plan)
    assert [(o.tag, o.status) for o in result.tags] == [("1.0", "deleted"), (sig(one), "deleted")]
    assert sorted(target.repos["app"]) == sorted(["2.0", sig(two)])
    assert sorted(source.repos["app"]) == sorted(tags)  # the source keeps what the mirror dropped


async def test_a_registry_that_deletes_tags_loses_just_the_tag():
    source = Fake({"app": {"2.0": digest("same")}})
    target = Fake({"app": {"2.0": digest("same"), "1.0": digest("same")}}, tag_deletion=True)
    [result] = await pruned(source, target, await planned(source, target, policy()))
    assert [(o.tag, o.status, o.reason) for o in result.tags] == \
        [("1.0", "deleted", "pruned: gone from the source")]
    assert target.repos["app"] == {"2.0": digest("same")}


async def test_a_manifest_the_source_holds_untagged_stays_when_the_policy_copies_untagged():
    old = digest("old")
    source = Fake({"app": {"2.0": digest("new")}}, untagged={old})
    target = Fake({"app": {"2.0": digest("new"), "1.0": old}})
    [result] = await pruned(source, target, await planned(source, target, policy(untagged=True)))
    [outcome] = result.tags
    assert outcome.status == "skipped"
    assert outcome.reason.endswith(f"deletes only by digest, and the source still holds {old} "
                                   "(untagged: true copies it)")
    assert target.deletes == ["app:1.0"]  # the tag alone was tried (refused), never the manifest
    assert "1.0" in target.repos["app"]


async def test_a_source_that_cannot_be_asked_again_means_nothing_is_deleted():
    source = Fake({"app": {"2.0": digest("new")}})
    target = Fake({"app": {"2.0": digest("new"), "1.0": digest("old")}})
    plan = await planned(source, target, policy())
    source.refusing = True
    [result] = await pruned(source, target, plan)
    [outcome] = result.tags
    assert outcome.status == "failed"
    assert outcome.reason.startswith("not deleted: the source could not be asked")
    assert target.deletes == []


async def test_a_stop_leaves_the_rest_undeleted():
    source = Fake({"app": {}})
    target = Fake({"app": {"1.0": digest("a")}})
    plan = await planned(source, target, policy(), selected=[])
    stop = StopSignal()
    stop.set("stopped by user")
    src, dst = source.adapter("src.test"), target.adapter("dst.test")
    [result] = await prune(src, dst, plan, stop)
    await src.aclose()
    await dst.aclose()
    assert [(o.status, o.reason) for o in result.tags] == [("stopped", "not deleted: stopped by user")]


def test_the_execution_shows_deletions_and_a_refusal_fails_it_in_one_line():
    deleted = TransferResult(source_repository="gone", target_repository="gone", tags=[
        TagOutcome(tag="1.0", status="deleted", reason="pruned: gone from the source")])
    ok = summarize("p", Plan(repositories=[]), {},
                   prune=PruneReport(plan=PrunePlan(limit=50), results=[deleted]))
    assert ok.status == "Succeeded" and ok.tasks[0].deleted == 1
    assert ok.message == "1 repositories: 0 tags copied (0 B), 1 deleted, 0 skipped"

    over = PrunePlan.model_validate({"limit": 1, "repositories": [{
        "sources": ["a"], "target_repository": "a",
        "tags": [{"tag": "1", "reason": "gone from the source"},
                 {"tag": "2", "reason": "gone from the source"}]}]})
    refused = summarize("p", Plan(repositories=[]), {}, prune=PruneReport(plan=over))
    assert refused.status == "Failed"
    assert refused.message.startswith(
        "prune refused: 2 tags to delete, more than prune_limit 1; nothing deleted")


@pytest.mark.parametrize("status", ["Failed", "Stopped"])
async def test_a_run_that_did_not_succeed_prunes_nothing(monkeypatch, status):
    called: list[bool] = []

    async def prune_after_run(*args: object, force: bool, stop: StopSignal) -> PruneReport:
        called.append(force)
        return PruneReport()

    async def step(execution: Any, whole: bool = True) -> PruneReport | None:
        return await replicate._prune(None, None, policy(), [], StopSignal(), execution,  # type: ignore[arg-type]
                                      force=True, whole=whole)

    monkeypatch.setattr(replicate, "prune_after_run", prune_after_run)
    monkeypatch.setattr(replicate, "get_run_logger", lambda: logging.getLogger("test"))
    failed_plan = Plan(repositories=[PlannedRepository(source_repository="a", target_repository="a", tags=[],
                                                       error="TransportError: refused")])
    ended = summarize("p", failed_plan, {}) if status == "Failed" else \
        summarize("p", Plan(repositories=[]), {}, stopped_reason="stopped by user")
    assert ended.status == status
    assert await step(ended) is None
    succeeded = summarize("p", Plan(repositories=[]), {})
    assert await step(succeeded, whole=False) is None  # an event's or a retry's run saw part of the source
    assert called == []
    assert await step(succeeded) is not None
    assert called == [True]
