"""The harbor adapter against an in-memory Harbor shaped as its swagger (tests/support/fake_harbor):
paging through projects, repositories and artifacts, label filters and accessories in discovery,
project creation, robot-account credentials and the error paths."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import httpx
import pytest
from pydantic import SecretStr

import adapters
from adapters import harbor
from adapters.base import Accessory, Artifact, ArtifactLister
from adapters.endpoint import Endpoint
from adapters.errors import (
    AuthenticationError,
    ConfigError,
    ContentError,
    PermissionDeniedError,
    RateLimitedError,
    ServerError,
)
from adapters.harbor import HarborAdapter
from adapters.native import NativeAdapter
from adapters.oci import Digest
from policies.filters import select_artifacts, select_by_labels
from policies.models import Filter, Policy
from tasks.discover import Resource, discover
from tests.support.fake_harbor import FakeHarbor, project_json, reply

ROBOT, ROBOT_SECRET = "robot$ci", "s3cret-Robot-pass"


def digest(n: int | str) -> Digest:
    return Digest.of(f"artifact-{n}".encode())


def cosign(subject: Digest, suffix: str) -> str:
    return f"sha256-{subject.hex}.{suffix}"


def flt(type_: str, value: str, decoration: str = "matches") -> Filter:
    return Filter.model_validate({"type": type_, "value": value, "decoration": decoration})


def policy(*filters: Filter) -> Policy:
    return Policy(name="p", src_registry="src", dest_registry="dst", filters=list(filters))


def basic_user(request: httpx.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    if not header.startswith("Basic "):
        return None
    return base64.b64decode(header[6:]).decode().partition(":")[0]


@pytest.fixture
def fake() -> FakeHarbor:
    return FakeHarbor(users={ROBOT: ROBOT_SECRET})


@pytest.fixture
async def adapter(fake: FakeHarbor) -> AsyncIterator[HarborAdapter]:
    endpoint = Endpoint(url=fake.url, username=ROBOT, password=SecretStr(ROBOT_SECRET))
    a = HarborAdapter(endpoint, transport=fake.transport())
    try:
        yield a
    finally:
        await a.aclose()


def pages_asked(fake: FakeHarbor, path: str) -> list[str]:
    return [r.url.params["page"] for r in fake.seen("GET", path)]


# -- listing ------------------------------------------------------------------------------------


async def test_repositories_page_through_projects_then_repositories(fake, adapter):
    fake.max_page_size = 2  # as a server that serves less than asked: paging must follow it
    fake.add_project("open", public=True)
    for i in range(3):
        fake.add_artifact(f"team/app{i}", digest(i), tags=["1"])
    fake.add_artifact("tools/deep/lint", digest("lint"), tags=["1"])
    fake.add_project("empty")

    names = [n async for n in adapter.list_repositories()]

    assert sorted(names) == ["team/app0", "team/app1", "team/app2", "tools/deep/lint"]
    assert pages_asked(fake, "/api/v2.0/projects") == ["1", "2"]  # 4 projects, 2 a page
    assert pages_asked(fake, "/api/v2.0/projects/team/repositories") == ["1", "2"]
    first = fake.seen("GET", "/api/v2.0/projects")[0]
    assert first.url.params["page_size"] == str(harbor.API_PAGE_SIZE) == "100"
    # The public flag was learned while listing: no further request for it.
    assert await adapter.project_public("open/x") is True
    assert await adapter.project_public("team/app0") is False
    assert not fake.seen("GET", "/api/v2.0/projects/open")
    assert await adapter.project_public("missing/x") is None


async def test_paging_follows_the_total_count_when_there_is_no_link(fake, adapter):
    fake.max_page_size, fake.links = 2, False
    for name in ("a", "b", "c", "d", "e"):
        fake.add_artifact(f"{name}/app", digest(name), tags=["1"])
    names = [n async for n in adapter.list_repositories()]
    assert sorted(names) == ["a/app", "b/app", "c/app", "d/app", "e/app"]
    assert pages_asked(fake, "/api/v2.0/projects") == ["1", "2", "3"]


async def test_named_repositories_skip_the_walk(fake, adapter):
    names = [n async for n in adapter.list_repositories(["team/app", "team/other"])]
    assert names == ["team/app", "team/other"]
    assert fake.requests == []


async def test_endless_paging_is_cut(monkeypatch):
    monkeypatch.setattr(harbor, "MAX_API_PAGES", 3)

    def forever(request: httpx.Request) -> httpx.Response:
        return reply(200, [project_json("p")], headers={
            "Link": '</api/v2.0/projects?page=1&page_size=100>; rel="next"', "X-Total-Count": "9"})

    a = HarborAdapter(Endpoint(url="http://harbor.test"), transport=httpx.MockTransport(forever))
    try:
        with pytest.raises(ContentError, match="did not end after 3 pages"):
            [p async for p in a.api.pages("/projects")]
    finally:
        await a.aclose()


async def test_a_next_link_to_another_host_is_not_followed():
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path.endswith("/repositories"):
            return reply(200, [])
        return reply(200, [project_json("p")], headers={
            "Link": '<http://elsewhere.test/api/v2.0/projects?page=2>; rel="next"'})

    endpoint = Endpoint(url="http://harbor.test", username=ROBOT, password=SecretStr(ROBOT_SECRET))
    a = HarborAdapter(endpoint, transport=httpx.MockTransport(handler))
    try:
        assert [n async for n in a.list_repositories()] == []
    finally:
        await a.aclose()
    assert {r.url.host for r in seen} == {"harbor.test"}
    assert len(seen) == 2  # the project page and its repositories, nothing on elsewhere.test


async def test_artifacts_page_and_carry_labels_types_and_accessories(fake, adapter):
    fake.max_page_size = 2
    subject = digest("1.0")
    fake.add_artifact("library/team/app", subject, tags=["1.0", "latest"], labels=["prod", "team-a"],
                      accessories=[("signature.cosign", digest("sig"), cosign(subject, "sig")),
                                   ("harbor.sbom", digest("sbom"), None)])
    fake.add_artifact("library/team/app", digest("chart"), tags=["0.1.0"], type_="CHART")
    fake.add_artifact("library/team/app", digest("untagged"))

    artifacts = await adapter.list_artifacts("library/team/app")

    signature = Accessory(type="signature.cosign", digest=digest("sig"), subject_digest=subject)
    sbom = Accessory(type="harbor.sbom", digest=digest("sbom"), subject_digest=subject)
    pushed = datetime(2024, 5, 1, 10, tzinfo=UTC)  # the fake's push_time; its configs name no time
    assert artifacts == [
        Artifact(digest=subject, type="IMAGE", tags=("1.0", "latest"), labels=("prod", "team-a"),
                 accessories=(signature, sbom), created=pushed),
        Artifact(digest=digest("chart"), type="CHART", tags=("0.1.0",), created=pushed),
        Artifact(digest=digest("untagged"), type="IMAGE", created=pushed),
    ]
    asked = fake.seen("GET", r"/api/v2.0/projects/library/repositories/.*/artifacts")
    assert [r.url.params["page"] for r in asked] == ["1", "2"]
    # Encoded twice inside the path, as Harbor's router needs; the Link kept that encoding.
    assert all(b"/repositories/team%252Fapp/artifacts" in r.url.raw_path for r in asked)
    assert all(r.url.params[p] == "true" for r in asked for p in ("with_tag", "with_label", "with_accessory"))


async def test_a_repository_outside_a_project_is_refused(adapter):
    with pytest.raises(ConfigError, match="project/repository"):
        await adapter.list_artifacts("app")


@pytest.mark.parametrize(
    ("type_", "suffix"),
    [("signature.cosign", "sig"), ("attestation.intoto", "att"), ("harbor.sbom", "sbom"),
     ("signature.notation", None), ("accelerator.nydus", None)],
)
def test_accessories_take_cosign_tags(type_, suffix):
    subject = digest("s")
    accessory = Accessory(type=type_, digest=digest("a"), subject_digest=subject)
    assert accessory.cosign_tag == (cosign(subject, suffix) if suffix else None)


# -- label filters ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("labels", "filters", "expected"),
    [
        (["prod", "team-a"], [flt("label", "prod,team-a")], True),
        (["prod"], [flt("label", "prod, team-a")], False),  # matches: every listed label
        (["prod", "team-a"], [flt("label", "prod,team-a", "excludes")], False),
        # Harbor's excludes drops only an artifact carrying all the listed labels...
        (["prod"], [flt("label", "prod,team-a", "excludes")], True),
        # ...two filters exclude either one.
        (["prod"], [flt("label", "prod", "excludes"), flt("label", "team-a", "excludes")], False),
        ([], [flt("label", " , ")], True),
    ],
)
def test_label_filter_semantics(labels, filters, expected):
    assert select_by_labels(labels, filters) is expected


def test_select_artifacts_applies_tag_label_and_resource_filters():
    image = Artifact(digest=digest(1), tags=("1.0", "1.0-debug", "latest"), labels=("prod",))
    unlabelled = Artifact(digest=digest(2), tags=("1.1",))
    chart = Artifact(digest=digest(3), type="CHART", tags=("1.2",), labels=("prod",))
    untagged = Artifact(digest=digest(4), labels=("prod",))
    everything = [image, unlabelled, chart, untagged]

    chosen = select_artifacts(everything, [flt("label", "prod"), flt("tag", "1.*"),
                                           flt("tag", "*-debug", "excludes")])
    assert chosen == [image.model_copy(update={"tags": ("1.0",)}), chart]
    assert select_artifacts(everything, [flt("resource", "image"), flt("label", "prod")]) == [image]
    assert select_artifacts(everything, [flt("resource", "chart")]) == [image, unlabelled, chart]


# -- discovery with labels and accessories ------------------------------------------------------


def seed_signed_app(fake: FakeHarbor) -> Digest:
    """library/app: 1.0 labelled prod with a tagged cosign signature and attestation and two
    untagged accessories; 2.0 not labelled, signed too."""
    one, two = digest("1.0"), digest("2.0")
    fake.add_artifact("library/app", one, tags=["1.0"], labels=["prod"], accessories=[
        ("signature.cosign", digest("sig-1"), cosign(one, "sig")),
        ("attestation.intoto", digest("att-1"), cosign(one, "att")),
        ("harbor.sbom", digest("sbom-1"), None),
        ("signature.notation", digest("notation-1"), None),
    ])
    fake.add_artifact("library/app", two, tags=["2.0"], accessories=[
        ("signature.cosign", digest("sig-2"), cosign(two, "sig"))])
    fake.add_artifact("library/other", digest("other"), tags=["1.0"])
    return one


async def test_discover_keeps_labelled_artifacts_and_their_tagged_accessories(fake, adapter):
    one = seed_signed_app(fake)
    found = await discover(adapter, policy(flt("label", "prod"), flt("tag", "*.0")))
    assert [(f.repository, f.tags) for f in found] == [
        ("library/app", ["1.0", cosign(one, "sig"), cosign(one, "att")])]


async def test_discover_without_label_filters_takes_every_artifact(fake, adapter):
    one = seed_signed_app(fake)
    found = await discover(adapter, policy(flt("tag", "2.*", "excludes")))
    assert {f.repository: f.tags for f in found} == {
        "library/app": ["1.0", cosign(one, "sig"), cosign(one, "att")], "library/other": ["1.0"]}


async def test_discover_for_an_event_on_the_signature_itself(fake, adapter):
    one = seed_signed_app(fake)
    labelled = policy(flt("label", "prod"), flt("tag", "*.0"))
    sig = Resource(repository="library/app", tag=cosign(one, "sig"))
    found = await discover(adapter, labelled, [sig])
    assert [(f.repository, f.tags) for f in found] == [("library/app", [cosign(one, "sig")])]
    # The same event on an unlabelled artifact's signature copies nothing.
    two_sig = Resource(repository="library/app", tag=cosign(digest("2.0"), "sig"))
    assert await discover(adapter, labelled, [two_sig]) == []


async def test_with_referrers_off_an_accessory_travels_only_when_the_tag_filters_select_it(fake, adapter):
    """``referrers: false``: cosign's tags are tags like any other (as on a tag-list source)."""
    one = seed_signed_app(fake)
    off = Policy(name="p", src_registry="src", dest_registry="dst", referrers=False,
                 filters=[flt("label", "prod"), flt("tag", "*.0")])
    assert [(f.repository, f.tags) for f in await discover(adapter, off)] == [("library/app", ["1.0"])]
    # '*' selects them: the selected (labelled) artifact's come, the unlabelled one's do not.
    every = off.model_copy(update={"filters": [flt("label", "prod"), flt("tag", "*")]})
    assert [(f.repository, f.tags) for f in await discover(adapter, every)] == [
        ("library/app", ["1.0", cosign(one, "sig"), cosign(one, "att")])]
    signatures_only = off.model_copy(update={"filters": [flt("label", "prod"), flt("tag", "{*.0,*.sig}")]})
    assert [(f.repository, f.tags) for f in await discover(adapter, signatures_only)] == [
        ("library/app", ["1.0", cosign(one, "sig")])]


