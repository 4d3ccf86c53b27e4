"""Harbor's replication API (deployments/harbor_api) in process: httpx over ASGI against the app,
a temporary SQLite store. Registry pings go to real loopback registries (that one test is marked
integration); executions go to an in-memory fake of the API's Prefect boundary (tests/support/fake_runs.py),
so nothing needs Prefect."""

from __future__ import annotations

import base64
import json
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from starlette.applications import Starlette

from deployments.harbor_api import API_PREFIX, admin_password, create_harbor_api
from deployments.harbor_api.runs import TaskView
from policies.store import Store
from tests.support.fake_runs import FakeRuns
from tests.support.registry import RegistryProcess

PASSWORD = "Harbor12345-admin"
SECRET = "r3gistry-Pa55word"


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


ADMIN = basic("admin", PASSWORD)


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("REGFLOW_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("REGFLOW_SECRET_KEY", raising=False)
    monkeypatch.delenv("REGFLOW_DATABASE_URL", raising=False)
    return tmp_path / "home"


@pytest.fixture
def store(home: Path) -> Iterator[Store]:
    with Store() as store:
        yield store


class Changes:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> None:
        self.count += 1


@pytest.fixture
def changes() -> Changes:
    return Changes()


@pytest.fixture
def runs() -> FakeRuns:
    return FakeRuns()


@pytest.fixture
async def api(store: Store, changes: Changes, runs: FakeRuns) -> AsyncIterator[httpx.AsyncClient]:
    app = Starlette(routes=[create_harbor_api(store, SecretStr(PASSWORD), on_change=changes, runs=runs)])
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://regflow" + API_PREFIX,
                                 headers=ADMIN) as client:
        yield client


def registry_body(name: str, url: str = "http://127.0.0.1:5000", **extra: Any) -> dict[str, Any]:
    return {"name": name, "type": "docker-registry", "url": url, "insecure": False,
            "credential": {"type": "basic", "access_key": "robot", "access_secret": SECRET}, **extra}


async def create(api: httpx.AsyncClient, path: str, body: dict[str, Any]) -> int:
    response = await api.post(path, json=body)
    assert response.status_code == 201, response.text
    location = response.headers["Location"]
    assert location.startswith(f"{API_PREFIX}{path}/")
    return int(location.rsplit("/", 1)[1])


async def two_registries(api: httpx.AsyncClient, src_type: str = "docker-registry") -> tuple[int, int]:
    return (await create(api, "/registries", registry_body("src", "http://127.0.0.1:5001", type=src_type)),
            await create(api, "/registries", registry_body("dst", "http://127.0.0.1:5002")))


def policy_body(src: int, dst: int, name: str = "mirror", **extra: Any) -> dict[str, Any]:
    return {"name": name, "src_registry": {"id": src}, "dest_registry": {"id": dst},
            "dest_namespace": "mirror", "dest_namespace_replace_count": 1,
            "filters": [{"type": "name", "value": "library/**"},
                        {"type": "tag", "value": "v*", "decoration": "excludes"}],
            "trigger": {"type": "scheduled", "trigger_settings": {"cron": "0 0 2 * * *"}},
            "replicate_deletion": True, "override": True, "enabled": True, "speed": 1024,
            "copy_by_chunk": True, "single_active_replication": True, **extra}


def errors_of(response: httpx.Response) -> str:
    body = response.json()
    assert set(body) == {"errors"} and len(body["errors"]) == 1
    assert set(body["errors"][0]) == {"code", "message"}
    return str(body["errors"][0]["message"])


# ------------------------------------------------------------------------------------ system
async def test_ping_health_and_systeminfo_need_no_login(api: httpx.AsyncClient) -> None:
    api.headers.pop("Authorization")
    ping = await api.get("/ping")
    assert (ping.status_code, ping.text) == (200, "Pong")
    health = await api.get("/health")
    assert health.json() == {"status": "healthy", "components": [{"name": "store", "status": "healthy"}]}
    info = (await api.get("/systeminfo")).json()
    assert info["harbor_version"].startswith("v2.0.0-regflow.")
    assert info["auth_mode"] == "db_auth" and info["current_time"].endswith("Z")


# -------------------------------------------------------------------------------------- auth
@pytest.mark.parametrize("headers", [
    {}, basic("admin", "wrong-password"), basic("root", PASSWORD), {"Authorization": "Bearer " + PASSWORD},
    {"Authorization": "Basic not-base64!"},
])
async def test_every_other_operation_needs_the_admin_password(api: httpx.AsyncClient,
                                                              headers: dict[str, str]) -> None:
    api.headers.pop("Authorization")
    for method, path in [("GET", "/registries"), ("POST", "/registries"), ("GET", "/registries/1"),
                         ("DELETE", "/registries/1"), ("GET", "/replication/policies"),
                         ("GET", "/replication/adapters")]:
        response = await api.request(method, path, headers=headers, json=registry_body("x"))
        assert response.status_code == 401, (method, path)
        assert response.headers["WWW-Authenticate"].startswith("Basic")
        assert response.json() == {"errors": [{"code": "UNAUTHORIZED", "message": "unauthorized"}]}
    assert (await api.get("/registries")).status_code == 401


