"""Version selection and untagged artifacts (issue 17, points 2 and 4): tags read as versions,
``semver:<range>`` tag filters, ``latest`` by version and by time, and digest-only artifacts from
an artifact listing (the in-memory Harbor of tests/support/fake_harbor)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from adapters.base import Artifact
from adapters.endpoint import Endpoint
from adapters.errors import ConfigError, NotFoundError
from adapters.harbor import HarborAdapter, _Artifact
from adapters.native import NativeAdapter
from adapters.oci import OCI_CONFIG, OCI_INDEX, OCI_MANIFEST, Digest, parse_manifest
from adapters.oci.created import parse_created
from policies.filters import select_artifacts, select_tags
from policies.models import Filter, Latest, Policy, parse_config
from policies.versions import newest_by_time, newest_by_version, parse_range, range_matcher, tag_version
from tasks.created import created_times
from tasks.discover import Resource, discover, is_digest_reference, keep_newest
from tests.support.fake_harbor import FakeHarbor, artifact_json

# A repository as users keep it: releases with and without 'v', floating partial versions,
# pre-releases, Helm's '_' for '+', variant suffixes, and tags that are no version at all.
TAGS = ["1.0.0", "v1.2.0", "1.2", "1.2.5", "V1.3.0-rc.1", "1.3.0-rc.2", "1.3.0", "1.4.0-beta",
        "1.25", "2", "2.0.0_build.7", "3.0.0-alpine", "01.2.3", "1.2.3.4", "latest", "nightly",
        "sha-4f2a", ""]

VERSIONS = {
    "1.0.0": "1.0.0", "v1.2.0": "1.2.0", "1.2": "1.2.0", "1.2.5": "1.2.5", "V1.3.0-rc.1": "1.3.0-rc.1",
    "1.3.0-rc.2": "1.3.0-rc.2", "1.3.0": "1.3.0", "1.4.0-beta": "1.4.0-beta", "1.25": "1.25.0",
    "2": "2.0.0", "2.0.0_build.7": "2.0.0", "3.0.0-alpine": "3.0.0-alpine",
}


@pytest.mark.parametrize("tag", TAGS)
def test_which_tags_are_versions(tag: str) -> None:
    found = tag_version(tag)
    assert (str(found) if found is not None else None) == VERSIONS.get(tag)


@pytest.mark.parametrize(("spec", "expected"), [
    (">=1.2 <2", ["v1.2.0", "1.2", "1.2.5", "1.3.0", "1.25"]),
    ("^1.2", ["v1.2.0", "1.2", "1.2.5", "1.3.0", "1.25"]),
    ("~1.2", ["v1.2.0", "1.2", "1.2.5"]),
    ("1.x", ["1.0.0", "v1.2.0", "1.2", "1.2.5", "1.3.0", "1.25"]),
    ("1.2.x || >=2", ["v1.2.0", "1.2", "1.2.5", "2", "2.0.0_build.7"]),
    # A range naming a pre-release takes pre-releases of that MAJOR.MINOR.PATCH only.
    (">=1.3.0-rc.2 <2", ["1.3.0-rc.2", "1.3.0", "1.25"]),
    (">=1.3.0-rc.1 <1.4", ["V1.3.0-rc.1", "1.3.0-rc.2", "1.3.0"]),
    ("*", ["1.0.0", "v1.2.0", "1.2", "1.2.5", "1.3.0", "1.25", "2", "2.0.0_build.7"]),
    ("=2.0.0", ["2", "2.0.0_build.7"]),  # build metadata plays no part
    (">= 1.25  <2", ["1.25"]),  # node-semver's spacing
    ("^v1.3", ["1.3.0", "1.25"]),  # and its 'v' after an operator
    ("1.2.5 - 2", ["1.2.5", "1.3.0", "1.25", "2", "2.0.0_build.7"]),
])
def test_semver_filter_against_the_table(spec: str, expected: list[str]) -> None:
    assert select_tags(TAGS, [tag(f"semver:{spec}")]) == expected


def test_semver_excludes_keeps_what_is_no_version_and_what_is_outside() -> None:
    kept = select_tags(TAGS, [tag("semver:>=1.2 <2", "excludes")])
    assert kept == ["1.0.0", "V1.3.0-rc.1", "1.3.0-rc.2", "1.4.0-beta", "2", "2.0.0_build.7",
                    "3.0.0-alpine", "01.2.3", "1.2.3.4", "latest", "nightly", "sha-4f2a", ""]


def test_semver_and_glob_filters_narrow_together() -> None:
    assert select_tags(TAGS, [tag("semver:^1"), tag("v*")]) == ["v1.2.0"]


@pytest.mark.parametrize(("value", "message"), [
    ("semver:>=1.2 <<2", "invalid semver range '>=1.2 <<2': cannot read '<<2'"),
    ("semver:latest", "invalid semver range 'latest': cannot read 'latest'"),
    ("semver:", "'semver:' needs a range after it"),
    ("semver:1.x ||", "semver range '1.x ||' has an empty alternative around '||'"),
])
def test_a_bad_range_is_one_line_naming_it_at_apply(value: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"version": 1, "policies": [{"name": "p", "src_registry": "a", "dest_registry": "b",
                                                   "filters": [{"type": "tag", "value": value}]}]})
    text = str(caught.value)
    assert "\n" not in text and text.startswith("policies[0].filters[0].value: ") and message in text


def test_semver_is_for_tag_filters_only() -> None:
    with pytest.raises(ValueError, match="'semver:' selects tags; a name filter takes a glob"):
        Filter.model_validate({"type": "name", "value": "semver:^1"})


def test_a_range_is_parsed_once_and_an_error_repeats_alike() -> None:
    assert parse_range(">=1.2 <2") is parse_range(">=1.2 <2")
    for _ in range(2):
        with pytest.raises(ConfigError, match="cannot read '<<2'"):
            parse_range(">=1 <<2")


# -- latest ---------------------------------------------------------------------------------------


def test_newest_by_version_drops_what_is_no_version_and_breaks_ties_by_text() -> None:
    assert newest_by_version(TAGS, 4) == ["3.0.0-alpine", "2", "2.0.0_build.7", "1.25"]
    # 1.2 and v1.2.0 are one version: the text decides, the same on every run.
    assert newest_by_version(["v1.2.0", "1.2", "1.0.0"], 1) == ["1.2"]
    assert newest_by_version(["1.2", "v1.2.0", "1.0.0"], 2) == ["1.2", "v1.2.0"]
    assert newest_by_version(["latest", "nightly"], 5) == []
    # Pre-releases order below their release, numerically by identifier.
    assert newest_by_version(["1.0.0-rc.2", "1.0.0-rc.10", "1.0.0", "0.9.9"], 4) == \
        ["1.0.0", "1.0.0-rc.10", "1.0.0-rc.2", "0.9.9"]


def test_newest_by_time_ranks_unknown_times_last_and_ties_by_text() -> None:
    t0 = datetime(2024, 5, 1, 10, tzinfo=UTC)
    times = {"b": t0, "a": t0, "new": t0 + timedelta(days=1), "unknown": None, "also-unknown": None,
             # Two hours east of UTC: 11:00 there is 09:00 UTC, older than t0.
             "east": datetime(2024, 5, 1, 11, tzinfo=timezone(timedelta(hours=2))),
             "naive": datetime(2024, 4, 1)}  # no zone: read as UTC
    assert newest_by_time(times, 10) == ["new", "a", "b", "east", "naive", "also-unknown", "unknown"]
    assert newest_by_time(times, 2) == ["new", "a"]


def test_keep_newest_keeps_the_given_order() -> None:
    tags = ["1.0.0", "latest", "2.0.0", "1.5.0"]
    assert keep_newest(Latest(count=2), tags, {}) == ["2.0.0", "1.5.0"]
    times = {"1.0.0": datetime(2024, 3, 1, tzinfo=UTC), "latest": datetime(2024, 4, 1, tzinfo=UTC)}
    assert keep_newest(Latest(count=2, order="created"), tags, times) == ["1.0.0", "latest"]


def test_latest_count_is_bounded_and_strict() -> None:
    for bad in (0, -1, 10_001, "5", 2.5, True):
        with pytest.raises(ValueError):
            Latest.model_validate({"count": bad})
    assert Latest.model_validate({"count": 5, "order": "created"}).order == "created"


# -- created times --------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("2024-05-01T10:00:00.123456789Z", datetime(2024, 5, 1, 10, 0, 0, 123456, tzinfo=UTC)),
    ("2024-05-01T12:00:00+02:00", datetime(2024, 5, 1, 10, tzinfo=UTC)),
    ("2024-05-01T10:00:00", datetime(2024, 5, 1, 10, tzinfo=UTC)),
    ("1970-01-01T00:00:00Z", None),  # ko's and Bazel's reproducible builds: says nothing
    ("0001-01-01T00:00:00.000Z", None),  # Go's zero time: no time at all
    ("yesterday", None), ("", None), (None, None), (1714557600, None),
])
def test_created_is_read_leniently(text: object, expected: datetime | None) -> None:
    assert parse_created(text) == expected


def test_harbor_artifacts_carry_their_config_created_else_their_push_time() -> None:
    digest = "sha256:" + "a" * 64
    image = artifact_json(digest, tags=["1.0"])
    image["extra_attrs"]["created"] = "2023-02-03T04:05:06Z"
    assert _Artifact.model_validate(image).hand_off().created == datetime(2023, 2, 3, 4, 5, 6, tzinfo=UTC)
    index = artifact_json(digest, tags=["1.0"])
    index["extra_attrs"], index["push_time"] = None, "2024-05-01T10:00:00.000Z"
    assert _Artifact.model_validate(index).hand_off().created == datetime(2024, 5, 1, 10, tzinfo=UTC)
    reproducible = artifact_json(digest, tags=["1.0"])
    reproducible["extra_attrs"]["created"] = "1970-01-01T00:00:00Z"
    reproducible["push_time"] = "2024-06-01T00:00:00Z"
    assert _Artifact.model_validate(reproducible).hand_off().created == datetime(2024, 6, 1, tzinfo=UTC)
    odd = artifact_json(digest, tags=["1.0"])
    odd["extra_attrs"], odd["push_time"] = ["not", "a", "mapping"], 12
    assert _Artifact.model_validate(odd).hand_off().created is None


# -- untagged artifacts ---------------------------------------------------------------------------


def digest(n: str) -> Digest:
    return Digest.of(f"artifact-{n}".encode())


@pytest.mark.parametrize(("filters", "kept"), [
    ([], True), (["*"], True), (["**"], True), (["{,v*}"], True), (["regex:^$"], True),
    (["v*"], False), (["semver:*"], False), (["?*"], False),
    ([("v*", "excludes")], True), ([("semver:*", "excludes")], True), ([("*", "excludes")], False),
])
def test_untagged_artifacts_follow_harbors_empty_tag_rule(filters: list, kept: bool) -> None:
    untagged = Artifact(digest=digest("u"))
    tagged = Artifact(digest=digest("t"), tags=("v1",))
    chosen = [tag(*f) if isinstance(f, tuple) else tag(f) for f in filters]
    assert (untagged in select_artifacts([untagged, tagged], chosen, untagged=True)) is kept
    assert untagged not in select_artifacts([untagged, tagged], chosen)  # off by default


def test_an_artifact_whose_tags_were_all_filtered_out_is_not_untagged() -> None:
    tagged = Artifact(digest=digest("t"), tags=("nightly",))
    assert select_artifacts([tagged], [tag("v*")], untagged=True) == []


ROBOT, ROBOT_SECRET = "robot$ci", "robot-Secret-42"


@pytest.fixture
def fake() -> FakeHarbor:
    return FakeHarbor(users={ROBOT: ROBOT_SECRET})


@pytest.fixture
async def harbor(fake: FakeHarbor) -> AsyncIterator[HarborAdapter]:
    adapter = HarborAdapter(Endpoint(url=fake.url, username=ROBOT, password=SecretStr(ROBOT_SECRET)),
                            transport=fake.transport())
    try:
        yield adapter
    finally:
        await adapter.aclose()


def seed(fake: FakeHarbor) -> None:
    """library/app: four releases pushed out of version order, each with its config's created
    time, an untagged image, an untagged image that is a signature (an accessory), and one more
    untagged image without a created time."""
    for name, created in (("1.0.0", "2024-01-01"), ("2.0.0", "2024-02-01"), ("1.1.0", "2024-03-01"),
                          ("nightly", "2024-04-01")):
        art = fake.add_artifact("library/app", digest(name), tags=[name])
        art["extra_attrs"]["created"] = f"{created}T00:00:00Z"
    fake.add_artifact("library/app", digest("untagged"))
    fake.add_artifact("library/app", digest("signed"), tags=["signed"],
                      accessories=[("signature.notation", digest("notation"), None)])
    fake.add_artifact("library/app", digest("notation"))  # as an old Harbor lists an accessory


def harbor_policy(*filters: Filter, **fields: object) -> Policy:
    return Policy.model_validate({"name": "p", "src_registry": "src", "dest_registry": "dst",
                                  "filters": [f.model_dump() for f in filters], **fields})


async def test_untagged_artifacts_travel_by_digest_after_the_tags(fake, harbor) -> None:
    seed(fake)
    [found] = await discover(harbor, harbor_policy(tag("*"), untagged=True))
    assert found.tags == ["1.0.0", "2.0.0", "1.1.0", "nightly", "signed", digest("untagged")]
    assert [t for t in found.tags if is_digest_reference(t)] == [digest("untagged")]
    [without] = await discover(harbor, harbor_policy(tag("*")))
    assert without.tags == ["1.0.0", "2.0.0", "1.1.0", "nightly", "signed"]
    [versions_only] = await discover(harbor, harbor_policy(tag("semver:*"), untagged=True))
    assert versions_only.tags == ["1.0.0", "2.0.0", "1.1.0"]  # "" is no version


async def test_latest_on_an_artifact_listing_costs_no_request_per_tag(fake, harbor) -> None:
    seed(fake)
    [by_time] = await discover(harbor, harbor_policy(latest={"count": 2, "order": "created"}, untagged=True))
    # "signed" has the fake's default push time (2024-05-01), newer than every config's created.
    assert by_time.tags == ["nightly", "signed", digest("untagged")]
    [by_version] = await discover(harbor, harbor_policy(latest={"count": 2}))
    assert by_version.tags == ["2.0.0", "1.1.0"]
    assert not [r for r in fake.requests if "/manifests/" in r.url.path or "/blobs/" in r.url.path]


async def test_an_event_or_retry_keeps_latest_and_a_pinned_digest(fake, harbor) -> None:
    seed(fake)
    latest_two = harbor_policy(latest={"count": 2}, untagged=True)
    named = [Resource(repository="library/app", tag=t) for t in ("1.0.0", "2.0.0")]
    [found] = await discover(harbor, latest_two, named)
    assert found.tags == ["2.0.0"]  # 1.0.0 is not among the newest two
    pinned = Resource(repository="library/app", tag=str(digest("untagged")))
    [retried] = await discover(harbor, latest_two, [pinned])
    assert retried.tags == [digest("untagged")]


class _Listing(NativeAdapter):
    """A plain registry's tag list, nothing else."""

    def __init__(self, tags: list[str]) -> None:
        super().__init__(Endpoint(url="http://reg.test"))
        self._tags = tags

    async def list_tags(self, repository: str) -> list[str]:
        return list(self._tags)


