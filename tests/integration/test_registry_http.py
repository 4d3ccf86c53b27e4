"""The distribution client on httpx's own transport against the real registry: HTTP/2 where a
TLS registry offers it (distribution serves h2 by ALPN), HTTP/1.1 to a plain-http one, and the
same answers either way."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from pydantic import SecretStr

from adapters.distribution.client import DistributionClient
from adapters.endpoint import Endpoint
from adapters.oci import Digest
from tests.support.registry import RegistryProcess

pytestmark = pytest.mark.integration


def endpoint(reg: RegistryProcess) -> Endpoint:
    password = SecretStr(reg.password) if reg.password else None
    return Endpoint(url=reg.url, username=reg.username, password=password, ca_certificate=reg.ca_pem)


async def versions_seen(reg: RegistryProcess) -> tuple[set[str], list[int | None]]:
    versions: set[str] = set()

    def observe(response: httpx.Response) -> None:
        versions.add(response.http_version)

    async with DistributionClient(endpoint(reg), response_observer=observe) as client:
        await client.check_credentials()
        assert [name async for name in client.catalog()] == []
        sizes = await asyncio.gather(*(client.blob_exists("a/b", Digest.of(str(i).encode()))
                                       for i in range(20)))
    return versions, sizes


@pytest.mark.parametrize(("tls", "version"), [(True, "HTTP/2"), (False, "HTTP/1.1")])
async def test_http2_where_a_tls_registry_offers_it(make_registry, tls: bool, version: str) -> None:
    reg = make_registry("basic", tls=tls)

    versions, sizes = await versions_seen(reg)

    assert versions == {version}
    assert sizes == [None] * 20