def test_the_api_stays_off_without_a_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REGFLOW_ADMIN_PASSWORD", raising=False)
    assert admin_password() is None
    monkeypatch.setenv("REGFLOW_ADMIN_PASSWORD", "short")
    with pytest.raises(Exception, match="at least 8") as caught:
        admin_password()
    assert "short" not in str(caught.value)
    monkeypatch.setenv("REGFLOW_ADMIN_PASSWORD", PASSWORD)
    password = admin_password()
    assert password is not None and password.get_secret_value() == PASSWORD


# -------------------------------------------------------------------------------- registries
async def test_registry_crud_with_write_only_credentials(api: httpx.AsyncClient, store: Store,
                                                         changes: Changes) -> None:
    number = await create(api, "/registries", registry_body("hub", description="first"))
    got = (await api.get(f"/registries/{number}")).json()
    assert got["id"] == number and got["name"] == "hub" and got["type"] == "docker-registry"
    assert got["credential"] == {"type": "basic", "access_key": "robot", "access_secret": "*****"}
    assert got["creation_time"] == got["update_time"]
    assert SECRET not in (await api.get("/registries")).text
    # The masked secret sent back (GET then PUT) leaves the stored one alone.
    update = {"description": "second", "access_secret": "*****", "insecure": True, "name": "hub"}
    assert (await api.put(f"/registries/{number}", json=update)).status_code == 200
    assert store.endpoint("hub").password.get_secret_value() == SECRET  # type: ignore[union-attr]
    got = (await api.get(f"/registries/{number}")).json()
    assert (got["description"], got["insecure"]) == ("second", True)
    assert got["update_time"] > got["creation_time"]
    assert (await api.put(f"/registries/{number}", json={"access_secret": "new-Pa55word"})).status_code == 200
    assert store.endpoint("hub").password.get_secret_value() == "new-Pa55word"  # type: ignore[union-attr]
    assert (await api.delete(f"/registries/{number}")).status_code == 200
    missing = await api.get(f"/registries/{number}")
    assert missing.status_code == 404 and errors_of(missing) == f"registry {number} not found"
    assert changes.count == 4  # create, two updates, delete: each one a sync for serve


async def test_registry_errors_carry_applys_messages(api: httpx.AsyncClient) -> None:
    await create(api, "/registries", registry_body("hub"))
    taken = await api.post("/registries", json=registry_body("hub"))
    assert taken.status_code == 409 and errors_of(taken) == "name: a registry named 'hub' already exists"
    bad_name = await api.post("/registries", json=registry_body("Bad Name"))
    assert bad_name.status_code == 400
    assert errors_of(bad_name).startswith("name: 'Bad Name' is not a valid name")
    bad_type = await api.post("/registries", json=registry_body("x") | {"type": "nexus"})
    assert bad_type.status_code == 400 and "'nexus' is not supported" in errors_of(bad_type)
    bad_url = await api.post("/registries", json=registry_body("x", "ftp://host"))
    assert bad_url.status_code == 400 and "url" in errors_of(bad_url)
    path_ca = await api.post("/registries", json=registry_body("x", ca_certificate="/etc/passwd"))
    assert path_ca.status_code == 400 and "PEM text" in errors_of(path_ca)
    assert (await api.post("/registries", content=b"{not json")).status_code == 400
    assert (await api.post("/registries", json=[1])).status_code == 400
    renamed = await api.put("/registries/1", json={"name": "other"})
    assert renamed.status_code == 400 and "cannot be renamed" in errors_of(renamed)
    for path in ("/registries/999", "/registries/-1", "/registries/abc", "/registries/999/info"):
        assert (await api.get(path)).status_code == 404, path
    assert (await api.put("/registries/999", json={})).status_code == 404
    assert (await api.delete("/registries/999")).status_code == 404


async def test_a_registry_in_use_is_not_deleted(api: httpx.AsyncClient) -> None:
    src, dst = await two_registries(api)
    await create(api, "/replication/policies", policy_body(src, dst))
    refused = await api.delete(f"/registries/{src}")
    assert refused.status_code == 412
    assert errors_of(refused).startswith("registry 'src' is used by policy 'mirror'")
    assert (await api.get(f"/registries/{src}")).status_code == 200


