"""Replicated deletion against a registry that deletes tags (OCI 1.1), which the real test
registries (CNCF distribution 2.8) do not: the one tag goes, by tag, and nothing by digest."""

from __future__ import annotations

import httpx

from adapters.endpoint import Endpoint
from adapters.native import NativeAdapter
from adapters.oci import Digest
from tasks.delete import DeleteSpec, delete_manifest

DIGEST = Digest.of(b"a manifest")


def registries(tag_delete_status: int, seen: list[str]) -> tuple[NativeAdapter, NativeAdapter]:
    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(f"{request.method} {request.url.host}{request.url.path}")
        if request.url.host == "src.example":
            return httpx.Response(404)  # the source lost the tag
        if request.method == "HEAD" and request.url.path.endswith("/manifests/1.0"):
            return httpx.Response(200, headers={"Docker-Content-Digest": DIGEST,
                                                "Content-Type": "application/vnd.oci.image.manifest.v1+json"})
        if request.method == "DELETE" and request.url.path.endswith("/manifests/1.0"):
            return httpx.Response(tag_delete_status)
        if request.url.path.endswith("/tags/list"):
            return httpx.Response(200, json={"name": "app/web", "tags": ["1.0", "latest"]})
        if request.method == "HEAD" and request.url.path.endswith("/manifests/latest"):
            return httpx.Response(200, headers={"Docker-Content-Digest": DIGEST})
        return httpx.Response(500)

    transport = httpx.MockTransport(handle)
    return (NativeAdapter(Endpoint(url="http://src.example"), transport=transport),
            NativeAdapter(Endpoint(url="http://dst.example"), transport=transport))


async def run(tag_delete_status: int) -> tuple[str, str, list[str]]:
    seen: list[str] = []
    source, target = registries(tag_delete_status, seen)
    spec = DeleteSpec(source_repository="app/web", target_repository="app/web", tag="1.0", digest=DIGEST)
    result = await delete_manifest(target, spec, source=source)
    await source.aclose()
    await target.aclose()
    [outcome] = result.tags
    return outcome.status, outcome.reason, seen


async def test_a_registry_that_deletes_tags_loses_just_the_tag():
    status, reason, seen = await run(202)
    assert (status, reason) == ("deleted", "deleted on source")
    assert seen == ["HEAD src.example/v2/app/web/manifests/1.0", "HEAD dst.example/v2/app/web/manifests/1.0",
                    "DELETE dst.example/v2/app/web/manifests/1.0"]


async def test_a_refused_tag_deletion_falls_back_to_the_digest_rules():
    status, reason, seen = await run(405)
    assert status == "skipped"
    assert "latest still use" in reason
    assert f"DELETE dst.example/v2/app/web/manifests/{DIGEST}" not in seen
