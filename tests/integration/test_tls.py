"""TLS to registries (security acceptance): certificates are verified by default, a registry's own
CA (``ca_certificate``) is trusted instead of the system's and wins over ``insecure``, and
``insecure`` alone turns verification off. Real registries serving HTTPS on loopback, each with
a CA made for it alone (tests/support/registry.py, ``tls=True``)."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from adapters.distribution.client import DistributionClient, _tls_verify
from adapters.endpoint import Endpoint
from adapters.errors import ConfigError, TransportError
from tasks.blobs import BlobCopier
from tasks.models import TagPlan, TransferSpec
from tasks.transfer import transfer_repository
from tests.support.corpus import CorpusBuilder, ImageKind
from tests.support.endpoints import client_for
from tests.support.registry import RegistryProcess, make_tls_files
from tests.support.skopeo import inspect_raw_digest

pytestmark = pytest.mark.integration

VERIFY_FAILED = "CERTIFICATE_VERIFY_FAILED"


def tls_endpoint(reg: RegistryProcess, **kw: object) -> Endpoint:
    password = SecretStr(reg.password) if reg.password else None
    return Endpoint(url=reg.url, username=reg.username, password=password, **kw)  # type: ignore[arg-type]


def tls_corpus(make_corpus, reg: RegistryProcess) -> CorpusBuilder:
    """A corpus builder whose (test-side) HTTP client trusts the registry's CA."""
    builder: CorpusBuilder = make_corpus(reg)
    builder.client.http.close()
    builder.client.http = httpx.Client(base_url=reg.url, auth=reg.httpx_auth(), timeout=60.0,
                                       verify=reg.verify)
    return builder


@pytest.fixture
def tls_registry(make_registry) -> RegistryProcess:
    reg = make_registry("basic", tls=True)
    assert reg.url.startswith("https://127.0.0.1:")
    return reg


@pytest.fixture
def other_ca(tmp_path: Path) -> str:
    """A valid CA that did not sign the registry's certificate."""
    return make_tls_files(tmp_path).ca_path.read_text()


def test_testbed_serves_https_signed_by_its_own_ca(tls_registry):
    assert tls_registry.ca_path is not None and tls_registry.ca_path.is_file()
    assert tls_registry.ca_pem is not None and tls_registry.ca_pem.startswith("-----BEGIN CERTIFICATE-----")
    assert httpx.get(f"{tls_registry.url}/v2/", verify=tls_registry.verify).status_code == 401
    with pytest.raises(httpx.ConnectError, match=VERIFY_FAILED):
        httpx.get(f"{tls_registry.url}/v2/")  # the system's CAs do not know it
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://{tls_registry.host}/v2/").raise_for_status()  # no plain HTTP beside it


async def test_refused_by_default_and_nothing_is_sent(tls_registry):
    mark = tls_registry.log_mark()
    async with DistributionClient(tls_endpoint(tls_registry)) as client:
        with pytest.raises(TransportError, match=VERIFY_FAILED) as ping:
            await client.ping()
        with pytest.raises(TransportError, match=VERIFY_FAILED):
            await client.check_credentials()
        with pytest.raises(TransportError, match=VERIFY_FAILED):
            _ = [name async for name in client.catalog()]
    assert "certificate verify failed" in str(ping.value)
    assert ping.value.transient  # as any transport failure; the task retries then give up
    # The handshake failed before any request: the credentials never left the process.
    assert tls_registry.count_requests(since=mark) == 0


async def test_accepted_with_its_ca_as_pem_text(tls_registry, make_corpus):
    tls_corpus(make_corpus, tls_registry).push("team/app", ["1.0"], ImageKind.OCI)
    async with DistributionClient(tls_endpoint(tls_registry, ca_certificate=tls_registry.ca_pem)) as client:
        assert await client.ping() == 401
        await client.check_credentials()
        assert [name async for name in client.catalog()] == ["team/app"]
        assert await client.list_tags("team/app") == ["1.0"]


async def test_accepted_with_insecure(tls_registry, make_corpus):
    tls_corpus(make_corpus, tls_registry).push("team/app", ["1.0"], ImageKind.OCI)
    async with DistributionClient(tls_endpoint(tls_registry, insecure=True)) as client:
        assert await client.ping() == 401
        await client.check_credentials()
        assert await client.list_tags("team/app") == ["1.0"]