async def test_adapters_and_registry_info(api: httpx.AsyncClient) -> None:
    adapters = (await api.get("/replication/adapters")).json()
    assert "docker-registry" in adapters and "harbor" in adapters and adapters == sorted(adapters)
    infos = (await api.get("/replication/adapterinfos")).json()
    assert set(infos) == set(adapters)
    number = await create(api, "/registries", registry_body("hub"))
    info = (await api.get(f"/registries/{number}/info")).json()
    assert info["type"] == "docker-registry" and "scheduled" in info["supported_triggers"]
    assert {f["type"] for f in info["supported_resource_filters"]} >= {"name", "tag"}


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.integration  # real loopback registries: the check `regflow registry ping` runs
async def test_ping_checks_a_registry_as_registry_ping_does(api: httpx.AsyncClient,
                                                            registry_basic: RegistryProcess) -> None:
    user, password = registry_basic.username, registry_basic.password
    new = {"type": "docker-registry", "url": registry_basic.url, "access_key": user,
           "access_secret": password}
    assert (await api.post("/registries/ping", json=new)).status_code == 200
    wrong = await api.post("/registries/ping", json=new | {"access_secret": "wrong-password"})
    assert wrong.status_code == 400 and errors_of(wrong).startswith("the registry is unhealthy")
    down = await api.post("/registries/ping", json=new | {"url": f"http://127.0.0.1:{closed_port()}"})
    assert down.status_code == 400 and errors_of(down).startswith("the registry is unhealthy")
    # A stored registry is pinged with its stored secret, which the caller never sees.
    number = await create(api, "/registries", registry_body("basic", registry_basic.url)
                          | {"credential": {"type": "basic", "access_key": user, "access_secret": password}})
    elsewhere = await api.post("/registries/ping", json={"id": number, "url": "http://127.0.0.1:9"})
    assert elsewhere.status_code == 400
    assert errors_of(elsewhere) == "access_secret: give the secret to ping another URL with it"
    for body, status in [({"id": number}, 200), ({"id": number, "access_secret": "nope"}, 400),
                         ({"id": 999}, 404), ({"type": "docker-registry", "url": "x"}, 400)]:
        assert (await api.post("/registries/ping", json=body)).status_code == status, body


# ---------------------------------------------------------------------------------- policies
async def test_policy_crud_in_harbors_shape(api: httpx.AsyncClient, store: Store, changes: Changes) -> None:
    src, dst = await two_registries(api, src_type="harbor")  # Harbor: a source with labels
    number = await create(api, "/replication/policies", policy_body(src, dst))
    got = (await api.get(f"/replication/policies/{number}")).json()
    assert got["id"] == number and got["src_registry"]["id"] == src and got["dest_registry"]["id"] == dst
    assert got["src_registry"]["credential"]["access_secret"] == "*****"
    assert got["trigger"] == {"type": "scheduled", "trigger_settings": {"cron": "0 0 2 * * *"}}
    assert got["filters"] == [{"type": "name", "value": "library/**", "decoration": "matches"},
                              {"type": "tag", "value": "v*", "decoration": "excludes"}]
    assert (got["replicate_deletion"], got["deletion"], got["speed"], got["dest_namespace_replace_count"]) \
        == (True, True, 1024, 1)
    assert got["copy_by_chunk"] is True and got["single_active_replication"] is True
    assert got["verify"] is False and got["referrers"] is True  # regflow's own fields ride along
    stored = store.policy("mirror")
    assert (stored.src_registry, stored.trigger.trigger_settings.cron) == ("src", "0 2 * * *")

    # PUT: fields left out keep their values; regflow's own fields may be set too.
    update = {"enabled": False, "trigger": {"type": "manual", "trigger_settings": {"cron": ""}},
              "filters": [{"type": "label", "value": ["a", "b"]}], "speed": 0, "verify": True}
    updated = await api.put(f"/replication/policies/{number}", json=update)
    assert updated.status_code == 200, updated.text
    got = (await api.get(f"/replication/policies/{number}")).json()
    assert got["enabled"] is False and got["trigger"]["type"] == "manual" and got["speed"] == -1
    assert got["filters"] == [{"type": "label", "value": ["a", "b"], "decoration": "matches"}]
    assert got["dest_namespace"] == "mirror" and got["verify"] is True
    assert store.policy("mirror").enabled is False

    assert (await api.delete(f"/replication/policies/{number}")).status_code == 200
    assert (await api.get(f"/replication/policies/{number}")).status_code == 404
    assert changes.count == 5  # two registries, create, update, delete


