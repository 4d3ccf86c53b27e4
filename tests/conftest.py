"""Shared fixtures: real registries on loopback (anonymous, htpasswd basic, bearer token), a token
service, and corpus builders. Every registry gets fresh storage per test and is stopped (by its
own PID) and removed at teardown; set REGFLOW_KEEP_TESTBED=1 to keep the directories."""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from typing import Any, Literal

import pytest

from tests.support.corpus import CorpusBuilder
from tests.support.prefect_server import PrefectServer
from tests.support.registry import (
    DEBIAN_PACKAGES,
    HTPASSWD_BIN,
    REGISTRY_BIN,
    RegistryMode,
    RegistryProcess,
)
from tests.support.residents import stop_watchers_under
from tests.support.skopeo import SKOPEO_BIN
from tests.support.token_service import TokenService

RegistryKind = Literal["anonymous", "anon", "basic", "htpasswd", "token", "bearer"]
RegistryFactory = Callable[..., RegistryProcess]
CorpusFactory = Callable[..., CorpusBuilder]

_KINDS: dict[str, RegistryMode] = {
    "anonymous": "anonymous",
    "anon": "anonymous",
    "basic": "basic",
    "htpasswd": "basic",
    "token": "token",
    "bearer": "token",
}


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Remember each phase's report on the item, so fixtures can tell whether the test failed."""
    report = yield
    setattr(item, f"_regflow_rep_{report.when}", report)
    return report


def _test_failed(request: pytest.FixtureRequest) -> bool:
    rep = getattr(request.node, "_regflow_rep_call", None)
    return bool(rep is not None and rep.failed)


@pytest.fixture(scope="session")
def testbed_binaries() -> None:
    """Fail (not skip) when the Debian packages the integration test bed runs on are missing."""
    missing = [str(p) for p in (REGISTRY_BIN, SKOPEO_BIN, HTPASSWD_BIN) if not p.is_file()]
    if missing:
        pytest.fail(
            f"missing {', '.join(missing)}: install the Debian packages `{DEBIAN_PACKAGES}` "
            f"(apt-get install {DEBIAN_PACKAGES})",
            pytrace=False,
        )


@pytest.fixture
def token_service() -> Iterator[TokenService]:
    """A running token service with one user (``.username`` / ``.password``), ttl 300 s.
    Its ``requests`` list records every token fetch of this test."""
    svc = TokenService(users={"regflow": "token-password"}).start()
    try:
        yield svc
    finally:
        svc.close()


@pytest.fixture
def make_registry(request: pytest.FixtureRequest, testbed_binaries: None) -> Iterator[RegistryFactory]:
    """Factory for fresh, empty registries, all closed at teardown::

    reg = make_registry("basic")                       # "anonymous" | "basic" | "token"
    reg = make_registry("token", token_service=svc)    # default: the `token_service` fixture
    reg = make_registry("anonymous", notifications="http://127.0.0.1:PORT/events")
    reg = make_registry("basic", users={"a": "pw-a", "b": "pw-b"}, start=False)
    """
    created: list[RegistryProcess] = []

    def factory(
        kind: RegistryKind = "anonymous",
        *,
        users: Mapping[str, str] | None = None,
        token_service: TokenService | None = None,
        notifications: str | Sequence[str] | None = None,
        start: bool = True,
        **kwargs: Any,
    ) -> RegistryProcess:
        mode = _KINDS[kind]
        if mode == "token":
            svc = token_service if token_service is not None else request.getfixturevalue("token_service")
            reg = RegistryProcess(
                "token",
                users=users or svc.users,
                token_auth=svc.auth_config,
                notifications=notifications,
                **kwargs,
            )
            reg.token_service = svc
        elif mode == "basic":
            reg = RegistryProcess(
                "basic", users=users or {"regflow": "basic-password"}, notifications=notifications, **kwargs
            )
        else:
            reg = RegistryProcess("anonymous", notifications=notifications, **kwargs)
        created.append(reg)
        if start:
            reg.start()
        return reg

    try:
        yield factory
    finally:
        failed = _test_failed(request)
        for reg in reversed(created):
            if failed:
                tail = "\n".join(reg.log_text().splitlines()[-40:])
                print(f"--- {reg!r} log tail ---\n{tail}")
            reg.close()


@pytest.fixture
def registry_anon(make_registry: RegistryFactory) -> RegistryProcess:
    """A fresh anonymous registry (no auth)."""
    return make_registry("anonymous")


@pytest.fixture
def registry_basic(make_registry: RegistryFactory) -> RegistryProcess:
    """A fresh htpasswd (bcrypt) registry; credentials in ``.username`` / ``.password``."""
    return make_registry("basic")


@pytest.fixture
def registry_token(make_registry: RegistryFactory, token_service: TokenService) -> RegistryProcess:
    """A fresh bearer-token registry trusting the ``token_service`` fixture; credentials of the
    token service's user in ``.username`` / ``.password``."""
    return make_registry("token", token_service=token_service)


@pytest.fixture
def make_corpus() -> Iterator[CorpusFactory]:
    """``make_corpus(registry, **CorpusBuilder_kwargs)`` -> CorpusBuilder authenticated as the
    registry's first user (``registry.httpx_auth()``); clients closed at teardown."""
    builders: list[CorpusBuilder] = []

    def factory(registry: RegistryProcess, **kwargs: Any) -> CorpusBuilder:
        kwargs.setdefault("auth", registry.httpx_auth())
        builder = CorpusBuilder(registry, **kwargs)
        builders.append(builder)
        return builder

    try:
        yield factory
    finally:
        for b in builders:
            b.close()


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[PrefectServer]:
    """One real Prefect server for the session (~12 s to start): never one per test."""
    with PrefectServer() as server:
        yield server


@pytest.fixture(autouse=True)
def _no_resident_servers_left(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Each test ends the resident Prefect servers its `regflow` calls started."""
    yield
    stop_watchers_under(tmp_path_factory.getbasetemp())
