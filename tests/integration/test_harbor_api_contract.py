"""Harbor's own contract: schemathesis generates requests for every operation regflow serves
from Harbor's published document (/work/shared/reference/harbor/swagger.yaml, Swagger 2.0)
and checks each answer against it: status codes, content types, headers and body schemas.

In process (the API app over ASGI, a temporary SQLite store): a few examples per operation in
CI. The longer budget::

    REGFLOW_CONTRACT_EXAMPLES=200 uv run --frozen pytest -q tests/integration/test_harbor_api_contract.py

Three seams, each said where it is: ``POST /registries/ping`` gets a health check that never
leaves the process (generated URLs name arbitrary hosts; the real check is covered in
tests/unit/test_harbor_api.py against real registries); executions go to an in-memory fake of
the API's Prefect boundary (tests/support/fake_runs.py), seeded with a run of each policy; and
generated ``q``/``sort`` values that are not regflow's query syntax are dropped (Harbor, like
regflow, answers those 400, which its document does not list for the list operations).
"""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import hypothesis
import pytest
import schemathesis
from pydantic import SecretStr
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from starlette.applications import Starlette

from adapters.base import Health
from adapters.endpoint import Endpoint
from deployments.harbor_api import create_harbor_api
from deployments.harbor_api.app import (
    EXECUTION_KEYS,
    EXECUTION_SORT_KEYS,
    POLICY_KEYS,
    REGISTRY_KEYS,
    SORT_KEYS,
    TASK_KEYS,
    TASK_SORT_KEYS,
)
from deployments.harbor_api.errors import HarborError
from deployments.harbor_api.executions import task_key
from deployments.harbor_api.paging import parse_query
from deployments.harbor_api.runs import TaskView
from policies.models import parse_config
from policies.store import Store
from tests.support.fake_runs import FakeRuns

pytestmark = pytest.mark.integration

SWAGGER: Final = Path("/work/shared/reference/harbor/swagger.yaml")
PASSWORD: Final = "contract-Pa55word"
AUTH: Final = {"Authorization": "Basic " + base64.b64encode(f"admin:{PASSWORD}".encode()).decode()}
EXAMPLES: Final = int(os.environ.get("REGFLOW_CONTRACT_EXAMPLES", "5"))
SERVED: Final = (
    "getPing", "getSystemInfo", "getHealth",
    "listRegistries", "createRegistry", "getRegistry", "updateRegistry", "deleteRegistry", "pingRegistry",
    "getRegistryInfo", "listRegistryProviderTypes", "listRegistryProviderInfos",
    "listReplicationPolicies", "createReplicationPolicy", "getReplicationPolicy",
    "updateReplicationPolicy", "deleteReplicationPolicy",
    "listReplicationExecutions", "startReplication", "getReplicationExecution", "stopReplication",
    "listReplicationTasks", "getReplicationLog",
)
# For each seeded execution id (1-3), the id of its one task: a log's path names both.
TASK_OF: dict[int, int] = {}


@schemathesis.check
def content_type_of_bodies(ctx: Any, response: Any, case: Any) -> bool | None:
    """content_type_conformance for answers with a body. Harbor (go-swagger) sends its empty
    200/201 answers without a Content-Type, and Harbor clients (harborapi) parse any
    JSON-typed body, so regflow does the same."""
    if not response.content:
        return None
    return content_type_conformance(ctx, response, case)


CHECKS: Final = [not_a_server_error, status_code_conformance, content_type_of_bodies,
                 response_headers_conformance, response_schema_conformance]
# Stored before every call (an upsert, ids kept), so ids 1-3 name a registry and a policy
# however the generated calls before changed or deleted them: the document lists no 404 for
# getReplicationPolicy, though Harbor answers one.
SEED: Final = {
    "version": 1,
    "registries": [{"name": n, "type": "docker-registry", "url": f"http://127.0.0.1:{5000 + i}",
                    "credential": {"access_key": "robot", "access_secret": "s3cret-Pa55"}}
                   for i, n in enumerate(("one", "two", "three"))],
    "policies": [{"name": n, "src_registry": "one", "dest_registry": "two", "dest_namespace": n}
                 for n in ("p-one", "p-two", "p-three")],
}


async def offline_health(type_: str, endpoint: Endpoint) -> Health:
    return Health(status="unhealthy", reason="not checked in the contract test")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    with pytest.MonkeyPatch.context() as env:
        env.setenv("REGFLOW_HOME", str(tmp_path_factory.mktemp("contract-home")))
        env.delenv("REGFLOW_SECRET_KEY", raising=False)
        env.delenv("REGFLOW_DATABASE_URL", raising=False)
        with Store() as store:
            yield store


@pytest.fixture(scope="module")
def runs(store: Store) -> FakeRuns:
    """A run of each seeded policy with one task and its log, given execution ids 1-3."""
    fake = FakeRuns()
    seeded = [fake.add(policy, state, [TaskView(repository="library/a", target="p/library/a", state=state,
                                                status="Succeeded" if state == "Completed" else "")],
                       start=f"2026-12-01T1{hour}:00:00+00:00", end=None if state == "Running" else
                       f"2026-12-01T1{hour}:05:00+00:00")
              for hour, (policy, state) in enumerate((("p-one", "Completed"), ("p-two", "Failed"),
                                                      ("p-three", "Running")))]
    ids = store.run_ids([r.id for r in seeded])
    tasks = store.run_ids([task_key(r.id, "library/a") for r in seeded])
    for run in seeded:
        fake.logs[(run.id, "library/a")] = "copied library/a\n"
        TASK_OF[ids[run.id]] = tasks[task_key(run.id, "library/a")]
    assert sorted(TASK_OF) == [1, 2, 3]
    return fake