async def test_policy_errors_carry_applys_messages(api: httpx.AsyncClient) -> None:
    src, dst = await two_registries(api)
    await create(api, "/replication/policies", policy_body(src, dst))
    taken = await api.post("/replication/policies", json=policy_body(src, dst))
    assert taken.status_code == 409 and errors_of(taken) == "name: a policy named 'mirror' already exists"
    local = await api.post("/replication/policies",
                           json=policy_body(src, dst, "p2") | {"dest_registry": None})
    assert local.status_code == 400
    assert errors_of(local) == ("dest_registry: name the registry to copy to; both src_registry and "
                                "dest_registry are required")
    unknown = await api.post("/replication/policies", json=policy_body(src, 99, "p3"))
    assert unknown.status_code == 400 and errors_of(unknown) == "dest_registry: no registry with id 99"
    cron = await api.post("/replication/policies", json=policy_body(src, dst, "p4")
                          | {"trigger": {"type": "scheduled", "trigger_settings": {"cron": "5 0 2 * * *"}}})
    assert cron.status_code == 400 and "seconds field of a 6-field cron must be 0" in errors_of(cron)
    speed = await api.post("/replication/policies", json=policy_body(src, dst, "p5", speed=-7))
    assert speed.status_code == 400
    assert errors_of(speed) == "speed: speed -7 must be -1 (unlimited) or a positive number of Kbit/s"
    labels = await api.post("/replication/policies", json=policy_body(src, dst, "p7")
                            | {"filters": [{"type": "label", "value": ["a"]}]})
    assert labels.status_code == 400 and errors_of(labels) == (
        "filters[0].type: registry type 'docker-registry' does not support label filters "
        "(it supports: name, tag)")
    unknown_field = await api.post("/replication/policies", json=policy_body(src, dst, "p6", colour="red"))
    assert unknown_field.status_code == 400 and "colour" in errors_of(unknown_field)
    renamed = await api.put("/replication/policies/1", json={"name": "other"})
    assert renamed.status_code == 400 and "cannot be renamed" in errors_of(renamed)
    assert (await api.put("/replication/policies/77", json={})).status_code == 404
    assert (await api.delete("/replication/policies/77")).status_code == 404


# ------------------------------------------------------------------------------------ paging
async def test_paging_query_and_sort(api: httpx.AsyncClient) -> None:
    names = [f"reg-{i:02d}" for i in range(12)] + ["other"]
    for name in names:
        await create(api, "/registries", registry_body(name))
    first = await api.get("/registries", params={"page_size": 5})
    assert first.headers["X-Total-Count"] == "13" and len(first.json()) == 5
    assert [r["name"] for r in first.json()] == names[:5]  # by id
    assert first.headers["Link"] == f'<{API_PREFIX}/registries?page=2&page_size=5>; rel="next"'
    middle = await api.get("/registries", params={"page": 2, "page_size": 5, "q": "name=~reg-"})
    assert middle.headers["X-Total-Count"] == "12"
    assert [r["name"] for r in middle.json()] == names[5:10]
    assert 'rel="prev"' in middle.headers["Link"] and 'rel="next"' in middle.headers["Link"]
    assert "q=name%3D~reg-" in middle.headers["Link"]
    last = await api.get("/registries", params={"page": 3, "page_size": 5, "q": "name=~reg-"})
    assert len(last.json()) == 2 and 'rel="next"' not in last.headers["Link"]
    exact = await api.get("/registries", params={"q": "name=reg-03"})
    assert [r["name"] for r in exact.json()] == ["reg-03"]
    quoted = await api.get("/registries", params={"q": 'name="other",type=docker-registry'})
    assert [r["name"] for r in quoted.json()] == ["other"]
    deprecated = await api.get("/registries", params={"name": "reg-1"})
    assert [r["name"] for r in deprecated.json()] == ["reg-10", "reg-11"]
    by_name = await api.get("/registries", params={"sort": "-name", "page_size": 3})
    assert [r["name"] for r in by_name.json()] == ["reg-11", "reg-10", "reg-09"]
    assert (await api.get("/registries", params={"page_size": 0})).headers["X-Total-Count"] == "13"
    for bad in ({"q": "colour=red"}, {"q": "name"}, {"q": "name=[a~b]"}, {"sort": "colour"},
                {"page": "one"}):
        response = await api.get("/registries", params=bad)
        assert response.status_code == 400 and errors_of(response), bad
    assert (await api.get("/registries", params={"page_size": 101})).status_code == 422


async def test_policy_list_query(api: httpx.AsyncClient) -> None:
    src, dst = await two_registries(api)
    for name in ("alpha", "beta", "alphabet"):
        await create(api, "/replication/policies", policy_body(src, dst, name))
    listed = await api.get("/replication/policies", params={"q": "name=~alpha", "sort": "-creation_time"})
    assert listed.headers["X-Total-Count"] == "2"
    assert [p["name"] for p in listed.json()] == ["alphabet", "alpha"]


# ------------------------------------------------------------------------------- stable ids
async def test_ids_stay_with_their_names(api: httpx.AsyncClient, store: Store) -> None:
    from policies.models import parse_config

    src, dst = await two_registries(api)
    number = await create(api, "/replication/policies", policy_body(src, dst))
    # Created by apply rather than the API: numbered the same way, after the others.
    store.apply(parse_config({"version": 1, "registries": [registry_body("filed")]}))
    filed = {r["name"]: r["id"] for r in (await api.get("/registries")).json()}
    assert filed == {"src": src, "dst": dst, "filed": max(src, dst) + 1}
    # Deleted and created again, the same name gets its id back; a new name never takes it.
    assert (await api.delete(f"/replication/policies/{number}")).status_code == 200
    other = await create(api, "/replication/policies", policy_body(src, dst, "other"))
    again = await create(api, "/replication/policies", policy_body(src, dst))
    assert again == number and other != number
    # Another store object on the same database (another serve, a CLI) sees the same ids.
    with Store() as second:
        assert second.api_ids("policy") == {"mirror": number, "other": other}
        assert second.api_ids("registry") == filed