async def test_label_filters_need_a_source_that_lists_artifacts():
    native = NativeAdapter(Endpoint(url="http://reg.test"))
    assert not isinstance(native, ArtifactLister)
    try:
        with pytest.raises(ConfigError, match="label"):
            await discover(native, policy(flt("name", "a/b"), flt("label", "prod")))
    finally:
        await native.aclose()


# -- projects on the target ---------------------------------------------------------------------


async def test_prepare_creates_only_missing_projects_public_only_when_all_sources_are(fake, adapter):
    fake.add_project("existing")
    await adapter.prepare_for_push(["existing/a", "new/a", "new/sub/b", "pub/x"],
                                   public={"new/a": True, "new/sub/b": False, "pub/x": True})
    assert fake.created == [{"project_name": "new", "metadata": {"public": "false"}},
                            {"project_name": "pub", "metadata": {"public": "true"}}]
    heads = fake.seen("HEAD", "/api/v2.0/projects")
    assert sorted(r.url.params["project_name"] for r in heads) == ["existing", "new", "pub"]
    assert all(basic_user(r) == ROBOT for r in fake.seen("POST", "/api/v2.0/projects"))


async def test_prepare_accepts_a_project_created_meanwhile(fake, adapter):
    fake.fail("POST", "/api/v2.0/projects", 409)
    await adapter.prepare_for_push(["raced/app"])
    assert fake.created == []  # the scripted 409 answered before the fake stored anything
    assert len(fake.seen("POST", "/api/v2.0/projects")) == 1


