"""The request trace behind the benchmarks' critical-path count: what a registry client records
when REGFLOW_TRACE_DIR is set (nothing when not), how paths are classed, and the longest chain
of requests that waited for each other."""

from __future__ import annotations

import itertools
from pathlib import Path

import httpx
import pytest

from adapters.distribution.client import DistributionClient
from adapters.distribution.trace import TRACE_DIR_ENV, TracedRequest, read_traces, request_kind
from adapters.endpoint import Endpoint
from benchmarks.critical_path import longest_chain, summarize

DIGEST = "sha256:" + "c" * 64


@pytest.mark.parametrize(("path", "kind"), [
    ("/v2/", "ping"), ("/v2/_catalog", "catalog"), ("/v2/team/app/tags/list", "tags"),
    ("/v2/team/app/manifests/1.0", "manifest"), (f"/v2/a/b/c/manifests/{DIGEST}", "manifest"),
    ("/v2/team/app/blobs/uploads/", "upload"), ("/v2/team/app/blobs/uploads/5f1e-ab", "upload"),
    (f"/v2/team/app/blobs/{DIGEST}", "blob"), (f"/v2/team/app/referrers/{DIGEST}", "referrers"),
    ("/api/v2.0/projects", "other"),
])
def test_paths_are_classed_by_what_they_ask_for(path: str, kind: str) -> None:
    assert request_kind(path) == kind


def answer(request: httpx.Request) -> httpx.Response:
    if request.url.path.endswith("/tags/list"):
        return httpx.Response(200, json={"name": "team/app", "tags": ["1.0"]})
    return httpx.Response(404, json={"errors": [{"code": "MANIFEST_UNKNOWN", "message": "no"}]})


async def test_a_client_writes_its_requests_when_asked_and_only_then(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TRACE_DIR_ENV, raising=False)
    async with DistributionClient(Endpoint(url="http://registry.test"),
                                  transport=httpx.MockTransport(answer)) as quiet:
        await quiet.list_tags("team/app")
    assert quiet.trace is None

    monkeypatch.setenv(TRACE_DIR_ENV, str(tmp_path / "traces"))
    async with DistributionClient(Endpoint(url="http://registry.test"),
                                  transport=httpx.MockTransport(answer)) as client:
        assert await client.list_tags("team/app") == ["1.0"]
        assert await client.head_manifest("team/app", "2.0") is None
    traced = read_traces(tmp_path / "traces")
    assert [(r.host, r.method, r.kind, r.status, r.bulk) for r in traced] == [
        ("registry.test", "GET", "tags", "200", False), ("registry.test", "HEAD", "manifest", "404", False)]
    assert all(r.start <= r.end for r in traced)


def request(start: float, end: float, kind: str = "manifest") -> TracedRequest:
    return TracedRequest(start, end, "r", "GET", kind, "200", False)


def test_the_longest_chain_follows_answers_not_overlaps() -> None:
    # catalog, then three tag lists at once, then one manifest after the slowest list, then a
    # blob overlapping the manifest: three requests waited for each other, no more.
    requests = [request(0.0, 1.0, "catalog"), request(1.1, 2.0, "tags"), request(1.1, 2.5, "tags"),
                request(1.2, 1.9, "tags"), request(2.6, 3.0), request(2.7, 3.5, "blob")]

    chain = longest_chain(requests)

    assert [r.kind for r in chain] == ["catalog", "tags", "manifest"]
    assert all(a.end <= b.start for a, b in itertools.pairwise(chain))
    path = summarize(requests)
    assert (path.requests, path.longest_chain) == (6, 3)
    assert path.by_kind == {"r GET blob": 1, "r GET catalog": 1, "r GET manifest": 1, "r GET tags": 3}
    assert path.span_seconds == pytest.approx(3.5)
    assert summarize([]).longest_chain == 0


def challenging(request: httpx.Request) -> httpx.Response:
    """A registry that wants a bearer token, and its token service on another host."""
    if request.url.host == "auth.test":
        return httpx.Response(200, json={"token": "t0k", "expires_in": 300})
    if request.headers.get("Authorization") != "Bearer t0k":
        return httpx.Response(401, headers={
            "WWW-Authenticate": 'Bearer realm="http://auth.test/token",service="registry.test"'})
    return httpx.Response(200, json={"name": "team/app", "tags": ["1.0"]})


async def test_token_fetches_are_in_the_trace_inside_the_request_they_held(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TRACE_DIR_ENV, str(tmp_path / "traces"))
    async with DistributionClient(Endpoint(url="http://registry.test"),
                                  transport=httpx.MockTransport(challenging)) as client:
        assert await client.list_tags("team/app") == ["1.0"]

    tags, token = sorted(read_traces(tmp_path / "traces"), key=lambda r: r.start)
    assert (tags.method, tags.kind, tags.status) == ("GET", "tags", "200")
    assert (token.method, token.kind, token.status, token.host) == ("GET", "token", "200", "registry.test")
    # A registry request is traced from its first send to its final answer, so the challenge's
    # token fetch lies within it: the time it held the request is visible, not hidden.
    assert tags.start <= token.start <= token.end <= tags.end