async def test_a_source_without_artifacts_says_once_that_it_has_no_untagged(caplog) -> None:
    source = _Listing(["1.0.0", "2.0.0", "latest"])
    try:
        with caplog.at_level(logging.INFO, logger="tasks.discover"):
            found = await discover(source, harbor_policy(Filter(type="name", value="{a,b}"), untagged=True))
    finally:
        await source.aclose()
    assert [f.tags for f in found] == [["1.0.0", "2.0.0", "latest"]] * 2
    lines = [r.getMessage() for r in caplog.records if "untagged" in r.getMessage()]
    assert len(lines) == 1 and "cannot list untagged artifacts" in lines[0]
    assert all(r.levelno == logging.INFO for r in caplog.records)


async def test_latest_by_version_on_a_tag_list_and_for_an_event() -> None:
    source = _Listing(["1.0.0", "v2.1.0", "2.0.0", "latest", "3.0.0-rc.1"])
    newest = harbor_policy(Filter(type="name", value="a"), latest={"count": 2})
    releases = harbor_policy(Filter(type="name", value="a"), tag("semver:*"), latest={"count": 2})
    try:
        # latest ranks every version the filters leave, pre-releases too; 'semver:*' leaves none.
        [found] = await discover(source, newest)
        assert found.tags == ["v2.1.0", "3.0.0-rc.1"]
        [found] = await discover(source, releases)
        assert found.tags == ["v2.1.0", "2.0.0"]
        newest = releases
        [event] = await discover(source, newest, [Resource(repository="a", tag="2.0.0"),
                                                  Resource(repository="a", tag="1.0.0")])
        assert event.tags == ["2.0.0"]
        assert await discover(source, newest, [Resource(repository="a", tag="1.0.0")]) == []
    finally:
        await source.aclose()