async def test_prepare_reports_a_refused_creation(fake, adapter):
    fake.fail("POST", "/api/v2.0/projects", 403)
    with pytest.raises(PermissionDeniedError, match="403"):
        await adapter.prepare_for_push(["locked/app"])


async def test_prepare_refuses_a_single_component_path(adapter):
    with pytest.raises(ConfigError):
        await adapter.prepare_for_push(["app"])


# -- credentials and health ---------------------------------------------------------------------


async def test_robot_credentials_reach_the_api_and_the_token_service_intact(fake, adapter):
    seed_signed_app(fake)
    assert (await adapter.health()).status == "healthy"
    [n async for n in adapter.list_repositories()]
    await adapter.list_tags("library/app")

    api = [r for r in fake.requests if r.url.path.startswith("/api/") and r.url.path != "/api/v2.0/ping"]
    tokens = fake.seen("GET", "/service/token")
    assert api and tokens
    assert {basic_user(r) for r in api + tokens} == {ROBOT}  # '$' and all
    assert basic_user(fake.seen("GET", "/api/v2.0/ping")[0]) is None  # ping needs none
    assert {r.url.host for r in fake.requests} == {"harbor.test"}


async def test_refused_credentials(fake):
    endpoint = Endpoint(url=fake.url, username=ROBOT, password=SecretStr("wrong-password"))
    a = HarborAdapter(endpoint, transport=fake.transport())
    try:
        health = await a.health()
        assert health.status == "unhealthy" and health.reason.startswith("credentials refused")
        with pytest.raises(AuthenticationError) as caught:
            [n async for n in a.list_repositories()]
        assert caught.value.status == 401 and not caught.value.transient
        assert "wrong-password" not in str(caught.value) and "wrong-password" not in health.reason
    finally:
        await a.aclose()


