"""Credentials stay home (issue 16, item 1), with three loopback hosts: a real registry on
127.0.0.1, and recording hosts on 127.0.0.2 and 127.0.0.3 playing object storage, a token
service, or a stranger naming its own realm. Every host records each request it is sent, so
each test asserts exactly what each host received.

(a) the registry redirects a blob GET to B, whose 401 names a realm on C: C receives nothing;
(b) a realm on another host, named by the registry itself: used, the token only at the registry
    (not at C, where the registry redirects the blob);
(c) an https registry naming an ``http://`` realm: refused, nothing sent in cleartext;
(d) an upload Location on another host: that host receives no Authorization.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pydantic import SecretStr

from adapters.distribution.client import DistributionClient
from adapters.endpoint import Endpoint
from adapters.errors import AuthenticationError
from adapters.oci import Digest
from tests.support.origin_hosts import (
    ConfiguredRegistry,
    RecordingHost,
    Responder,
    challenge_answer,
    token_answers,
    token_auth_at,
)
from tests.support.token_service import TokenService

pytestmark = pytest.mark.integration

REGISTRY_IP, B_IP, C_IP = "127.0.0.1", "127.0.0.2", "127.0.0.3"
USER, PASSWORD = "regflow", "origin-test-password"
BASIC = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
BLOB = b"layer bytes that only the registry may see " * 500
DIGEST = Digest.of(BLOB)
REPO = "team/app"

HostFactory = Callable[[str, Responder], RecordingHost]
RegistryFactory = Callable[..., ConfiguredRegistry]


@pytest.fixture
def hosts() -> Iterator[HostFactory]:
    """``hosts(address, responder)``: a started RecordingHost, closed at teardown."""
    made: list[RecordingHost] = []

    def make(address: str, responder: Responder) -> RecordingHost:
        host = RecordingHost(address, responder).start()
        made.append(host)
        return host

    yield make
    for host in made:
        host.close()


@pytest.fixture
def signer() -> Iterator[TokenService]:
    """Only the key and users of a token service; recording hosts answer its token requests."""
    service = TokenService(users={USER: PASSWORD})
    yield service
    service.close()


@pytest.fixture
def registries(testbed_binaries: None, signer: TokenService) -> Iterator[RegistryFactory]:
    """``registries(mode, realm=..., tls=..., extra=...)``: a started real registry on
    127.0.0.1 whose user is USER/PASSWORD, closed at teardown."""
    made: list[ConfiguredRegistry] = []

    def make(mode: str, *, realm: str | None = None, tls: bool = False,
             extra: dict[str, Any] | None = None) -> ConfiguredRegistry:
        token_auth = token_auth_at(signer, realm) if realm is not None else None
        reg = ConfiguredRegistry(mode, users={USER: PASSWORD}, token_auth=token_auth, tls=tls,
                                 extra=extra or {})
        made.append(reg)
        return reg.start()

    yield make
    for reg in made:
        reg.close()


def endpoint(reg: ConfiguredRegistry) -> Endpoint:
    return Endpoint(url=reg.url, username=USER, password=SecretStr(PASSWORD), ca_certificate=reg.ca_pem)


def stranger(realm_host: RecordingHost) -> Responder:
    """A host that answers everything with a 401 naming a token realm on ``realm_host``."""
    return lambda seen: challenge_answer(f'Bearer realm="{realm_host.url}/token",service="stranger"')


def own_realm(mode: str, hosts: HostFactory, signer: TokenService) -> RecordingHost | None:
    """The token service a token-mode registry names: 127.0.0.1 on a port of its own."""
    return hosts(REGISTRY_IP, token_answers(signer)) if mode == "token" else None


async def push_blob(client: DistributionClient) -> None:
    location = await client.start_upload(REPO)
    assert location is not None
    await client.put_blob(REPO, location, DIGEST, len(BLOB), BLOB)


def assert_one_line_without_secret(error: Exception) -> None:
    message = str(error)
    assert "\n" not in message
    assert PASSWORD not in message and BASIC.split()[1] not in message


@pytest.mark.parametrize("mode", ["token", "basic"])
async def test_a_401_from_where_a_blob_was_redirected_reaches_no_realm(mode, hosts, signer, registries):
    realm_c = hosts(C_IP, token_answers(signer))  # would hand out tokens, were it ever asked
    storage_b = hosts(B_IP, stranger(realm_c))
    home_realm = own_realm(mode, hosts, signer)
    redirect = {"storage": [{"name": "redirect", "options": {"baseurl": f"{storage_b.url}/"}}]}
    reg = registries(mode, realm=f"{home_realm.url}/token" if home_realm else None,
                     extra={"middleware": redirect})

    async with DistributionClient(endpoint(reg)) as client:
        await push_blob(client)  # the registry's own auth is learnt and used
        with pytest.raises(AuthenticationError) as info:
            async with client.open_blob(REPO, DIGEST):
                pass
        await client.check_credentials()  # still the registry's own realm, not C's

    assert realm_c.received == []
    [at_storage] = storage_b.received
    assert at_storage.method == "GET" and at_storage.path.endswith(f"/{DIGEST.hex}/data")
    assert at_storage.authorization is None
    assert info.value.status == 401 and B_IP in str(info.value)
    assert_one_line_without_secret(info.value)
    assert reg.count_requests("GET", rf"/v2/{REPO}/blobs/{DIGEST}", status=307) == 1
    if home_realm is not None:
        assert home_realm.received and {r.authorization for r in home_realm.received} == {BASIC}


async def test_a_realm_on_another_host_named_by_the_registry_is_used(hosts, signer, registries):
    realm_b = hosts(B_IP, token_answers(signer))
    storage_c = hosts(C_IP, lambda seen: (200, {"Content-Type": "application/octet-stream"}, BLOB))
    redirect = {"storage": [{"name": "redirect", "options": {"baseurl": f"{storage_c.url}/"}}]}
    reg = registries("token", realm=f"{realm_b.url}/token", extra={"middleware": redirect})

    async with DistributionClient(endpoint(reg)) as client:
        await push_blob(client)
        async with client.open_blob(REPO, DIGEST) as stream:
            body = b"".join([chunk async for chunk in stream.chunks()])
        await client.check_credentials()

    assert body == BLOB
    # The realm got the token requests, with the credentials, because the registry named it...
    assert {(r.method, r.path) for r in realm_b.received} == {("GET", "/token")}
    assert {r.authorization for r in realm_b.received} == {BASIC}
    scopes = {s for r in realm_b.received for s in r.target.split("scope=")[1:]}
    assert any(s.startswith(f"repository%3A{REPO.replace('/', '%2F')}%3A") for s in scopes)
    # ...the tokens it issued went to the registry, which accepted them...
    assert reg.count_requests("PUT", rf"/v2/{REPO}/blobs/uploads/.*", status=201) == 1
    assert reg.count_requests("GET", rf"/v2/{REPO}/blobs/{DIGEST}", status=307) == 1
    # ...and nowhere else: the blob's storage got neither a token nor the password.
    [at_storage] = storage_c.received
    assert at_storage.path.endswith(f"/{DIGEST.hex}/data") and at_storage.authorization is None


async def test_an_https_registry_naming_an_http_realm_is_refused(hosts, signer, registries):
    realm_b = hosts(B_IP, token_answers(signer))
    reg = registries("token", realm=f"{realm_b.url}/token", tls=True)
    assert reg.url.startswith("https://")
    mark = reg.log_mark()

    async with DistributionClient(endpoint(reg)) as client:
        with pytest.raises(AuthenticationError) as info:
            await client.check_credentials()
        with pytest.raises(AuthenticationError):
            await push_blob(client)

    assert realm_b.received == []  # nothing went over plain http, credentials least of all
    message = str(info.value)
    assert reg.host in message and "plain http" in message and realm_b.netloc in message
    assert_one_line_without_secret(info.value)
    assert not info.value.transient
    # The registry saw two requests without credentials, and nothing more.
    assert [(e.method, e.status) for e in reg.requests(since=mark)] == [("GET", 401), ("POST", 401)]


@pytest.mark.parametrize("mode", ["token", "basic"])
async def test_an_upload_location_on_another_host_gets_no_credentials(mode, hosts, signer, registries):
    realm_c = hosts(C_IP, token_answers(signer))
    elsewhere_b = hosts(B_IP, stranger(realm_c))
    home_realm = own_realm(mode, hosts, signer)
    # http.host is the URL the registry writes into the Locations it hands out.
    reg = registries(mode, realm=f"{home_realm.url}/token" if home_realm else None,
                     extra={"http": {"host": elsewhere_b.url}})

    async with DistributionClient(endpoint(reg)) as client:
        location = await client.start_upload(REPO)
        assert location is not None and location.startswith(f"{elsewhere_b.url}/v2/{REPO}/blobs/uploads/")
        with pytest.raises(AuthenticationError) as info:
            await client.put_blob(REPO, location, DIGEST, len(BLOB), BLOB)

    [put] = elsewhere_b.received
    assert put.method == "PUT" and put.authorization is None
    assert realm_c.received == []
    assert info.value.status == 401 and B_IP in str(info.value)
    assert_one_line_without_secret(info.value)
    # The registry itself got the credentials it asked for: its POST was answered 202.
    assert reg.count_requests("POST", rf"/v2/{REPO}/blobs/uploads/", status=202) == 1
    if home_realm is not None:
        assert home_realm.received and {r.authorization for r in home_realm.received} == {BASIC}