def tag(value: str, decoration: str = "matches") -> Filter:
    return Filter.model_validate({"type": "tag", "value": value, "decoration": decoration})


# -- created times over the distribution API ------------------------------------------------------


class _Registry:
    """Manifests and blobs by reference, as a DistributionClient serves them; counts reads."""

    def __init__(self) -> None:
        self.manifests: dict[str, bytes] = {}
        self.blobs: dict[str, bytes] = {}
        self.reads: list[str] = []

    def blob(self, data: bytes, media_type: str) -> dict[str, object]:
        digest = Digest.of(data)
        self.blobs[digest] = data
        return {"mediaType": media_type, "digest": digest, "size": len(data)}

    def manifest(self, document: dict[str, object], *refs: str) -> dict[str, object]:
        raw = json.dumps(document).encode()
        digest = Digest.of(raw)
        for ref in (digest, *refs):
            self.manifests[ref] = raw
        return {"mediaType": document["mediaType"], "digest": digest, "size": len(raw)}

    def image(self, created: object, *tags: str, platform: dict[str, str] | None = None) -> dict[str, object]:
        config = self.blob(json.dumps({"created": created, "os": "linux"}).encode(), OCI_CONFIG)
        descriptor = self.manifest({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config,
                                    "layers": []}, *tags)
        return descriptor | ({"platform": platform} if platform else {})

    async def get_manifest(self, repository: str, ref: str) -> object:
        self.reads.append(ref)
        if ref not in self.manifests:
            raise NotFoundError(f"{ref} not found", status=404)
        return parse_manifest(self.manifests[ref])

    @asynccontextmanager
    async def open_blob(self, repository: str, digest: Digest, offset: int = 0) -> AsyncIterator[object]:
        self.reads.append(digest)
        data = self.blobs[digest]

        class Stream:
            async def chunks(self) -> AsyncIterator[bytes]:
                yield data

        yield Stream()


