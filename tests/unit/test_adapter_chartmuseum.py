"""ChartMuseumAdapter against a fake of ChartMuseum's API (tests/support/fake_chartmuseum.py) over
httpx.MockTransport: listing, the manifests made from it, chart and provenance downloads, digest
checks, basic auth, the multitenant layout, and the refusal to be a target."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import AsyncIterator

import pytest
from pydantic import SecretStr

import adapters
from adapters.chartmuseum import ChartMuseumAdapter, ChartMuseumClient
from adapters.endpoint import Endpoint
from adapters.errors import AuthenticationError, ConfigError, ContentError, DigestMismatchError
from adapters.oci import OCI_MANIFEST, Digest
from adapters.oci.mediatypes import HELM_CHART_CONTENT, HELM_CHART_PROVENANCE, HELM_CONFIG
from tests.support.fake_chartmuseum import GO_CHUNKING_THRESHOLD, FakeChartMuseum, chart_tgz, provenance

URL = "http://museum.example"


def small_chart(name: str, version: str) -> bytes:
    tgz = chart_tgz(name, version)
    assert len(tgz) < GO_CHUNKING_THRESHOLD  # answered with a Content-Length
    return tgz


def big_chart(name: str, version: str) -> bytes:
    # Incompressible filler: over Go's threshold, so the answer comes chunked, without a length.
    tgz = chart_tgz(name, version, files={"README.md": os.urandom(3000).hex().encode()})
    assert len(tgz) > GO_CHUNKING_THRESHOLD
    return tgz


def adapter_for(museum: FakeChartMuseum, url: str = URL, *, user: str | None = None,
                password: str | None = None) -> ChartMuseumAdapter:
    endpoint = Endpoint(url=url, username=user, password=SecretStr(password) if password else None)
    return ChartMuseumAdapter(endpoint, transport=museum.transport())


@pytest.fixture
def museum() -> FakeChartMuseum:
    museum = FakeChartMuseum()
    web = small_chart("web", "1.0.0")
    museum.add(web, provenance(web, "web-1.0.0.tgz"))
    museum.add(big_chart("web", "1.1.0+build.7"))
    museum.add(small_chart("api", "0.3.0"))
    return museum


@pytest.fixture
async def source(museum: FakeChartMuseum) -> AsyncIterator[ChartMuseumAdapter]:
    adapter = adapter_for(museum)
    try:
        yield adapter
    finally:
        await adapter.aclose()


async def read_blob(client: ChartMuseumClient, repository: str, digest: Digest, offset: int = 0) -> bytes:
    async with client.open_blob(repository, digest, offset) as stream:
        return b"".join([chunk async for chunk in stream.chunks()])


async def test_listing_gives_chart_names_as_repositories_and_versions_as_tags(source, museum):
    assert [name async for name in source.list_repositories()] == ["api", "web"]
    assert await source.list_tags("web") == ["1.1.0_build.7", "1.0.0"]  # newest first, '+' as '_'
    assert await source.list_tags("api") == ["0.3.0"]
    # One listing request serves every later question of the run.
    assert [s.target for s in museum.requests] == ["/api/charts"]


async def test_named_charts_are_asked_for_one_by_one_without_the_whole_listing(source, museum):
    assert [name async for name in source.list_repositories(["web"])] == ["web"]
    assert await source.list_tags("web") == ["1.1.0_build.7", "1.0.0"]
    with pytest.raises(adapters.errors.NotFoundError):
        await source.list_tags("nope")
    assert [s.target for s in museum.requests] == ["/api/charts/web", "/api/charts/nope"]


async def test_manifest_is_a_helm_oci_chart_whose_layers_are_the_files_byte_for_byte(source, museum):
    web = museum.charts[0]
    head = await source.client.head_manifest("web", "1.0.0")
    manifest = await source.client.get_manifest("web", "1.0.0")
    assert head is not None and (head.digest, head.media_type, head.size) == (
        manifest.digest, OCI_MANIFEST, manifest.size)
    assert manifest.config is not None and manifest.config.media_type == HELM_CONFIG
    assert [layer.media_type for layer in manifest.layers] == [HELM_CHART_CONTENT, HELM_CHART_PROVENANCE]
    chart, prov = manifest.layers
    assert (chart.digest, chart.size) == (Digest.of(web.tgz), len(web.tgz))
    assert await read_blob(source.client, "web", chart.digest) == web.tgz
    assert await read_blob(source.client, "web", prov.digest) == web.prov
    config = json.loads(await read_blob(source.client, "web", manifest.config.digest))
    assert (config["name"], config["version"], config["apiVersion"]) == ("web", "1.0.0", "v2")
    annotations = json.loads(manifest.raw)["annotations"]
    assert annotations["org.opencontainers.image.created"] == "2024-05-06T07:08:09Z"
    assert annotations["org.opencontainers.image.title"] == "web"
    # Files come from ChartMuseum's chart route; the config never costs a request.
    assert [s.target for s in museum.requests if "/charts/web-" in s.target] == [
        "/charts/web-1.0.0.tgz", "/charts/web-1.0.0.tgz.prov",        # planned: size, prov digest
        "/charts/web-1.0.0.tgz", "/charts/web-1.0.0.tgz.prov"]        # streamed


async def test_a_chart_without_prov_has_one_layer_and_a_tag_for_a_semver_with_build_metadata(source, museum):
    manifest = await source.client.get_manifest("web", "1.1.0_build.7")
    assert [layer.media_type for layer in manifest.layers] == [HELM_CHART_CONTENT]
    assert await read_blob(source.client, "web", manifest.layers[0].digest) == museum.charts[1].tgz
    assert json.loads(manifest.raw)["annotations"]["org.opencontainers.image.version"] == "1.1.0+build.7"
    assert "/charts/web-1.1.0%2Bbuild.7.tgz.prov" in [s.target for s in museum.requests]
    assert await source.client.head_manifest("web", "1.1.0+build.7") is None  # not a tag
    assert await source.client.head_manifest("web", "9.9.9") is None
    assert await source.client.head_manifest("nope", "1.0.0") is None


async def test_the_same_chart_gives_the_same_manifest_bytes_in_every_run(museum):
    digests = set()
    for _ in range(2):
        adapter = adapter_for(museum)
        digests.add((await adapter.client.get_manifest("web", "1.0.0")).raw)
        await adapter.aclose()
    assert len(digests) == 1


async def test_a_fresh_client_finds_a_manifest_and_its_blobs_by_digest(source, museum):
    manifest = await source.client.get_manifest("web", "1.0.0")
    fresh = adapter_for(museum)
    try:
        assert (await fresh.client.get_manifest("web", manifest.digest)).raw == manifest.raw
        assert (await fresh.client.head_manifest("web", manifest.digest)) is not None
        other = adapter_for(museum)
        assert await read_blob(other.client, "web", manifest.layers[1].digest) == museum.charts[0].prov
        await other.aclose()
        assert await fresh.client.head_manifest("web", Digest.of(b"unknown")) is None
        assert await fresh.client.head_manifest("web", "sha256:not-hex") is None
    finally:
        await fresh.aclose()


async def test_resumed_reads_skip_what_chartmuseum_sends_again(source, museum):
    manifest = await source.client.get_manifest("web", "1.1.0_build.7")
    tgz = museum.charts[1].tgz
    assert await read_blob(source.client, "web", manifest.layers[0].digest, offset=100) == tgz[100:]
    assert await read_blob(source.client, "web", manifest.config.digest, offset=5) == (  # type: ignore[union-attr]
        await read_blob(source.client, "web", manifest.config.digest))[5:]  # type: ignore[union-attr]


async def test_an_index_digest_that_does_not_match_the_bytes_fails_the_blob(museum):
    museum.charts[0].digest = hashlib.sha256(b"something else").hexdigest()
    adapter = adapter_for(museum)
    try:
        manifest = await adapter.client.get_manifest("web", "1.0.0")  # small: size from Content-Length
        with pytest.raises(DigestMismatchError):
            await read_blob(adapter.client, "web", manifest.layers[0].digest)
    finally:
        await adapter.aclose()


async def test_a_chunked_chart_is_checked_when_planned(museum):
    museum.charts[1].digest = hashlib.sha256(b"something else").hexdigest()
    adapter = adapter_for(museum)
    try:
        with pytest.raises(DigestMismatchError):
            await adapter.client.head_manifest("web", "1.1.0_build.7")
    finally:
        await adapter.aclose()


async def test_a_file_that_grew_since_the_plan_is_refused(museum, source):
    manifest = await source.client.get_manifest("web", "1.0.0")
    museum.charts[0].tgz += b"more"
    with pytest.raises(DigestMismatchError):
        await read_blob(source.client, "web", manifest.layers[0].digest)


async def test_a_malformed_listing_or_digest_is_a_content_error(museum):
    museum.charts[2].digest = "not-hex"
    adapter = adapter_for(museum)
    try:
        with pytest.raises(ContentError, match="without a valid sha256 digest"):
            await adapter.client.head_manifest("api", "0.3.0")
    finally:
        await adapter.aclose()

    museum.charts[2].metadata = {"version": "0.3.0"}  # no name
    adapter = adapter_for(museum)
    try:
        with pytest.raises(ContentError, match="not a ChartMuseum answer"):
            await adapter.client.list_tags("api")
    finally:
        await adapter.aclose()


async def test_oversized_answers_are_refused(museum, source, monkeypatch):
    monkeypatch.setattr("adapters.chartmuseum.MAX_LISTING_BYTES", 100)
    with pytest.raises(ContentError, match="over 100 bytes"):
        await source.list_tags("web")
    monkeypatch.setattr("adapters.chartmuseum.MAX_LISTING_BYTES", 1 << 20)
    monkeypatch.setattr("adapters.chartmuseum.MAX_PROV_BYTES", 10)
    with pytest.raises(ContentError, match=r"provenance file .* is over 10 bytes"):
        await source.client.head_manifest("web", "1.0.0")
    monkeypatch.setattr("adapters.chartmuseum.MAX_CHART_BYTES", 10)
    with pytest.raises(ContentError, match="over 10"):
        await source.client.head_manifest("web", "1.1.0_build.7")


async def test_basic_credentials_go_to_chartmuseum_up_front_and_nowhere_else(museum):
    museum.users = {"reader": "s3cret"}
    museum.redirect_files_to = "http://storage.example"
    adapter = adapter_for(museum, user="reader", password="s3cret")
    try:
        assert (await adapter.health()).status == "healthy"
        manifest = await adapter.client.get_manifest("web", "1.0.0")
        assert await read_blob(adapter.client, "web", manifest.layers[0].digest) == museum.charts[0].tgz
    finally:
        await adapter.aclose()
    expected = "Basic " + base64.b64encode(b"reader:s3cret").decode()
    own = [s for s in museum.requests if s.host == "museum.example"]
    elsewhere = [s for s in museum.requests if s.host != "museum.example"]
    assert own and all(s.authorization == expected for s in own)  # no 401 round trips
    assert elsewhere and all(s.authorization is None for s in elsewhere)


async def test_refused_credentials_are_an_authentication_error_and_an_unhealthy_registry(museum):
    museum.users = {"reader": "s3cret"}
    for password in (None, "wrong"):
        adapter = adapter_for(museum, user="reader" if password else None, password=password)
        try:
            health = await adapter.health()
            assert health.status == "unhealthy" and "credentials refused" in health.reason
            with pytest.raises(AuthenticationError):
                await adapter.list_tags("web")
        finally:
            await adapter.aclose()
    assert "s3cret" not in repr(adapter_for(museum, user="reader", password="s3cret").client._http.auth)


async def test_a_multitenant_repository_path_selects_the_tenants_api_and_files():
    museum = FakeChartMuseum(tenant="/org1/repoa")
    tgz = small_chart("web", "1.0.0")
    museum.add(tgz)
    adapter = adapter_for(museum, "http://museum.example/org1/repoa")
    try:
        assert [name async for name in adapter.list_repositories()] == ["web"]
        manifest = await adapter.client.get_manifest("web", "1.0.0")
        assert await read_blob(adapter.client, "web", manifest.layers[0].digest) == tgz
    finally:
        await adapter.aclose()
    assert {s.target for s in museum.requests} == {
        "/api/org1/repoa/charts", "/org1/repoa/charts/web-1.0.0.tgz", "/org1/repoa/charts/web-1.0.0.tgz.prov"}


async def test_chartmuseum_is_a_source_only(source):
    info = ChartMuseumAdapter.info
    assert (info.type, info.resource_types, info.filters, info.can_be_target) == (
        "chartmuseum", ("chart",), ("name", "tag"), False)
    assert "event_based" not in info.triggers
    with pytest.raises(ConfigError, match="can only be a source"):
        await source.prepare_for_push(["web"])
    manifest = await source.client.get_manifest("web", "1.0.0")
    for write in (source.client.put_manifest("web", "1.0.0", manifest),
                  source.client.start_upload("web"),
                  source.client.blob_exists("web", manifest.digest),
                  source.client.delete_manifest("web", manifest.digest)):
        with pytest.raises(ConfigError, match="read-only source"):
            await write


def test_the_lead_can_register_the_adapter_type(monkeypatch):
    monkeypatch.setitem(adapters.ADAPTERS, "chartmuseum", ChartMuseumAdapter)
    assert adapters.adapter_info("chartmuseum").can_be_target is False
    adapter = adapters.create_adapter("chartmuseum", Endpoint(url=URL))
    assert isinstance(adapter.client, ChartMuseumClient)