@pytest.fixture(scope="module")
def app(store: Store, runs: FakeRuns) -> Starlette:
    return Starlette(routes=[create_harbor_api(store, SecretStr(PASSWORD), health=offline_health, runs=runs)])


schema = schemathesis.openapi.from_path(SWAGGER).include(operation_id=list(SERVED))
# Picks schemathesis's ASGI transport; each call is given the test's own app (the fixture's store).
schema.app = Starlette()
# Valid requests only: what a Harbor client sends. Harbor's document lists no 400 for most
# reads, so answers to malformed requests would be judged against nothing.
schema.config.generation.update(modes=[schemathesis.GenerationMode.POSITIVE], allow_x00=False)


def regflow_case(case: Any) -> None:
    """Pin ids to the seeded ones and drop q/sort values that are not regflow's syntax (done
    here, not in hooks: schemathesis's coverage phase builds boundary cases without them)."""
    if case.path_parameters and "id" in case.path_parameters:
        case.path_parameters["id"] = abs(int(case.path_parameters["id"])) % 3 + 1
        if "task_id" in case.path_parameters:
            case.path_parameters["task_id"] = TASK_OF[case.path_parameters["id"]]
    if isinstance(case.body, dict) and "policy_id" in case.body:
        case.body["policy_id"] = abs(int(case.body["policy_id"])) % 3 + 1
    query_keys, sort_keys = (((*REGISTRY_KEYS, *POLICY_KEYS), SORT_KEYS)
                             if "/executions" not in case.path else
                             (TASK_KEYS, TASK_SORT_KEYS) if case.path.endswith("/tasks") else
                             (EXECUTION_KEYS, EXECUTION_SORT_KEYS))
    query = case.query or {}
    try:
        parse_query(str(query.get("q", "")), query_keys)
    except HarborError:
        query.pop("q")
    sort = str(query.get("sort", ""))
    if any(f.strip().lstrip("-") not in sort_keys for f in sort.split(",") if f.strip()):
        query.pop("sort")


@schema.parametrize()
@hypothesis.settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                     suppress_health_check=list(hypothesis.HealthCheck))
def test_served_operations_answer_as_harbors_document_says(case: Any, store: Store, app: Starlette) -> None:
    store.apply(parse_config(SEED))
    regflow_case(case)
    case.call_and_validate(headers=AUTH, checks=CHECKS, app=app)


def test_the_document_holds_every_served_operation() -> None:
    found = {op.ok().definition.raw.get("operationId")  # type: ignore[union-attr]
             for op in schema.get_all_operations()}
    assert found == set(SERVED)


def test_creates_answer_as_documented(store: Store, app: Starlette) -> None:
    """Generated names are rarely valid regflow names, so the 201 answers get cases of their own."""
    store.apply(parse_config(SEED))
    registry: dict[str, Any] = {"name": "made", "type": "harbor", "url": "https://harbor.example",
                "credential": {"type": "basic", "access_key": "robot$ci", "access_secret": "s3cret-Pa55"}}
    policy: dict[str, Any] = {"name": "made", "src_registry": {"id": 1}, "dest_registry": {"id": 2},
              "dest_namespace": "copies", "filters": [{"type": "name", "value": "library/**"}],
              "trigger": {"type": "scheduled", "trigger_settings": {"cron": "0 0 3 * * *"}},
              "speed": -1, "enabled": True}
    for path, body in (("/registries", registry), ("/replication/policies", policy)):
        case = schema[path]["POST"].Case(body=body, media_type="application/json")
        response = case.call_and_validate(headers=AUTH, checks=CHECKS, app=app)
        assert response.status_code == 201, response.text
        assert response.headers["location"][0].startswith(f"/api/v2.0{path}/"), response.headers


def test_execution_answers_as_documented(store: Store, app: Starlette, runs: FakeRuns) -> None:
    """The successful answers of the execution operations, each checked against the document
    (generated cases may well reach them, but nothing says they must)."""
    store.apply(parse_config(SEED))
    before = len(runs.started)  # generated cases of the module's other tests started some
    started = schema["/replication/executions"]["POST"].Case(
        body={"policy_id": 1}, media_type="application/json").call_and_validate(
        headers=AUTH, checks=CHECKS, app=app)
    assert started.status_code == 201, started.text
    assert started.headers["location"][0].startswith("/api/v2.0/replication/executions/")
    cases = [(schema["/replication/executions"]["GET"].Case(query={"policy_id": 1}), 200),
             (schema["/replication/executions/{id}"]["GET"].Case(path_parameters={"id": 2}), 200),
             (schema["/replication/executions/{id}"]["PUT"].Case(path_parameters={"id": 3}), 200),
             (schema["/replication/executions/{id}/tasks"]["GET"].Case(path_parameters={"id": 1}), 200),
             (schema["/replication/executions/{id}/tasks/{task_id}/log"]["GET"].Case(
                 path_parameters={"id": 1, "task_id": TASK_OF[1]}), 200),
             (schema["/replication/executions/{id}"]["GET"].Case(path_parameters={"id": 999}), 404)]
    for case, status in cases:
        response = case.call_and_validate(headers=AUTH, checks=CHECKS, app=app)
        assert response.status_code == status, (case.path, response.text)
    assert runs.started[before:] == ["p-one"]
    assert TASK_OF[1] != TASK_OF[2]