async def test_created_of_an_index_is_its_first_platform_image_and_tags_share_reads() -> None:
    registry = _Registry()
    attestation = registry.image("2020-01-01T00:00:00Z",
                                 platform={"os": "unknown", "architecture": "unknown"})
    amd64 = registry.image("2024-04-01T00:00:00Z", platform={"os": "linux", "architecture": "amd64"})
    arm64 = registry.image("2024-04-02T00:00:00Z", platform={"os": "linux", "architecture": "arm64"})
    registry.manifest({"schemaVersion": 2, "mediaType": OCI_INDEX,
                       "manifests": [attestation, amd64, arm64]}, "nightly", "edge")
    registry.image("2024-01-01T00:00:00Z", "1.0")
    registry.image("1970-01-01T00:00:00Z", "reproducible")
    registry.image(None, "undated")

    tags = ["nightly", "edge", "1.0", "reproducible", "undated", "gone"]
    times = await created_times(registry, "app", tags, asyncio.Semaphore(2))  # type: ignore[arg-type]

    assert times == {"nightly": datetime(2024, 4, 1, tzinfo=UTC), "edge": datetime(2024, 4, 1, tzinfo=UTC),
                     "1.0": datetime(2024, 1, 1, tzinfo=UTC), "reproducible": None, "undated": None,
                     "gone": None}
    # Each tag once; the index's amd64 child and its config once for both tags; one config
    # for each of the three images; nothing of the attestation or of arm64.
    assert sorted(registry.reads[:6]) == sorted(["nightly", "edge", "1.0", "reproducible", "undated", "gone"])
    assert len(registry.reads) == 6 + 1 + 4 and amd64["digest"] in registry.reads
    assert attestation["digest"] not in registry.reads and arm64["digest"] not in registry.reads


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=40) | st.from_regex(r"[v<>=^~ |*x.0-9a-z-]{0,30}", fullmatch=True))
def test_any_text_is_a_range_or_one_config_error(text: str) -> None:
    try:
        matches = range_matcher(text)
    except ConfigError as exc:
        assert "\n" not in str(exc)
        return
    for tag_text in ("1.2.3", "v0.0.1-rc.1", "latest", ""):
        assert matches(tag_text) in (True, False)


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=40) | st.from_regex(r"[vV]?[0-9]{1,3}(\.[0-9]{1,3}){0,3}([-_+][a-z0-9.]{0,8})?",
                                          fullmatch=True))
