"""Real transfers with the cloud vendors' auth modes against real registries on loopback: the
vendor APIs (ECR's GetAuthorizationToken, Google's OAuth2 token endpoint) are in-memory fakes
behind httpx.MockTransport; every /v2/ request and every registry token goes to a real CNCF
registry and the test token service. Digests are checked with skopeo."""

from __future__ import annotations

import secrets

import httpx
import pytest
from pydantic import SecretStr

from adapters.acr import REFRESH_TOKEN_USER, AcrAdapter
from adapters.artifactory import ArtifactoryAdapter
from adapters.base import Adapter
from adapters.ecr import EcrAdapter
from adapters.endpoint import Endpoint
from adapters.gcr import GcrAdapter
from tasks.blobs import BlobCopier
from tasks.models import TagPlan, TransferResult, TransferSpec
from tasks.transfer import transfer_repository
from tests.support.corpus import ImageKind, PushedTag
from tests.support.endpoints import client_for
from tests.support.fake_ecr_api import FakeEcrApi
from tests.support.fake_google_oauth import FakeGoogleOAuth, ServiceAccount
from tests.support.refresh_token_service import RefreshTokenService
from tests.support.registry import RegistryProcess
from tests.support.skopeo import inspect_raw_digest

pytestmark = pytest.mark.integration

# Vendor API URLs on a closed loopback port: the MockTransport answers; nothing leaves the host.
ECR_API_URL = "http://127.0.0.1:1/"
GOOGLE_TOKEN_URI = "http://127.0.0.1:1/token"
KEY_ID = "AKIAIOSFODNN7EXAMPLE"
SECRET_KEY = "integration-secret-access-key-" + secrets.token_hex(8)


async def copy_into(source: RegistryProcess, target: Adapter, pushed: PushedTag,
                    target_repo: str) -> TransferResult:
    """Prepare the target, then copy one tag through the adapter's own client."""
    await target.prepare_for_push([target_repo])
    async with client_for(source) as src:
        spec = TransferSpec(source_repository=pushed.repository, target_repository=target_repo,
                            tags=[TagPlan(tag=pushed.tag)])
        copier = BlobCopier(src, target.client, mount_probe=target.info.supports_mount)
        return await transfer_repository(src, target.client, spec, copier)


def seed(make_registry, make_corpus) -> tuple[RegistryProcess, list[PushedTag]]:
    src = make_registry("anonymous")
    corpus = make_corpus(src)
    return src, [corpus.push("team/app", ["1.0"], ImageKind.DOCKER),
                 corpus.push("team/multi", ["2.0"], ImageKind.OCI_INDEX)]


async def test_ecr_token_from_the_api_is_the_registry_password(make_registry, make_corpus) -> None:
    src, pushed = seed(make_registry, make_corpus)
    api = FakeEcrApi(access_key_id=KEY_ID, secret_access_key=SECRET_KEY, region="us-east-1",
                     registry_password="ecr-" + secrets.token_hex(12))
    # ECR's registry takes Basic AWS:<token password>: an htpasswd registry with that one user.
    dst = make_registry("basic", users={"AWS": api.registry_password})
    ecr = EcrAdapter(Endpoint(url=dst.url, username=KEY_ID, password=SecretStr(SECRET_KEY)),
                     api_transport=httpx.MockTransport(api), api_url=ECR_API_URL, region="us-east-1",
                     registry_id=api.registry_id)
    try:
        results = [await copy_into(src, ecr, p, f"mirror/{p.repository}") for p in pushed]
        listed = [name async for name in ecr.list_repositories()]
        health = await ecr.health()
    finally:
        await ecr.aclose()

    assert [r.status for r in results] == ["Succeeded", "Succeeded"], [r.error for r in results]
    assert sorted(api.repositories) == listed == ["mirror/team/app", "mirror/team/multi"]
    assert api.refused == []
    assert api.actions().count("GetAuthorizationToken") == 1  # 12 hours: one token for the run
    assert api.actions().count("CreateRepository") == 2
    assert health.status == "healthy"
    for p in pushed:
        assert inspect_raw_digest(dst.ref(f"mirror/{p.repository}", p.tag), dst.creds) == p.digest


async def test_gcr_json_key_login_at_the_token_service(make_registry, make_corpus) -> None:
    src, pushed = seed(make_registry, make_corpus)
    account = ServiceAccount(token_uri=GOOGLE_TOKEN_URI)
    svc = RefreshTokenService(users={"_json_key": account.json_key}, refresh_tokens={}).start()
    try:
        dst = make_registry("token", token_service=svc)
        gcr = GcrAdapter(Endpoint(url=dst.url, username="_json_key", password=SecretStr(account.json_key)))
        try:
            results = [await copy_into(src, gcr, p, f"project/{p.repository}") for p in pushed]
        finally:
            await gcr.aclose()
        users = {r.username for r in svc.requests if r.status == 200}
        digests = [inspect_raw_digest(dst.ref(f"project/{p.repository}", p.tag), dst.creds) for p in pushed]
    finally:
        svc.close()

    assert [r.status for r in results] == ["Succeeded", "Succeeded"], [r.error for r in results]
    assert users == {"_json_key"}
    assert digests == [p.digest for p in pushed]