async def test_ca_certificate_wins_over_insecure(tls_registry, other_ca):
    # The registry's own CA with insecure: fine (the CA is used, not "no verification").
    async with DistributionClient(tls_endpoint(tls_registry, ca_certificate=tls_registry.ca_pem,
                                               insecure=True)) as client:
        assert await client.ping() == 401
    # Another CA with insecure: still refused, so insecure did not switch verification off.
    mark = tls_registry.log_mark()
    wrong = tls_endpoint(tls_registry, ca_certificate=other_ca, insecure=True)
    async with DistributionClient(wrong) as client:
        with pytest.raises(TransportError, match=VERIFY_FAILED):
            await client.ping()
        with pytest.raises(TransportError, match=VERIFY_FAILED):
            await client.check_credentials()
    assert tls_registry.count_requests(since=mark) == 0


async def test_a_registry_ca_replaces_the_system_cas_it_does_not_add_to_them(tls_registry, other_ca):
    # A CA bundle holding another CA only: the registry's certificate is refused, which shows that
    # ca_certificate is the whole trust store for this registry (as Harbor's ca_certificate).
    async with DistributionClient(tls_endpoint(tls_registry, ca_certificate=other_ca)) as client:
        with pytest.raises(TransportError, match=VERIFY_FAILED):
            await client.ping()
    # A bundle of both: accepted.
    both = other_ca + (tls_registry.ca_pem or "")
    async with DistributionClient(tls_endpoint(tls_registry, ca_certificate=both)) as client:
        assert await client.ping() == 401


def test_a_ca_certificate_that_is_not_a_certificate_is_a_config_error(tls_registry):
    broken = "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n"
    with pytest.raises(ConfigError, match="ca_certificate"):
        DistributionClient(tls_endpoint(tls_registry, ca_certificate=broken))


def test_a_ca_bundle_with_comments_and_crlf_is_accepted(tls_registry, other_ca):
    # Distribution bundles carry comment lines, often with non-ASCII issuer names, which
    # OpenSSL's cadata refuses as such: only the certificate blocks count.
    assert tls_registry.ca_pem is not None
    bundle = f"# Főtanúsítvány (comment)\n{other_ca}\n# ours:\n{tls_registry.ca_pem}".replace("\n", "\r\n")
    verify = _tls_verify(tls_endpoint(tls_registry, ca_certificate=bundle))
    assert isinstance(verify, ssl.SSLContext)
    assert verify.cert_store_stats()["x509_ca"] == 2
    assert httpx.get(f"{tls_registry.url}/v2/", verify=verify).status_code == 401


@pytest.mark.parametrize("direction", ["tls-source", "tls-target"])
async def test_transfer_between_a_tls_registry_and_a_plain_one(make_registry, make_corpus, direction):
    tls = make_registry("basic", tls=True)
    plain = make_registry("basic")
    src, dst = (tls, plain) if direction == "tls-source" else (plain, tls)
    corpus = tls_corpus(make_corpus, src) if src is tls else make_corpus(src)
    pushed = corpus.push("team/app", ["1.0"], ImageKind.OCI_INDEX)
    other = corpus.push("team/app", ["2.0"], ImageKind.DOCKER, layers=3)

    def endpoint(reg: RegistryProcess) -> Endpoint:
        return tls_endpoint(reg, ca_certificate=reg.ca_pem) if reg is tls else tls_endpoint(reg)

    async with DistributionClient(endpoint(src)) as source, DistributionClient(endpoint(dst)) as target:
        spec = TransferSpec(source_repository="team/app", target_repository="mirror/app",
                            tags=[TagPlan(tag="1.0"), TagPlan(tag="2.0")], override=True)
        result = await transfer_repository(source, target, spec, BlobCopier(source, target))

    assert result.status == "Succeeded", result.error
    assert [t.status for t in result.tags] == ["copied", "copied"]
    assert result.bytes > 0
    # Over TLS the client negotiates HTTP/2 (ALPN): the streamed uploads and auth took that path.
    assert any('HTTP/2.0"' in e.line for e in tls.access_log() if e.path != "/v2/")
    for tag, want in (("1.0", pushed.digest), ("2.0", other.digest)):
        assert inspect_raw_digest(dst.ref("mirror/app", tag), dst.creds) == want
        assert inspect_raw_digest(src.ref("team/app", tag), src.creds) == want
    # Without the CA the same copy is refused before anything moves.
    async with DistributionClient(tls_endpoint(tls)) as unverified, client_for(plain) as plain_client:
        source, target = (unverified, plain_client) if src is tls else (plain_client, unverified)
        spec = TransferSpec(source_repository="team/app", target_repository="mirror/again",
                            tags=[TagPlan(tag="1.0")], override=True)
        failed = await transfer_repository(source, target, spec, BlobCopier(source, target))
    assert failed.status == "Failed"
    assert VERIFY_FAILED in (failed.error or "") + " ".join(t.reason or "" for t in failed.tags)