def test_any_tag_is_a_version_or_none(text: str) -> None:
    found = tag_version(text)
    assert found is None or not found.build


def test_signature_and_referrer_index_tags_are_not_counted_by_latest() -> None:
    """With referrers on, ``sha256-<hex>[.sig|.att|.sbom]`` tags neither take a place among the
    newest N nor stay (the plan brings the kept tags' referrers); with referrers off they are
    tags like any other."""
    sig = f"sha256-{Digest.of(b'2.0.0').hex}.sig"
    index = f"sha256-{Digest.of(b'1.0.0').hex}"
    tags = ["1.0.0", sig, "2.0.0", index]
    assert keep_newest(Latest(count=1), tags, {}, referrers=True) == ["2.0.0"]
    # cosign signs after the push: by time the signature is the newest "image" of all.
    times = {"1.0.0": datetime(2024, 1, 1, tzinfo=UTC), "2.0.0": datetime(2024, 2, 1, tzinfo=UTC),
             sig: datetime(2024, 3, 1, tzinfo=UTC)}
    assert keep_newest(Latest(count=1, order="created"), tags, times, referrers=True) == ["2.0.0"]
    assert keep_newest(Latest(count=1, order="created"), tags, times) == [sig]
    assert keep_newest(Latest(count=2, order="created"), tags, times) == [sig, "2.0.0"]


