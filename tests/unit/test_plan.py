"""Planning against fake registries: what the plan asks each side and what it hands on."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from adapters.distribution.client import ManifestHead
from adapters.errors import PermissionDeniedError, UnsupportedMediaTypeError
from adapters.oci import Digest, parse_manifest
from policies.models import Policy
from tasks.discover import RepositoryTags
from tasks.plan import PLAN_REPOSITORIES_AT_ONCE, make_plan, plan_each
from tests.support.fake_client import NoRoundTrips

# Referrers cost requests of their own: tests/unit/test_referrers.py counts those.
POLICY = Policy(name="p", src_registry="s", dest_registry="d", referrers=False)
CONFIG = {"mediaType": "application/vnd.oci.image.config.v1+json", "size": 2,
          "digest": str(Digest.of(b"{}"))}
RAW = (b'{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json", "config": '
       + str(CONFIG).replace("'", '"').encode() + b', "layers": []}')
MANIFEST = parse_manifest(RAW, "application/vnd.oci.image.manifest.v1+json")
OLD = Digest.of(b"a schema1 manifest")


class Source(NoRoundTrips):
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    async def get_manifest(self, repository: str, ref: str) -> object:
        self.calls.append(("GET", ref))
        if ref == "old":
            raise UnsupportedMediaTypeError("schema1 manifests are not copied")
        return MANIFEST

    async def head_manifest(self, repository: str, ref: str) -> ManifestHead | None:
        self.calls.append(("HEAD", ref))
        return ManifestHead(OLD if ref == "old" else MANIFEST.digest, "x", 1)


class EmptyTarget(NoRoundTrips):
    async def head_manifest(self, repository: str, ref: str) -> None:
        return None


class Target(NoRoundTrips):
    """A target holding ``tags`` (each at MANIFEST's digest); records what it is asked."""

    def __init__(self, tags: set[str], *, listing: bool = True) -> None:
        self.tags, self.listing = tags, listing
        self.calls: list[str] = []

    async def head_manifest(self, repository: str, ref: str) -> ManifestHead | None:
        self.calls.append(f"HEAD {ref}")
        return ManifestHead(MANIFEST.digest, "x", 1) if ref in self.tags else None

    async def has_tags(self, repository: str) -> bool:
        self.calls.append("any tag?")
        if not self.listing:
            raise PermissionDeniedError("listing tags is not allowed", status=403)
        return bool(self.tags)


def adapter(client: object) -> SimpleNamespace:
    unbounded = SimpleNamespace(min_path_components=None, max_path_components=None)
    return SimpleNamespace(client=client, info=unbounded)


async def test_a_manifest_regflow_refuses_fails_only_its_own_tag() -> None:
    source = Source()
    plan = await make_plan(adapter(source), adapter(EmptyTarget()), POLICY,  # type: ignore[arg-type]
                           [RepositoryTags(repository="app", tags=["new", "old"])])

    [repository] = plan.repositories
    assert repository.error == ""
    assert [(t.tag, t.digest, t.action) for t in repository.tags] == [
        ("new", MANIFEST.digest, "copy"), ("old", OLD, "copy")]
    [spec] = plan.specs(POLICY)
    assert [t.manifest for t in spec.tags] == [MANIFEST, None]  # the transfer GETs "old" and says why
    assert spec.new_on_target
    assert sorted(source.calls) == [("GET", "new"), ("GET", "old"), ("HEAD", "old")]


async def plan_against(target: Target, tags: list[str]) -> dict[str, str]:
    plan = await make_plan(adapter(Source()), adapter(target), POLICY,  # type: ignore[arg-type]
                           [RepositoryTags(repository="app", tags=tags)])
    [repository] = plan.repositories
    assert repository.error == ""
    return {t.tag: t.action for t in repository.tags}


async def test_a_repository_new_on_the_target_costs_two_requests_there_not_one_per_tag() -> None:
    target = Target(set())
    actions = await plan_against(target, ["1", "2", "3", "latest"])
    assert actions == dict.fromkeys(["1", "2", "3", "latest"], "copy")
    assert target.calls == ["HEAD 1", "any tag?"]


async def test_a_repository_on_the_target_gets_a_head_per_tag() -> None:
    target = Target({"2", "3"})  # the first tag is missing, others are there
    actions = await plan_against(target, ["1", "2", "3", "latest"])
    assert actions == {"1": "copy", "2": "identical", "3": "identical", "latest": "copy"}
    assert target.calls[:2] == ["HEAD 1", "any tag?"]
    assert sorted(target.calls[2:]) == ["HEAD 2", "HEAD 3", "HEAD latest"]

    resync = Target({"1", "2", "3", "latest"})
    assert set((await plan_against(resync, ["1", "2", "3", "latest"])).values()) == {"identical"}
    assert "any tag?" not in resync.calls and len(resync.calls) == 4


async def test_a_target_that_will_not_list_tags_is_asked_tag_by_tag() -> None:
    target = Target({"3"}, listing=False)
    actions = await plan_against(target, ["1", "2", "3"])
    assert actions == {"1": "copy", "2": "copy", "3": "identical"}
    assert sorted(target.calls) == ["HEAD 1", "HEAD 2", "HEAD 3", "any tag?"]


async def test_two_tags_are_not_worth_asking_for_any_tag() -> None:
    target = Target(set())
    await plan_against(target, ["1", "latest"])
    assert sorted(target.calls) == ["HEAD 1", "HEAD latest"]


async def test_repositories_are_planned_a_few_at_a_time_so_the_first_plan_comes_early() -> None:
    touched: set[str] = set()

    class Touched(Target):
        async def head_manifest(self, repository: str, ref: str) -> ManifestHead | None:
            touched.add(repository)
            await asyncio.sleep(0)  # a round trip: the others get their turn
            return None

    found = [RepositoryTags(repository=f"app{i}", tags=["1", "2", "3"]) for i in range(80)]
    seen_at_first: set[str] | None = None
    async for _, repository in plan_each(adapter(Source()), adapter(Touched(set())),  # type: ignore[arg-type]
                                         POLICY, found):
        if seen_at_first is None:
            seen_at_first = set(touched)
            assert [t.action for t in repository.tags] == ["copy"] * 3
    # (the consumer resumes a few loop turns after the first plan is done: a few more started)
    assert seen_at_first is not None and len(seen_at_first) <= 2 * PLAN_REPOSITORIES_AT_ONCE
    assert len(touched) == 80


async def test_a_dry_run_measures_a_missing_tag_from_the_manifest_the_plan_read() -> None:
    source = Source()
    plan = await make_plan(adapter(source), adapter(EmptyTarget()), POLICY,  # type: ignore[arg-type]
                           [RepositoryTags(repository="app", tags=["new"])], measure=True)
    [repository] = plan.repositories
    assert repository.tags[0].bytes == MANIFEST.size + CONFIG["size"]
    assert source.calls == [("GET", "new")]  # not again by digest to count its blobs


async def test_a_pinned_tag_is_read_by_its_digest_not_by_its_name() -> None:
    source = Source()
    pinned = MANIFEST.digest
    plan = await make_plan(adapter(source), adapter(Target({"held"})), POLICY,  # type: ignore[arg-type]
                           [RepositoryTags(repository="app", tags=["new", "held", "free"])],
                           pins={"app": {"new": pinned, "held": pinned}})
    [repository] = plan.repositories
    assert {t.tag: (t.digest, t.action) for t in repository.tags} == {
        "new": (pinned, "copy"), "held": (pinned, "identical"), "free": (MANIFEST.digest, "copy")}
    # The first run's digest, never the tag's name, for the pinned ones; the name for the rest.
    assert sorted(source.calls) == [("GET", "free"), ("GET", str(pinned)), ("HEAD", str(pinned))]


class Untagged(Target):
    """A target without a tag that holds MANIFEST untagged, by its digest."""

    async def head_manifest(self, repository: str, ref: str) -> ManifestHead | None:
        self.calls.append(f"HEAD {ref}")
        return ManifestHead(MANIFEST.digest, "x", 1) if ref == str(MANIFEST.digest) else None


async def test_a_digest_is_asked_by_digest_even_when_the_target_has_no_tag() -> None:
    """"No tag at all" says nothing about untagged manifests: an untagged-only repository (its
    first entry a digest) is asked digest by digest, and in a mixed one the shortcut spares the
    tags' HEADs only."""
    held, other = str(MANIFEST.digest), str(Digest.of(b"another untagged manifest"))
    untagged_only = Untagged(set())
    assert await plan_against(untagged_only, [other, held, str(OLD)]) == {
        other: "copy", held: "identical", str(OLD): "copy"}
    assert sorted(untagged_only.calls) == sorted(f"HEAD {d}" for d in (other, held, str(OLD)))

    mixed = Untagged(set())
    assert await plan_against(mixed, ["1", "2", "3", held]) == {
        "1": "copy", "2": "copy", "3": "copy", held: "identical"}
    assert mixed.calls == ["HEAD 1", "any tag?", f"HEAD {held}"]