async def test_health_falls_back_to_v2_without_a_harbor_api(fake, adapter):
    fake.fail("GET", "/api/v2.0/ping", 404)
    assert (await adapter.health()).status == "healthy"
    assert fake.seen("GET", "/v2/")


async def test_health_reports_an_unreachable_harbor(fake, adapter):
    fake.fail("GET", "/api/v2.0/ping", 503)
    health = await adapter.health()
    assert health.status == "unhealthy" and "503" in health.reason


# -- errors -------------------------------------------------------------------------------------


async def test_server_errors_are_transient(fake, adapter):
    fake.add_artifact("library/app", digest(1), tags=["1"])
    fake.fail("GET", "/api/v2.0/projects/library/repositories/app/artifacts", 503)
    with pytest.raises(ServerError) as caught:
        await adapter.list_artifacts("library/app")
    assert caught.value.transient and caught.value.status == 503 and caught.value.codes == ("FAULT",)
    assert len(await adapter.list_artifacts("library/app")) == 1  # the next attempt goes through


async def test_rate_limits_are_transient_with_their_delay(fake, adapter):
    fake.fail("GET", "/api/v2.0/projects", 429, headers={"Retry-After": "7"})
    with pytest.raises(RateLimitedError) as caught:
        [n async for n in adapter.list_repositories()]
    assert caught.value.transient and caught.value.retry_after == 7