async def test_latest_leaves_signatures_out_of_the_count_on_a_listing_and_a_tag_list(fake, harbor) -> None:
    # An older Harbor lists a cosign signature as a tagged artifact of its own, pushed last.
    for name, created in (("1.0.0", "2024-01-01"), ("2.0.0", "2024-02-01")):
        fake.add_artifact("library/app", digest(name), tags=[name])["extra_attrs"]["created"] = \
            f"{created}T00:00:00Z"
    sig = f"sha256-{digest('2.0.0').hex}.sig"
    fake.add_artifact("library/app", digest("signature"), tags=[sig])
    [found] = await discover(harbor, harbor_policy(latest={"count": 1, "order": "created"}))
    assert found.tags == ["2.0.0"]
    [off] = await discover(harbor, harbor_policy(latest={"count": 1, "order": "created"}, referrers=False))
    assert off.tags == [sig]

    source = _Listing(["1.0.0", "2.0.0", sig])
    newest = harbor_policy(Filter(type="name", value="a"), latest={"count": 1})
    try:
        [listed] = await discover(source, newest)
        assert listed.tags == ["2.0.0"]
        # An event on the signature itself (cosign signs after the push): not ranked, it stays.
        [event] = await discover(source, newest, [Resource(repository="a", tag=sig),
                                                  Resource(repository="a", tag="1.0.0")])
        assert event.tags == [sig]
        off_policy = newest.model_copy(update={"referrers": False})
        assert await discover(source, off_policy, [Resource(repository="a", tag=sig)]) == []
    finally:
        await source.aclose()