# ------------------------------------------------------------------------------------ the CLI

CONFIG = """\
version: 1
registries:
  - name: with-ca-file
    type: docker-registry
    url: {url}
    ca_certificate: {ca_path}
    credential: {{type: basic, access_key: {user}, access_secret: "${{TLS_PASSWORD}}"}}
  - name: with-ca-pem
    type: docker-registry
    url: {url}
    ca_certificate: |
{ca_pem}
    credential: {{type: basic, access_key: {user}, access_secret: "${{TLS_PASSWORD}}"}}
  - name: without-ca
    type: docker-registry
    url: {url}
    credential: {{type: basic, access_key: {user}, access_secret: "${{TLS_PASSWORD}}"}}
  - name: insecure
    type: docker-registry
    url: {url}
    insecure: true
    credential: {{type: basic, access_key: {user}, access_secret: "${{TLS_PASSWORD}}"}}
  - name: wrong-ca-insecure
    type: docker-registry
    url: {url}
    insecure: true
    ca_certificate: {other_ca_path}
    credential: {{type: basic, access_key: {user}, access_secret: "${{TLS_PASSWORD}}"}}
"""


def regflow(home: Path, *args: str, password: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "REGFLOW_"))}
    env["REGFLOW_HOME"] = str(home)
    if password is not None:
        env["TLS_PASSWORD"] = password
    return subprocess.run([sys.executable, "-m", "regflow_cli.main", *args], env=env, text=True,
                          capture_output=True, timeout=120)


def test_cli_registry_ping_trusts_the_configured_ca_only(tmp_path, tls_registry):
    home = tmp_path / "home"
    other = make_tls_files(tmp_path)
    assert tls_registry.ca_pem is not None
    config = tmp_path / "regflow.yaml"
    config.write_text(CONFIG.format(
        url=tls_registry.url, ca_path=tls_registry.ca_path, other_ca_path=other.ca_path,
        ca_pem="\n".join("      " + line for line in tls_registry.ca_pem.strip().splitlines()),
        user=tls_registry.username))
    applied = regflow(home, "apply", "-f", str(config))
    assert applied.returncode == 0, applied.stderr

    def ping(name: str) -> subprocess.CompletedProcess[str]:
        return regflow(home, "registry", "ping", name, password=tls_registry.password)

    for name in ("with-ca-file", "with-ca-pem", "insecure"):
        ok = ping(name)
        assert (ok.returncode, ok.stdout.strip()) == (0, f"{name}: healthy"), ok.stderr
    for name in ("without-ca", "wrong-ca-insecure"):
        refused = ping(name)
        assert refused.returncode == 1, (name, refused.stdout, refused.stderr)
        assert f"{name}: unhealthy" in refused.stderr, refused.stderr
        assert "certificate verify failed" in refused.stderr, refused.stderr
        assert "Traceback" not in refused.stderr
    # The CA file is read when the registry is used: a wrong password is still caught over TLS.
    denied = regflow(home, "registry", "ping", "with-ca-file", password="not-the-password")
    assert denied.returncode == 1 and "credentials refused" in denied.stderr, denied.stderr


def test_cli_a_broken_ca_certificate_is_bad_input_not_a_crash(tmp_path, tls_registry):
    home = tmp_path / "home"
    config = tmp_path / "regflow.yaml"
    config.write_text(f"""\
version: 1
registries:
  - name: broken-ca
    type: docker-registry
    url: {tls_registry.url}
    ca_certificate: |
      -----BEGIN CERTIFICATE-----
      bm90IGEgY2VydGlmaWNhdGU=
      -----END CERTIFICATE-----
""")
    assert regflow(home, "apply", "-f", str(config)).returncode == 0
    result = regflow(home, "registry", "ping", "broken-ca")
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "ca_certificate" in result.stderr and "Traceback" not in result.stderr, result.stderr