async def test_gcr_oauth2_access_token_from_a_signed_jwt(make_registry, make_corpus) -> None:
    src, pushed = seed(make_registry, make_corpus)
    account = ServiceAccount(token_uri=GOOGLE_TOKEN_URI)
    google = FakeGoogleOAuth(account)
    svc = RefreshTokenService(users={"oauth2accesstoken": google.access_token}, refresh_tokens={}).start()
    try:
        dst = make_registry("token", token_service=svc)
        endpoint = Endpoint(url=dst.url, username="oauth2accesstoken", password=SecretStr(account.json_key))
        gcr = GcrAdapter(endpoint, api_transport=httpx.MockTransport(google))
        try:
            results = [await copy_into(src, gcr, p, f"project/{p.repository}") for p in pushed]
            health = await gcr.health()
        finally:
            await gcr.aclose()
        answered = [(r.username, r.status) for r in svc.requests]
        digests = [inspect_raw_digest(dst.ref(f"project/{p.repository}", p.tag), dst.creds) for p in pushed]
    finally:
        svc.close()

    assert [r.status for r in results] == ["Succeeded", "Succeeded"], [r.error for r in results]
    assert google.refused == [] and len(google.assertions) == 1  # one hour: one access token
    assert answered and set(answered) == {("oauth2accesstoken", 200)}
    assert health.status == "healthy", health.reason
    assert digests == [p.digest for p in pushed]


async def test_acr_refresh_token_user(make_registry, make_corpus) -> None:
    src, pushed = seed(make_registry, make_corpus)
    refresh = "acr-refresh-" + secrets.token_hex(16)
    svc = RefreshTokenService(users={"acr-identity": "pw-" + secrets.token_hex(8)},
                              refresh_tokens={refresh: "acr-identity"}).start()
    try:
        dst = make_registry("token", token_service=svc)
        acr = AcrAdapter(Endpoint(url=dst.url, username=REFRESH_TOKEN_USER, password=SecretStr(refresh)))
        try:
            results = [await copy_into(src, acr, p, f"mirror/{p.repository}") for p in pushed]
            listed = [name async for name in acr.list_repositories()]
        finally:
            await acr.aclose()
        requests = svc.requests
        digests = [inspect_raw_digest(dst.ref(f"mirror/{p.repository}", p.tag), dst.creds) for p in pushed]
    finally:
        svc.close()

    assert [r.status for r in results] == ["Succeeded", "Succeeded"], [r.error for r in results]
    assert listed == ["mirror/team/app", "mirror/team/multi"]
    # Every token came from the refresh-token grant; the refresh token never went out as Basic.
    assert requests
    assert {(r.method, r.username, r.status) for r in requests} == {("POST", "acr-identity", 200)}
    assert digests == [p.digest for p in pushed]


class _ArtifactoryApiBeside(httpx.AsyncBaseTransport):
    """Artifactory serves its REST API and its Docker registry on one host: the API part (under
    /artifactory/) is an in-memory fake, everything else goes to the real registry."""

    def __init__(self, user: str, password: str) -> None:
        self.repositories: list[dict[str, str]] = [{"key": "libs", "type": "LOCAL", "packageType": "docker"}]
        self.calls: list[tuple[str, str, str | None]] = []
        self.expected_auth = httpx.BasicAuth(user, password).auth_flow(httpx.Request("GET", "/")).__next__() \
            .headers["Authorization"]
        self._real = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if not request.url.path.startswith("/artifactory/"):
            return await self._real.handle_async_request(request)
        auth = request.headers.get("Authorization")
        self.calls.append((request.method, request.url.path, auth))
        if auth != self.expected_auth:
            return httpx.Response(401, json={"errors": [{"status": 401, "message": "Bad credentials"}]})
        if request.method == "GET" and request.url.path == "/artifactory/api/repositories":
            return httpx.Response(200, json=self.repositories)
        if request.method == "PUT" and request.url.path.startswith("/artifactory/api/repositories/"):
            key = request.url.path.rsplit("/", 1)[1]
            self.repositories.append({"key": key, "type": "LOCAL", "packageType": "docker"})
            return httpx.Response(200, text=f"Successfully created repository '{key}'")
        return httpx.Response(404, json={"errors": [{"status": 404, "message": "Not Found"}]})

    async def aclose(self) -> None:
        await self._real.aclose()


async def test_artifactory_basic_auth_creates_the_repository_key_and_copies(
        make_registry, make_corpus) -> None:
    src, pushed = seed(make_registry, make_corpus)
    user, password = "deployer", "api-key-" + secrets.token_hex(12)
    dst = make_registry("basic", users={user: password})
    routes = _ArtifactoryApiBeside(user, password)
    artifactory = ArtifactoryAdapter(Endpoint(url=dst.url, username=user, password=SecretStr(password)),
                                     transport=routes)
    try:
        results = [await copy_into(src, artifactory, p, f"mirror/{p.repository}") for p in pushed]
    finally:
        await artifactory.aclose()

    assert [r.status for r in results] == ["Succeeded", "Succeeded"], [r.error for r in results]
    # The missing key was created once, over the API, with the same Basic credentials.
    puts = [path for method, path, _ in routes.calls if method == "PUT"]
    assert puts == ["/artifactory/api/repositories/mirror"]
    assert {auth for _, _, auth in routes.calls} == {routes.expected_auth}
    for p in pushed:
        assert inspect_raw_digest(dst.ref(f"mirror/{p.repository}", p.tag), dst.creds) == p.digest