async def test_rows_stored_before_ids_existed_get_them(api: httpx.AsyncClient, store: Store) -> None:
    from sqlalchemy import text

    store.apply(parse_config_data())
    with store._engine.begin() as connection:  # a store written before ids existed
        connection.execute(text("DELETE FROM api_ids"))
    listed = (await api.get("/registries")).json()
    assert [(r["id"], r["name"]) for r in listed] == [(1, "a"), (2, "b")]
    assert [p["id"] for p in (await api.get("/replication/policies")).json()] == [1]


def parse_config_data() -> Any:
    from policies.models import parse_config

    return parse_config({"version": 1, "registries": [registry_body("a"), registry_body("b")],
                         "policies": [{"name": "p", "src_registry": "a", "dest_registry": "b"}]})


async def test_unknown_operations_say_so(api: httpx.AsyncClient) -> None:
    unknown = await api.get("/projects")
    assert unknown.status_code == 404
    assert errors_of(unknown).endswith("not an operation of regflow's Harbor API")
    wrong_method = await api.patch("/registries")
    assert wrong_method.status_code == 405 and errors_of(wrong_method)
    assert (await api.get("/ping", headers={"X-Request-Id": "abc"})).headers["X-Request-Id"] == "abc"


# ----------------------------------------------------------------------------- serve wiring
async def test_serve_mounts_the_api_beside_webhooks_and_metrics(home: Path) -> None:
    from deployments.serve import Service

    service = Service("127.0.0.1", 0)
    token = SecretStr("metrics-token-0123456789")

    async def call(app: Any, method: str, path: str, **kwargs: Any) -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://serve") as c:
            return await c.request(method, path, **kwargs)

    with_api = service.http_app(token, SecretStr(PASSWORD))
    assert (await call(with_api, "GET", "/webhooks/health")).status_code == 200
    assert (await call(with_api, "GET", "/metrics")).status_code == 401
    assert (await call(with_api, "GET", f"{API_PREFIX}/registries")).status_code == 401
    created = await call(with_api, "POST", f"{API_PREFIX}/registries", headers=ADMIN,
                         json=registry_body("hub"))
    assert created.status_code == 201
    assert service._store_changed.is_set()  # the deployment sync wakes up at once
    assert service.store.registry("hub").url == "http://127.0.0.1:5000"

    without = service.http_app(token, None)
    assert (await call(without, "GET", f"{API_PREFIX}/ping")).status_code == 404
    assert (await call(without, "GET", "/webhooks/health")).status_code == 200
    service.store.close()


# ---------------------------------------------------------------------- a real Harbor client
# harborapi's own retry helper reads a deprecated pydantic attribute; nothing of regflow's.
@pytest.mark.filterwarnings("ignore:Accessing the 'model_fields' attribute:DeprecationWarning")
async def test_harborapi_drives_registries_and_policies(store: Store) -> None:
    """harborapi (PyPI), Harbor's own client library, over the same in-process app: its models
    parse every answer, and its requests (partial PUTs, {"id": N} registries) are understood."""
    from harborapi import HarborAsyncClient
    from harborapi.models import (
        Registry,
        RegistryCredential,
        RegistryUpdate,
        ReplicationFilter,
        ReplicationPolicy,
        ReplicationTrigger,
    )

    app = Starlette(routes=[create_harbor_api(store, SecretStr(PASSWORD), runs=FakeRuns())])
    client = HarborAsyncClient(url="http://regflow" + API_PREFIX, username="admin", secret=PASSWORD)
    client.client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app))
    try:
        location = await client.create_registry(Registry(
            name="src", type="docker-registry", url="http://127.0.0.1:5001", insecure=True,
            credential=RegistryCredential(type="basic", access_key="puller", access_secret=SECRET)))
        assert location == f"{API_PREFIX}/registries/1"
        await client.create_registry(Registry(name="dst", type="harbor", url="http://127.0.0.1:5002"))
        await client.update_registry(1, RegistryUpdate(description="team a"))
        got = await client.get_registry(1)
        assert (got.description, got.credential.access_secret) == ("team a", "*****")  # type: ignore[union-attr]
        await client.create_replication_policy(ReplicationPolicy(
            name="mirror", src_registry=Registry(id=1), dest_registry=Registry(id=2), dest_namespace="team-a",
            filters=[ReplicationFilter(type="name", value="library/**")],
            trigger=ReplicationTrigger(type="manual"), enabled=True))
        await client.update_replication_policy(1, ReplicationPolicy(enabled=False))
        policy = await client.get_replication_policy(1)
        assert (policy.enabled, policy.dest_namespace, policy.dest_registry.id) == (False, "team-a", 2)  # type: ignore[union-attr]
        assert [p.name for p in await client.get_replication_policies()] == ["mirror"]
        assert "harbor" in await client.get_registry_adapters()
        assert (await client.get_registry_info(2)).type == "harbor"
        assert (await client.get_system_info()).harbor_version.startswith("v2.0.0-regflow.")  # type: ignore[union-attr]
        assert await client.ping() == "Pong"
        assert (await client.health_check()).status == "healthy"
        await client.delete_replication_policy(1)
        await client.delete_registry(2)
        assert [r.name for r in await client.get_registries()] == ["src"]
    finally:
        await client.client.aclose()