async def test_oversized_and_malformed_answers_are_content_errors(fake, adapter, monkeypatch):
    for i in range(5):
        fake.add_artifact("library/app", digest(i), tags=[str(i)])
    monkeypatch.setattr(harbor, "MAX_API_RESPONSE_BYTES", 1024)
    with pytest.raises(ContentError, match="over 1024 bytes"):
        await adapter.list_artifacts("library/app")
    monkeypatch.undo()
    fake.artifacts["library/app"][0]["digest"] = "sha256:not-hex"
    with pytest.raises(ContentError, match="artifacts of library/app"):
        await adapter.list_artifacts("library/app")


# -- registration -------------------------------------------------------------------------------


async def test_info_and_factory(monkeypatch):
    monkeypatch.setitem(adapters.ADAPTERS, "harbor", HarborAdapter)
    info = adapters.adapter_info("harbor")
    assert info.resource_types == ("image", "artifact", "chart")
    assert info.filters == ("name", "tag", "label", "resource")
    assert "event_based" in info.triggers
    assert (info.min_path_components, info.supports_tag_deletion, info.supports_mount) == (2, True, True)
    created = adapters.create_adapter("harbor", Endpoint(url="https://harbor.example"))
    try:
        assert isinstance(created, HarborAdapter) and isinstance(created, ArtifactLister)
    finally:
        await created.aclose()


async def test_the_prepare_step_carries_a_harbor_source_projects_visibility_to_a_harbor_target(
        fake: FakeHarbor, adapter: HarborAdapter) -> None:
    from adapters.native import NativeAdapter
    from tasks.plan import Plan, PlannedRepository
    from tasks.prepare import prepare

    source_fake = FakeHarbor(host="source.test", users={ROBOT: ROBOT_SECRET})
    source_fake.add_project("open", public=True)
    source_fake.add_project("closed", public=False)
    source = HarborAdapter(Endpoint(url=source_fake.url, username=ROBOT, password=SecretStr(ROBOT_SECRET)),
                           transport=source_fake.transport())
    plan = Plan(repositories=[
        PlannedRepository(source_repository="open/app", target_repository="mirror-open/app", tags=[]),
        PlannedRepository(source_repository="closed/db", target_repository="mirror-closed/db", tags=[]),
    ])
    try:
        await prepare(adapter, plan, source)
    finally:
        await source.aclose()
    assert fake.created == [{"project_name": "mirror-closed", "metadata": {"public": "false"}},
                            {"project_name": "mirror-open", "metadata": {"public": "true"}}]

    # A source without projects (plain distribution): projects are created private, and the
    # target is asked without a visibility map.
    fake.created.clear()
    plain = NativeAdapter(Endpoint(url="http://plain.test"))
    await prepare(adapter, Plan(repositories=[
        PlannedRepository(source_repository="app", target_repository="mirror-plain/app", tags=[])]), plain)
    await plain.aclose()
    assert fake.created == [{"project_name": "mirror-plain", "metadata": {"public": "false"}}]


async def test_discover_names_the_selected_repositories_before_listing_their_tags(fake, adapter):
    seed_signed_app(fake)
    heard: list[list[str]] = []
    requests_then: list[int] = []

    def selected(names: list[str]) -> None:  # the flow starts the target's token fetches here
        heard.append(names)
        requests_then.append(len(fake.requests))

    found = await discover(adapter, policy(flt("tag", "2.*", "excludes")), on_selected=selected)

    assert heard == [["library/app", "library/other"]]
    assert requests_then[0] < len(fake.requests)  # the tags were read after it heard
    assert {f.repository for f in found} == {"library/app", "library/other"}
