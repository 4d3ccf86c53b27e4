"""Tests of the integration test bed itself (tests/support, tests/conftest.py)."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from tests.support.auth import ChallengeTokenAuth, parse_challenge
from tests.support.corpus import (
    ACCEPT_ALL,
    MT_DOCKER_LIST,
    MT_DOCKER_MANIFEST,
    MT_OCI_INDEX,
    MT_OCI_MANIFEST,
    STANDARD_CORPUS,
    CorpusBuilder,
    ImageFactory,
    ImageKind,
    corrupt_blob,
    sha256_digest,
)
from tests.support.registry import RegistryProcess
from tests.support.skopeo import inspect_raw_digest, skopeo_copy
from tests.support.token_service import TokenService

pytestmark = pytest.mark.integration

RegistryFactory = Callable[..., RegistryProcess]
CorpusFactory = Callable[..., CorpusBuilder]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# --------------------------------------------------------------------------- registries and auth
def test_anonymous_registry_answers_v2(registry_anon: RegistryProcess) -> None:
    assert registry_anon.url == f"http://127.0.0.1:{registry_anon.port}"
    assert registry_anon.host == f"127.0.0.1:{registry_anon.port}"
    r = httpx.get(f"{registry_anon.url}/v2/")
    assert r.status_code == 200
    assert r.headers["Docker-Distribution-API-Version"] == "registry/2.0"
    assert (registry_anon.dir / "config.yml").is_file()
    assert registry_anon.log_path.parent == registry_anon.dir


def test_basic_registry_requires_credentials(registry_basic: RegistryProcess) -> None:
    url = f"{registry_basic.url}/v2/"
    assert registry_basic.username and registry_basic.password
    r = httpx.get(url)
    assert r.status_code == 401
    assert parse_challenge(r.headers["WWW-Authenticate"])[0] == "basic"
    assert httpx.get(url, auth=(registry_basic.username, "wrong")).status_code == 401
    assert httpx.get(url, auth=(registry_basic.username, registry_basic.password)).status_code == 200


def test_token_registry_challenges_and_accepts_tokens(
    registry_token: RegistryProcess, token_service: TokenService
) -> None:
    url = f"{registry_token.url}/v2/"
    r = httpx.get(url)
    assert r.status_code == 401
    scheme, params = parse_challenge(r.headers["WWW-Authenticate"])
    assert scheme == "bearer"
    assert params["realm"] == token_service.realm
    assert params["service"] == token_service.service

    tr = httpx.get(
        params["realm"],
        params={"service": params["service"]},
        auth=(token_service.username, token_service.password),
    )
    assert tr.status_code == 200
    body = tr.json()
    assert body["token"] == body["access_token"]
    assert body["expires_in"] == token_service.ttl
    assert httpx.get(url, headers={"Authorization": f"Bearer {body['token']}"}).status_code == 200
    assert token_service.requests[-1].authenticated

    # wrong password: the token service refuses and records it
    bad = httpx.get(
        params["realm"], params={"service": params["service"]}, auth=(token_service.username, "x")
    )
    assert bad.status_code == 401
    assert token_service.requests[-1].authenticated is False
    assert token_service.requests[-1].status == 401


def test_token_registry_rejects_expired_and_anonymous_tokens(
    registry_token: RegistryProcess, token_service: TokenService
) -> None:
    path = f"{registry_token.url}/v2/some/repo/tags/list"
    pull = [{"type": "repository", "name": "some/repo", "actions": ["pull"]}]
    good = token_service.issue_token("regflow", pull)
    expired = token_service.issue_token("regflow", pull, ttl=-120)
    assert (
        httpx.get(path, headers={"Authorization": f"Bearer {good}"}).status_code == 404
    )  # authorised, no repo
    assert httpx.get(path, headers={"Authorization": f"Bearer {expired}"}).status_code == 401

    # an anonymous caller gets a token with no access -> the registry still says 401
    tr = httpx.get(
        token_service.realm, params={"service": token_service.service, "scope": "repository:some/repo:pull"}
    )
    assert tr.status_code == 200
    assert token_service.requests[-1].granted == ()
    assert httpx.get(path, headers={"Authorization": f"Bearer {tr.json()['token']}"}).status_code == 401


def test_token_service_oauth2_password_grant(token_service: TokenService) -> None:
    r = httpx.post(
        token_service.realm,
        data={
            "grant_type": "password",
            "username": token_service.username,
            "password": token_service.password,
            "service": token_service.service,
            "scope": "repository:a/b:pull,push repository:c:pull",
        },
    )
    assert r.status_code == 200
    assert r.json()["access_token"]
    req = token_service.requests[-1]
    assert req.method == "POST" and req.authenticated
    assert req.scopes == ("repository:a/b:pull,push", "repository:c:pull")
    assert [sorted(g["actions"]) for g in req.granted] == [["pull", "push"], ["pull"]]


def test_challenge_token_auth_fetches_and_caches_per_repository(
    registry_token: RegistryProcess, token_service: TokenService, make_corpus: CorpusFactory
) -> None:
    builder = make_corpus(registry_token)
    auth = builder.client.http.auth
    assert isinstance(auth, ChallengeTokenAuth)
    pushed = builder.push("tok/app", "1.0", ImageKind.DOCKER)
    assert builder.client.manifest_digest("tok/app", "1.0") == pushed.digest
    # one token for the whole push (cached), every fetch authenticated with the right scope
    assert auth.token_fetches == 1
    # The registry's challenge lists actions in no fixed order (a Go map).
    assert [r.scopes for r in token_service.requests] in (
        [("repository:tok/app:pull,push",)], [("repository:tok/app:push,pull",)])
    assert all(r.authenticated for r in token_service.requests)


def test_short_token_ttl_makes_the_client_fetch_again(
    registry_token: RegistryProcess, token_service: TokenService, make_corpus: CorpusFactory
) -> None:
    assert registry_token.token_service is token_service
    token_service.ttl = 3  # ChallengeTokenAuth renews 2 s before expiry -> after 1 s
    builder = make_corpus(registry_token)
    builder.push("ttl/app", "1.0", ImageKind.OCI)
    assert builder.client.tags("ttl/app") == ["1.0"]
    assert len(token_service.requests) == 1
    assert sorted(token_service.requests[0].granted[0]["actions"]) == ["pull", "push"]
    time.sleep(1.2)
    assert builder.client.tags("ttl/app") == ["1.0"]
    assert len(token_service.requests) == 2


def test_stop_kills_only_our_process_and_start_reuses_port_and_storage(
    registry_anon: RegistryProcess, make_corpus: CorpusFactory
) -> None:
    pushed = make_corpus(registry_anon).push("outage/app", "1.0", ImageKind.OCI)
    pid, port = registry_anon.pid, registry_anon.port
    assert pid is not None and _pid_alive(pid)

    registry_anon.stop()
    assert not registry_anon.running
    assert not _pid_alive(pid)
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{registry_anon.url}/v2/", timeout=2)

    registry_anon.start()
    assert registry_anon.port == port
    assert registry_anon.pid != pid
    r = httpx.get(f"{registry_anon.url}/v2/outage/app/manifests/1.0", headers={"Accept": ACCEPT_ALL})
    assert r.status_code == 200
    assert sha256_digest(r.content) == pushed.digest
    layer = pushed.image.layers[-1]
    assert httpx.get(f"{registry_anon.url}/v2/outage/app/blobs/{layer.digest}").content == layer.data


def test_close_removes_directory(make_registry: RegistryFactory) -> None:
    reg = make_registry("basic")
    pid = reg.pid
    assert pid is not None
    reg.close()
    assert not reg.dir.exists()
    assert not _pid_alive(pid)


# --------------------------------------------------------------------------- corpus
KIND_MEDIA_TYPES = {
    ImageKind.DOCKER: MT_DOCKER_MANIFEST,
    ImageKind.OCI: MT_OCI_MANIFEST,
    ImageKind.DOCKER_LIST: MT_DOCKER_LIST,
    ImageKind.OCI_INDEX: MT_OCI_INDEX,
}


@pytest.mark.parametrize("kind", list(ImageKind))
def test_corpus_kind_matches_skopeo_raw_digest(
    kind: ImageKind, registry_anon: RegistryProcess, make_corpus: CorpusFactory
) -> None:
    builder = make_corpus(registry_anon)
    pushed = builder.push("kinds/app", ["1.0", "latest"], kind)
    assert pushed.media_type == KIND_MEDIA_TYPES[kind]
    assert pushed.digest == sha256_digest(pushed.manifest)
    assert json.loads(pushed.manifest)["mediaType"] == pushed.media_type
    for tag in ("1.0", "latest"):
        assert inspect_raw_digest(registry_anon.ref("kinds/app", tag)) == pushed.digest
    if kind.is_index:
        doc = json.loads(pushed.manifest)
        assert [m["platform"]["architecture"] for m in doc["manifests"]] == ["amd64", "arm64"]
        assert len(pushed.children) == 2
        for child in pushed.children:
            assert inspect_raw_digest(f"docker://{registry_anon.ref('kinds/app', child)}") == child
    # every recorded blob is in the registry, byte for byte
    for digest in pushed.blobs:
        assert hashlib.sha256(builder.client.get_blob("kinds/app", digest)).hexdigest() == digest[7:]
    assert builder.corpus.tag("kinds/app", "latest").digest == pushed.digest


@pytest.mark.parametrize("kind", ["anonymous", "basic", "token"])
def test_standard_corpus_on_each_auth_mode(
    kind: str, make_registry: RegistryFactory, make_corpus: CorpusFactory
) -> None:
    reg = make_registry(kind)
    corpus = make_corpus(reg).push_standard()
    expected = {(repo, tag) for repo, _, images in STANDARD_CORPUS for tags in images for tag in tags}
    assert set(corpus.refs()) == expected
    for repo, tag in corpus.refs():
        assert inspect_raw_digest(reg.ref(repo, tag), reg.creds) == corpus.tag(repo, tag).digest
    # "latest" aliases the newest image; different images differ
    assert corpus.tag("regflow/docker-app", "latest").digest == corpus.tag("regflow/docker-app", "1.1").digest
    assert corpus.tag("regflow/docker-app", "1.0").digest != corpus.tag("regflow/docker-app", "1.1").digest
    # one base layer is shared by every repository (and by Docker and OCI images alike)
    shared = set.intersection(*(corpus.repo_blobs(r) for r in corpus.repos))
    assert len(shared) >= 1


def test_image_factory_is_deterministic() -> None:
    a = ImageFactory(seed=7).image(ImageKind.OCI_INDEX, "x/y:1", layer_sizes=[1000, 2000])
    b = ImageFactory(seed=7).image(ImageKind.OCI_INDEX, "x/y:1", layer_sizes=[1000, 2000])
    c = ImageFactory(seed=8).image(ImageKind.OCI_INDEX, "x/y:1", layer_sizes=[1000, 2000])
    assert a.manifest.data == b.manifest.data
    assert a.digest != c.digest
    assert len(a.blobs()) == 2 * (1 + 2 + 1)  # per platform: base + 2 layers + config


def test_corrupt_blob_serves_bytes_that_do_not_match_the_digest(
    registry_anon: RegistryProcess, make_corpus: CorpusFactory
) -> None:
    builder = make_corpus(registry_anon)
    pushed = builder.push("corrupt/app", "1.0", ImageKind.DOCKER)
    layer = pushed.image.layers[-1]
    assert registry_anon.blob_data_path(layer.digest).read_bytes() == layer.data
    corrupted = corrupt_blob(registry_anon, layer.digest)
    r = httpx.get(f"{registry_anon.url}/v2/corrupt/app/blobs/{layer.digest}")
    assert r.status_code == 200
    assert r.content == corrupted
    assert len(r.content) == layer.size
    assert sha256_digest(r.content) != layer.digest


def test_push_blob_with_wrong_digest_is_refused(
    registry_anon: RegistryProcess, make_corpus: CorpusFactory
) -> None:
    builder = make_corpus(registry_anon)
    data = b"hello blob"
    assert builder.push_blob("raw/app", data) == sha256_digest(data)
    with pytest.raises(RuntimeError, match="400"):
        builder.push_blob("raw/app", b"other bytes", digest=sha256_digest(data + b"x"))


# --------------------------------------------------------------------------- access log
def test_access_log_counts_requests(registry_anon: RegistryProcess, make_corpus: CorpusFactory) -> None:
    mark = registry_anon.log_mark()
    builder = make_corpus(registry_anon, layers=2)
    builder.push("count/app", "1.0", ImageKind.DOCKER)  # blobs: base + 2 layers + config
    for _ in range(3):
        httpx.get(f"{registry_anon.url}/v2/count/app/tags/list").raise_for_status()

    count = registry_anon.count_requests
    assert count("POST", r"/v2/count/app/blobs/uploads/", since=mark, status=202) == 4
    assert count("PUT", r"/v2/count/app/blobs/uploads/.*", since=mark, status=201) == 4
    assert count("PUT", r"/v2/count/app/manifests/.*", since=mark) == 1
    assert count("GET", r"/v2/count/app/tags/list", since=mark) == 3
    assert count(since=mark) == 12
    assert count("GET", "/v2/", since=mark) == 0  # sync sentinels are never counted
    assert count("GET", "/v2/") >= 1  # the readiness probe(s) before the mark are


# --------------------------------------------------------------------------- notifications
class _Sink:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.lock = threading.Lock()


@pytest.fixture
def webhook() -> Iterator[tuple[str, _Sink]]:
    sink = _Sink()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with sink.lock:
                sink.events.extend(json.loads(body).get("events", []))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/events", sink
    finally:
        server.shutdown()
        server.server_close()


def test_notifications_endpoint_receives_push_events(
    make_registry: RegistryFactory, make_corpus: CorpusFactory, webhook: tuple[str, _Sink]
) -> None:
    url, sink = webhook
    reg = make_registry("anonymous", notifications=url)
    pushed = make_corpus(reg).push("notify/app", "1.0", ImageKind.OCI)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with sink.lock:
            hits = [
                e
                for e in sink.events
                if e["action"] == "push"
                and e["target"].get("tag") == "1.0"
                and e["target"]["repository"] == "notify/app"
            ]
        if hits:
            break
        time.sleep(0.05)
    assert hits and hits[0]["target"]["digest"] == pushed.digest


def test_skopeo_copy_between_registries(
    registry_anon: RegistryProcess, registry_basic: RegistryProcess, make_corpus: CorpusFactory
) -> None:
    pushed = make_corpus(registry_anon).push("copy/app", "1.0", ImageKind.DOCKER_LIST)
    skopeo_copy(
        registry_anon.ref("copy/app", "1.0"),
        registry_basic.ref("copy/app", "1.0"),
        dest_creds=registry_basic.creds,
    )
    assert inspect_raw_digest(registry_basic.ref("copy/app", "1.0"), registry_basic.creds) == pushed.digest