async def test_health_says_unhealthy_without_the_databases_words(api: httpx.AsyncClient, store: Store,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(kind: str) -> None:
        raise RuntimeError("connection to postgresql://regflow:hunter2@db failed")

    monkeypatch.setattr(store, "timestamps", broken)
    answer = (await api.get("/health")).json()
    assert answer["status"] == "unhealthy" and answer["components"][0]["status"] == "unhealthy"
    assert "hunter2" not in json.dumps(answer)


# ------------------------------------------------------------------------------- executions
def task(repository: str, state: str = "Completed", status: str = "Succeeded") -> TaskView:
    return TaskView(repository=repository, target=f"mirror/{repository}", state=state, status=status)


async def stored_policies(api: httpx.AsyncClient) -> tuple[int, int]:
    src, dst = await two_registries(api)
    return (await create(api, "/replication/policies", policy_body(src, dst)),
            await create(api, "/replication/policies", policy_body(src, dst, name="other")))


async def test_executions_in_harbors_shape_and_words(api: httpx.AsyncClient, runs: FakeRuns) -> None:
    mirror, other = await stored_policies(api)
    done = runs.add("mirror", "Completed", [task("library/a"), task("library/b")], trigger="schedule",
                    start="2026-12-01T10:00:00+00:00")
    partly = runs.add("mirror", "Completed", [task("library/a"), task("library/b", status="Failed")],
                      start="2026-12-01T11:00:00+00:00", message="1 of 2 repositories failed")
    crashed = runs.add("other", "Crashed", [], trigger="event", start="2026-12-01T12:00:00+00:00")
    stopped = runs.add("other", "Cancelled",
                       [task("x", state="Cancelled"), task("y", state="Running", status="")],
                       start="2026-12-01T13:00:00+00:00")
    running = runs.add("mirror", "Running",
                       [task("library/a"), task("library/b", state="Pending", status="")],
                       start="2026-12-01T14:00:00+00:00", end=None)
    listed = await api.get("/replication/executions")
    assert listed.status_code == 200 and listed.headers["X-Total-Count"] == "5"
    by_status = [(e["policy_id"], e["status"], e["trigger"]) for e in listed.json()]
    assert by_status == [(mirror, "InProgress", "manual"), (other, "Stopped", "manual"),
                         (other, "Failed", "event_based"), (mirror, "Failed", "manual"),
                         (mirror, "Succeeded", "scheduled")]  # newest first, as Harbor lists
    ids = [e["id"] for e in listed.json()]
    assert ids == [5, 4, 3, 2, 1]  # given oldest first
    first = (await api.get("/replication/executions/1")).json()
    assert first == {"id": 1, "policy_id": mirror, "status": "Succeeded", "status_text": "",
                     "trigger": "scheduled", "start_time": "2026-12-01T10:00:00Z",
                     "end_time": "2026-12-01T10:01:00Z", "total": 2, "failed": 0, "succeed": 2,
                     "in_progress": 0, "stopped": 0}
    second = (await api.get("/replication/executions/2")).json()
    assert (second["status_text"], second["failed"], second["succeed"]) == (
        "1 of 2 repositories failed", 1, 1)
    latest = (await api.get("/replication/executions/5")).json()
    assert (latest["in_progress"], latest["succeed"], "end_time" in latest) == (1, 1, False)
    assert (await api.get("/replication/executions/4")).json()["stopped"] == 1
    # Ids stay with their runs, whatever is listed later or filtered.
    runs.add("mirror", "Completed", [task("library/a")], start="2026-12-02T00:00:00+00:00")
    again = {e["id"]: e["status"] for e in (await api.get("/replication/executions")).json()}
    assert again == {6: "Succeeded", 5: "InProgress", 4: "Stopped", 3: "Failed", 2: "Failed", 1: "Succeeded"}
    assert {done.id, partly.id, crashed.id, stopped.id, running.id} <= set(runs.runs)


async def test_execution_filters_and_paging(api: httpx.AsyncClient, runs: FakeRuns) -> None:
    mirror, other = await stored_policies(api)
    for hour in range(5):
        runs.add("mirror", "Completed", [task("a")], start=f"2026-12-01T1{hour}:00:00+00:00")
    runs.add("other", "Failed", [], trigger="event", start="2026-12-01T16:00:00+00:00")

    async def ids(**params: Any) -> list[int]:
        answer = await api.get("/replication/executions", params=params)
        assert answer.status_code == 200, answer.text
        return [e["id"] for e in answer.json()]

    assert await ids() == [6, 5, 4, 3, 2, 1]  # ids given at the first listing, oldest first
    assert await ids(policy_id=other) == [6]
    assert await ids(policy_id=mirror, status="Succeeded") == [5, 4, 3, 2, 1]
    assert await ids(status="Failed") == [6]
    assert await ids(trigger="event_based") == [6]
    assert await ids(trigger="manual", status="Failed") == []
    assert await ids(policy_id=999) == []
    assert await ids(sort="id", page=2, page_size=2) == [3, 4]
    page = await api.get("/replication/executions", params={"policy_id": mirror, "page": 1, "page_size": 2})
    assert page.headers["X-Total-Count"] == "5" and 'rel="next"' in page.headers["Link"]
    assert (await api.get("/replication/executions", params={"policy_id": "x"})).status_code == 400
    assert (await api.get("/replication/executions", params={"sort": "name"})).status_code == 400


async def test_start_and_stop_an_execution(api: httpx.AsyncClient, runs: FakeRuns) -> None:
    mirror, other = await stored_policies(api)
    started = await api.post("/replication/executions", json={"policy_id": mirror})
    assert started.status_code == 201 and started.content == b""
    number = int(started.headers["Location"].removeprefix(f"{API_PREFIX}/replication/executions/"))
    assert runs.started == ["mirror"]
    execution = (await api.get(f"/replication/executions/{number}")).json()
    assert (execution["status"], execution["policy_id"], execution["trigger"]) == (
        "InProgress", mirror, "manual")
    stopped = await api.put(f"/replication/executions/{number}")
    assert stopped.status_code == 200
    assert (await api.get(f"/replication/executions/{number}")).json()["status"] == "Stopped"
    assert len(runs.stopped) == 1

    await api.put(f"/replication/policies/{other}", json={"enabled": False})
    disabled = await api.post("/replication/executions", json={"policy_id": other})
    assert disabled.status_code == 400 and "disabled" in errors_of(disabled)
    missing = await api.post("/replication/executions", json={"policy_id": 99})
    assert missing.status_code == 404 and errors_of(missing) == "replication policy 99 not found"
    assert (await api.post("/replication/executions", json={})).status_code == 400
    assert runs.started == ["mirror"]


async def test_unknown_executions_and_tasks_are_404(api: httpx.AsyncClient, runs: FakeRuns,
                                                    store: Store) -> None:
    await stored_policies(api)
    run = runs.add("mirror", "Completed", [task("library/a")])
    for path in ("/replication/executions/7", "/replication/executions/x", "/replication/executions/7/tasks"):
        answer = await api.get(path)
        assert answer.status_code == 404, path
        assert "not found" in errors_of(answer)
    assert (await api.put("/replication/executions/7")).status_code == 404
    (await api.get("/replication/executions")).raise_for_status()
    tasks = (await api.get("/replication/executions/1/tasks")).json()
    # A task's id is not an execution's; a pruned run (gone from Prefect) answers 404.
    assert (await api.get(f"/replication/executions/{tasks[0]['id']}")).status_code == 404
    assert (await api.get(f"/replication/executions/1/tasks/{tasks[0]['id']}/log")).status_code == 404
    del runs.runs[run.id]
    assert (await api.get("/replication/executions/1")).status_code == 404


async def test_tasks_and_their_logs(api: httpx.AsyncClient, runs: FakeRuns) -> None:
    await stored_policies(api)
    run = runs.add("mirror", "Completed", [task("library/b", status="Failed"), task("library/a"),
                                           task("library/c", state="Running", status="")])
    other = runs.add("mirror", "Completed", [task("library/a")], start="2026-12-01T11:00:00+00:00")
    runs.logs[(run.id, "library/a")] = "line one\nline two\n"
    (await api.get("/replication/executions")).raise_for_status()
    answer = await api.get("/replication/executions/1/tasks")
    assert answer.status_code == 200 and answer.headers["X-Total-Count"] == "3"
    tasks = answer.json()
    assert [(t["src_resource"], t["dst_resource"], t["status"]) for t in tasks] == [
        ("library/b", "mirror/library/b", "Error"), ("library/a", "mirror/library/a", "Success"),
        ("library/c", "mirror/library/c", "Running")]
    assert {(t["execution_id"], t["operation"], t["resource_type"], t["job_id"]) for t in tasks} == {
        (1, "copy", "image", run.id)}
    again = (await api.get("/replication/executions/1/tasks")).json()
    assert [t["id"] for t in again] == [t["id"] for t in tasks]  # kept
    failed = await api.get("/replication/executions/1/tasks", params={"status": "Error"})
    assert [t["src_resource"] for t in failed.json()] == ["library/b"]
    a = next(t["id"] for t in tasks if t["src_resource"] == "library/a")
    log = await api.get(f"/replication/executions/1/tasks/{a}/log")
    assert log.status_code == 200 and log.text == "line one\nline two\n"
    assert log.headers["content-type"].startswith("text/plain")
    other_tasks = (await api.get("/replication/executions/2/tasks")).json()
    assert other.id and other_tasks[0]["id"] not in {t["id"] for t in tasks}
    # A task of execution 2 is not read as one of execution 1.
    assert (await api.get(f"/replication/executions/1/tasks/{other_tasks[0]['id']}/log")).status_code == 404
    no_log = next(t["id"] for t in tasks if t["src_resource"] == "library/b")
    assert (await api.get(f"/replication/executions/1/tasks/{no_log}/log")).status_code == 404


async def test_executions_need_the_admin_password(api: httpx.AsyncClient, runs: FakeRuns) -> None:
    mirror, _ = await stored_policies(api)
    runs.add("mirror", "Completed", [task("a")])
    (await api.get("/replication/executions")).raise_for_status()
    wrong = basic("admin", "wrong")
    for method, path, body in (("GET", "/replication/executions", None),
                               ("POST", "/replication/executions", {"policy_id": mirror}),
                               ("GET", "/replication/executions/1", None),
                               ("PUT", "/replication/executions/1", None),
                               ("GET", "/replication/executions/1/tasks", None),
                               ("GET", "/replication/executions/1/tasks/2/log", None)):
        answer = await api.request(method, path, json=body, headers=wrong)
        assert answer.status_code == 401, (method, path)
    assert runs.started == [] and runs.stopped == []


async def test_a_policy_with_an_execution_in_progress_is_not_deleted(api: httpx.AsyncClient,
                                                                    runs: FakeRuns) -> None:
    mirror, other = await stored_policies(api)
    running = runs.add("mirror", "Running", [task("a", state="Running", status="")], end=None)
    runs.add("other", "Completed", [task("a")])
    refused = await api.delete(f"/replication/policies/{mirror}")
    assert refused.status_code == 412 and "in progress" in errors_of(refused)
    assert (await api.get(f"/replication/policies/{mirror}")).status_code == 200
    assert (await api.delete(f"/replication/policies/{other}")).status_code == 200
    await runs.stop(running.id)
    assert (await api.delete(f"/replication/policies/{mirror}")).status_code == 200


@pytest.mark.filterwarnings("ignore:Accessing the 'model_fields' attribute:DeprecationWarning")
async def test_harborapi_starts_reads_and_stops_executions(store: Store) -> None:
    """harborapi's execution calls over the same app, with the fake Prefect boundary: its models
    parse executions and tasks, and its Location and log readers get what they expect."""
    from harborapi import HarborAsyncClient
    from harborapi.models import Registry, ReplicationPolicy, ReplicationTrigger

    runs = FakeRuns()
    app = Starlette(routes=[create_harbor_api(store, SecretStr(PASSWORD), runs=runs)])
    client = HarborAsyncClient(url="http://regflow" + API_PREFIX, username="admin", secret=PASSWORD)
    client.client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app))
    try:
        await client.create_registry(Registry(name="src", type="docker-registry", url="http://127.0.0.1:5001"))
        await client.create_registry(Registry(name="dst", type="docker-registry", url="http://127.0.0.1:5002"))
        await client.create_replication_policy(ReplicationPolicy(
            name="mirror", src_registry=Registry(id=1), dest_registry=Registry(id=2),
            trigger=ReplicationTrigger(type="manual"), enabled=True))
        done = runs.add("mirror", "Completed", [task("library/a")])
        runs.logs[(done.id, "library/a")] = "copied library/a:1\n"
        location = await client.start_replication(1)
        assert location == f"{API_PREFIX}/replication/executions/1"
        executions = await client.get_replications(policy_id=1)
        assert [(e.id, e.status, e.trigger) for e in executions] == [(2, "Succeeded", "manual"),
                                                                     (1, "InProgress", "manual")]
        await client.stop_replication(1)
        assert (await client.get_replication(1)).status == "Stopped"
        tasks = await client.get_replication_tasks(2)
        assert [(t.src_resource, t.status, t.execution_id) for t in tasks] == [("library/a", "Success", 2)]
        assert await client.get_replication_task_log(2, tasks[0].id) == "copied library/a:1\n"  # type: ignore[arg-type]
    finally:
        await client.client.aclose()


def test_a_run_that_has_not_ended_is_in_progress_whatever_prefect_calls_its_state():
    from deployments.harbor_api.executions import execution_status
    from deployments.harbor_api.runs import RunView

    def run(state: str, ended: bool | None) -> RunView:
        return RunView(id="r", policy="p", trigger="manual", state=state, ended=ended)

    # Submitting: Prefect 3's worker starting the run's process, for a second or two.
    assert execution_status(run("Submitting", None)) == "InProgress"
    assert execution_status(run("SomeFutureName", False)) == "InProgress"
    assert execution_status(run("Cancelling", False)) == "Stopped"
    assert execution_status(run("Crashed", True)) == "Failed"
