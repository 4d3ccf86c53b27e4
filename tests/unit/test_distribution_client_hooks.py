"""The two hooks vendor adapters use in the distribution client: a response observer that may
hold every further request (rate limits), and ``remote_name`` (Docker Hub's ``library/``)."""

from __future__ import annotations

import time

import httpx
import pytest

from adapters.distribution import client as client_module
from adapters.distribution.client import DistributionClient
from adapters.endpoint import Endpoint
from adapters.errors import NotFoundError
from adapters.oci import Digest
from tests.support.vendor_fakes import Router, reply

HOST = "reg.example"
BLOB = Digest.of(b"blob")


def make(router: Router, observer: client_module.ResponseObserver | None = None) -> DistributionClient:
    return DistributionClient(Endpoint(url=f"http://{HOST}"), transport=router.transport(),
                              response_observer=observer)


async def test_the_observer_sees_every_answer_and_its_hold_delays_the_next_request() -> None:
    router = Router()
    router.add("HEAD", HOST, r"/v2/a/blobs/.+", lambda r: reply(200, headers={"X-Quota": "0"}))
    router.add("GET", HOST, r"/v2/a/tags/list", lambda r: reply(404, headers={"X-Quota": "0"}))
    seen: list[tuple[int, str]] = []

    def observe(response: httpx.Response) -> float | None:
        seen.append((response.status_code, response.headers.get("X-Quota", "")))
        return 0.3 if len(seen) == 1 else None

    client = make(router, observe)
    try:
        await client.blob_exists("a", BLOB)
        started = time.monotonic()
        with pytest.raises(NotFoundError):
            await client.list_tags("a")
        waited = time.monotonic() - started
    finally:
        await client.aclose()
    assert seen == [(200, "0"), (404, "0")]  # errors are observed too
    assert waited >= 0.25


async def test_an_observer_hold_is_capped_like_retry_after(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client_module, "MAX_HOLD_SECONDS", 0.2)
    router = Router()
    router.add("HEAD", HOST, r"/v2/a/blobs/.+", lambda r: reply(200))
    client = make(router, lambda response: 3600.0)
    try:
        await client.blob_exists("a", BLOB)
        started = time.monotonic()
        await client.blob_exists("a", BLOB)
        waited = time.monotonic() - started
    finally:
        await client.aclose()
    assert 0.15 <= waited < 2


class Aliasing(DistributionClient):
    def remote_name(self, repository: str) -> str:
        return repository if "/" in repository else f"library/{repository}"


async def test_remote_name_maps_paths_scopes_and_mount_sources_but_not_messages() -> None:
    router = Router()
    router.add("GET", HOST, r"/v2/library/nginx/tags/list", lambda r: reply(body={"tags": ["1"]}))
    router.add("POST", HOST, r"/v2/library/copy/blobs/uploads/", lambda r: reply(201))
    router.add("GET", HOST, r"/v2/library/gone/tags/list", lambda r: reply(404))
    client = Aliasing(Endpoint(url=f"http://{HOST}"), transport=router.transport())
    try:
        assert await client.list_tags("nginx") == ["1"]
        assert await client.start_upload("copy", mount=BLOB, mount_from="alpine") is None
        with pytest.raises(NotFoundError) as info:
            await client.list_tags("gone")
    finally:
        await client.aclose()
    mount = router.requests[1]
    assert mount.url.params["from"] == "library/alpine"
    assert mount.extensions["regflow.scopes"] == ("repository:library/copy:pull,push",
                                                  "repository:library/alpine:pull")
    assert router.requests[0].extensions["regflow.scopes"] == ("repository:library/nginx:pull",)
    assert "library/gone" in str(info.value)  # the URL is the wire's: it says what was asked
