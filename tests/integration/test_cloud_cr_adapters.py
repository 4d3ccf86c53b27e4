"""The five registry types added last (huawei-SWR, ali-acr, tencent-tcr, volcengine-cr, dtr): each
copies real images through its adapter's distribution client into a real CNCF registry on
loopback that takes only the login the type's credential flow produces. The vendor APIs
(listing, namespaces, temporary logins) are the in-memory fakes of the unit tests; every /v2/
request goes to the real registry and is recorded on its way there. Digests are checked with
skopeo."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from adapters.aliacr import AliAcrAdapter
from adapters.base import Adapter
from adapters.dtr import DtrAdapter
from adapters.endpoint import Endpoint
from adapters.swr import SwrAdapter
from adapters.tcr import TcrAdapter
from adapters.volcengine import VolcengineAdapter
from tasks.blobs import BlobCopier
from tasks.models import TagPlan, TransferSpec
from tasks.transfer import transfer_repository
from tests.support.corpus import ImageKind
from tests.support.endpoints import client_for
from tests.support.fake_cloud_cr_apis import FakeAliAcrApi, FakeTcrApi, FakeVolcengineApi
from tests.support.fake_swr_dtr_apis import FakeDtrApi, FakeSwrApi
from tests.support.skopeo import inspect_raw_digest

pytestmark = pytest.mark.integration

# Cloud API URLs on a closed loopback port: the MockTransport answers; nothing leaves the host.
CLOSED_API_URL = "http://127.0.0.1:1"
ACCESS_KEY = "AKIDintegration0123"
SECRET_KEY = "integration-secret-" + secrets.token_hex(8)
TEMP_USER, TEMP_PASSWORD = "temp-user", "temp-" + secrets.token_hex(12)


class RecordingTransport(httpx.AsyncBaseTransport):
    """Sends to the real registry, keeping every request; paths the vendor API on the same
    host owns (SWR's /dockyard, DTR's /api and /enzi) go to its fake instead."""

    def __init__(self, api: Any = None) -> None:
        self.api = api
        self.to_registry: list[httpx.Request] = []
        self._real = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.api is not None and self.api.handles(request.url.path):
            await request.aread()
            response: httpx.Response = self.api(request)
            return response
        self.to_registry.append(request)
        return await self._real.handle_async_request(request)

    async def aclose(self) -> None:
        await self._real.aclose()


@dataclass
class Case:
    registry_users: dict[str, str]
    api: Any
    build: Callable[[str, RecordingTransport, Any], Adapter]
    # The namespace the fake API holds after prepare_for_push.
    created: Callable[[Any], bool]


def _swr() -> Case:
    region = "cn-north-4"
    login = hmac.new(SECRET_KEY.encode(), ACCESS_KEY.encode(), hashlib.sha256).hexdigest()
    api = FakeSwrApi(user=f"{region}@{ACCESS_KEY}", password=login)
    return Case({f"{region}@{ACCESS_KEY}": login}, api,
                lambda url, rec, api: SwrAdapter(_endpoint(url), transport=rec, region=region),
                lambda api: "mirror" in api.namespaces)


def _dtr() -> Case:
    api = FakeDtrApi(user=ACCESS_KEY, password=SECRET_KEY)
    return Case({ACCESS_KEY: SECRET_KEY}, api,
                lambda url, rec, api: DtrAdapter(_endpoint(url), transport=rec),
                lambda api: sorted(api.namespaces.get("mirror", [])) == ["team-app", "team-multi"])


def _ali() -> Case:
    api = FakeAliAcrApi(access_key=ACCESS_KEY, secret_key=SECRET_KEY, registry_user=TEMP_USER,
                        registry_password=TEMP_PASSWORD, instance_id="cri-integration")
    return Case({TEMP_USER: TEMP_PASSWORD}, api,
                lambda url, rec, api: AliAcrAdapter(_endpoint(url), transport=rec,
                                                    api_transport=httpx.MockTransport(api),
                                                    api_url=CLOSED_API_URL, region="cn-hangzhou",
                                                    instance_id="cri-integration"),
                lambda api: api.auto_create == {"mirror": True})


def _tcr() -> Case:
    api = FakeTcrApi(access_key=ACCESS_KEY, secret_key=SECRET_KEY, registry_user=TEMP_USER,
                     registry_password=TEMP_PASSWORD)
    return Case({TEMP_USER: TEMP_PASSWORD}, api,
                lambda url, rec, api: TcrAdapter(_endpoint(url), transport=rec,
                                                 api_transport=httpx.MockTransport(api),
                                                 api_url=CLOSED_API_URL, region=api.region,
                                                 registry_id=api.registry_id),
                lambda api: api.repositories() == ["mirror/team-app", "mirror/team-multi"])


def _volcengine() -> Case:
    api = FakeVolcengineApi(access_key=ACCESS_KEY, secret_key=SECRET_KEY, registry_user=TEMP_USER,
                            registry_password=TEMP_PASSWORD)
    return Case({TEMP_USER: TEMP_PASSWORD}, api,
                lambda url, rec, api: VolcengineAdapter(_endpoint(url), transport=rec,
                                                        api_transport=httpx.MockTransport(api),
                                                        api_url=CLOSED_API_URL, region=api.region,
                                                        registry_name=api.registry_name),
                lambda api: api.repositories() == ["mirror/team-app", "mirror/team-multi"])


def _endpoint(url: str) -> Endpoint:
    return Endpoint(url=url, username=ACCESS_KEY, password=SecretStr(SECRET_KEY))


@pytest.mark.parametrize("make_case", [_swr, _ali, _tcr, _volcengine, _dtr],
                         ids=["huawei-SWR", "ali-acr", "tencent-tcr", "volcengine-cr", "dtr"])
async def test_bytes_travel_through_the_distribution_client_with_the_types_own_login(
        make_registry, make_corpus, make_case: Callable[[], Case]) -> None:
    case = make_case()
    src = make_registry("anonymous")
    corpus = make_corpus(src)
    pushed = [corpus.push("team/app", ["1.0"], ImageKind.DOCKER),
              corpus.push("team/multi", ["2.0"], ImageKind.OCI_INDEX)]
    dst = make_registry("basic", users=case.registry_users)
    recording = RecordingTransport(case.api if hasattr(case.api, "handles") else None)
    target = case.build(dst.url, recording, case.api)
    targets = [f"mirror/{p.repository.replace('/', '-')}" for p in pushed]
    try:
        await target.prepare_for_push(targets)
        results = []
        async with client_for(src) as source:
            for p, repo in zip(pushed, targets, strict=True):
                spec = TransferSpec(source_repository=p.repository, target_repository=repo,
                                    tags=[TagPlan(tag=p.tag)])
                copier = BlobCopier(source, target.client, mount_probe=target.info.supports_mount)
                results.append(await transfer_repository(source, target.client, spec, copier))
        health = await target.health()
    finally:
        await target.aclose()

    assert [r.status for r in results] == ["Succeeded", "Succeeded"], [r.error for r in results]
    assert case.created(case.api)
    assert health.status == "healthy", health.reason
    assert getattr(case.api, "refused", []) == []
    # The registry saw the type's login only: never the secret key, never a cloud API signature.
    assert recording.to_registry
    for request in recording.to_registry:
        auth = request.headers.get("Authorization", "")
        assert SECRET_KEY not in auth and not auth.startswith(("TC3", "ACS3", "HMAC-SHA256")), auth[:20]
    for p, repo in zip(pushed, targets, strict=True):
        assert inspect_raw_digest(dst.ref(repo, p.tag), dst.creds) == p.digest
