"""The routes of Harbor's replication API under ``/api/v2.0``: system, registries, adapters,
policies, and executions with their tasks and logs (Prefect runs, through deployments/harbor_api/runs.py).

Handlers run the store's (blocking) calls in worker threads, so a change waiting for the store's
lock never stalls serve's webhooks or metrics. Every answer carries ``X-Request-Id`` (the
caller's, else a new one), as Harbor's do.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Final, TypeVar

from pydantic import BaseModel, SecretStr, ValidationError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route

from adapters import ADAPTERS, adapter_info, check_options, create_adapter
from adapters.base import Health
from adapters.endpoint import Endpoint
from adapters.errors import ConfigError, ReplicationError
from deployments.harbor_api import auth
from deployments.harbor_api.convert import (
    policy_fields,
    policy_out,
    registry_out,
    registry_spec,
    updated_registry_spec,
)
from deployments.harbor_api.errors import HarborError, api_message, bad_request, error_response
from deployments.harbor_api.executions import execution_out, execution_status, task_key, task_out
from deployments.harbor_api.models import (
    SECRET_MASK,
    FilterStyle,
    PolicyIn,
    RegistryIn,
    RegistryInfo,
    RegistryOut,
    RegistryPing,
    RegistryUpdate,
    StartExecution,
)
from deployments.harbor_api.paging import paginate
from deployments.harbor_api.runs import PrefectRuns, Runs, RunView
from policies.models import Config, Registry, parse_config
from policies.store import Kind, NameTaken, Store

logger = logging.getLogger(__name__)

API_PREFIX: Final = "/api/v2.0"
# A registry or policy is a few KB even with a CA bundle; more is not one of them.
MAX_BODY_BYTES: Final = 1 << 20
REQUEST_ID: Final = "X-Request-Id"
# What regflow's answers carry as Harbor's version: the v2.0 API, regflow's release after the dash.
HARBOR_VERSION_PREFIX: Final = "v2.0.0-regflow."
REGISTRY_KEYS: Final = ("name", "type", "url", "description")
POLICY_KEYS: Final = ("name", "description", "enabled")
SORT_KEYS: Final = ("id", "name", "creation_time", "update_time")
EXECUTION_KEYS: Final = ("policy_id", "status", "trigger")
EXECUTION_SORT_KEYS: Final = ("id", "policy_id", "status", "trigger", "start_time", "end_time")
TASK_KEYS: Final = ("status", "resource_type", "operation", "src_resource", "dst_resource")
TASK_SORT_KEYS: Final = ("id", "status", "src_resource", "dst_resource", "start_time", "end_time")
# Harbor's filter styles: a text input, a list of labels, one resource type out of several.
_FILTER_STYLES: Final = {"name": "input", "tag": "input", "label": "list", "resource": "radio"}

HealthCheck = Callable[[str, Endpoint], Awaitable[Health]]
Handler = Callable[[Request], Awaitable[Response]]
ModelT = TypeVar("ModelT", bound=BaseModel)


async def adapter_health(type_: str, endpoint: Endpoint) -> Health:
    """The same check as ``regflow registry ping``: /v2/ answers and accepts the credentials."""
    adapter = create_adapter(type_, endpoint)
    try:
        return await adapter.health()
    finally:
        await adapter.aclose()


def _version() -> str:
    try:
        return importlib.metadata.version("regflow")
    except importlib.metadata.PackageNotFoundError:
        return "0"


def _done(status: int = 200, headers: dict[str, str] | None = None) -> Response:
    # No body and no Content-Type, as Harbor answers (Harbor clients parse any JSON-typed body).
    return Response(status_code=status, headers=headers)


def _now() -> datetime:
    return datetime.now(UTC)


async def _body(request: Request, model: type[ModelT]) -> ModelT:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise HarborError(400, f"the body is over {MAX_BODY_BYTES} bytes")
    raw = await request.body()
    if len(raw) > MAX_BODY_BYTES:
        raise HarborError(400, f"the body is over {MAX_BODY_BYTES} bytes")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise HarborError(400, "the body is not JSON") from None
    if not isinstance(data, dict):
        raise HarborError(400, "the body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" if e["loc"] else e["msg"]
                    for e in exc.errors(include_input=False, include_url=False)]
        raise HarborError(400, "; ".join(problems)) from None


def _id(request: Request, kind: str, param: str = "id") -> int:
    text = request.path_params[param]
    try:
        return int(text)
    except ValueError:
        raise HarborError(404, f"{kind} {text} not found") from None


def _whole(text: str, name: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise HarborError(400, f"{name}: {text!r} is not a whole number") from None


def _config(**items: list[dict[str, Any]]) -> Config:
    try:
        return parse_config({"version": 1, **items})
    except ConfigError as exc:
        raise bad_request(exc) from None


class HarborApi:
    """The handlers, over one store. ``on_change`` is called after every change (serve syncs
    its deployments at once instead of at its next poll); ``health`` checks a registry; ``runs``
    reads, starts and stops executions."""

    def __init__(self, store: Store, password: SecretStr, *, health: HealthCheck = adapter_health,
                 on_change: Callable[[], None] = lambda: None, runs: Runs | None = None) -> None:
        self.store = store
        self.runs: Runs = runs if runs is not None else PrefectRuns()
        self.password = password
        self.health = health
        self.on_change = on_change

    # ------------------------------------------------------------------------------ reading
    def _registry_views(self) -> dict[str, RegistryOut]:
        ids = self.store.api_ids("registry")
        times = self.store.timestamps("registry")
        # Three reads: an item created or deleted between them is left out of this answer.
        return {r.name: registry_out(r, ids[r.name], times[r.name])
                for r in self.store.registries() if r.name in ids and r.name in times}

    def _registry_name(self, number: int) -> str:
        for name, found in self.store.api_ids("registry").items():
            if found == number:
                return name
        raise HarborError(404, f"registry {number} not found")

    def _policy_name(self, number: int) -> str:
        for name, found in self.store.api_ids("policy").items():
            if found == number:
                return name
        raise HarborError(404, f"replication policy {number} not found")

    def _policy_views(self) -> list[dict[str, Any]]:
        registries = self._registry_views()
        ids = self.store.api_ids("policy")
        times = self.store.timestamps("policy")
        return [policy_out(p, ids[p.name], times[p.name], registries).model_dump(
                    mode="json", exclude_none=True) for p in self.store.policies()
                if p.name in ids and p.name in times]

    def _created(self, kind: Kind, name: str, path: str) -> Response:
        number = self.store.api_ids(kind)[name]
        return _done(201, {"Location": f"{API_PREFIX}{path}/{number}"})

    # ------------------------------------------------------------------------------- system
    async def ping(self, _: Request) -> Response:
        return PlainTextResponse("Pong")

    async def health_status(self, _: Request) -> Response:
        try:
            await run_in_threadpool(self.store.timestamps, "registry")
            store = {"name": "store", "status": "healthy"}
        except Exception:
            # Anyone may ask (as in Harbor): the reason goes to serve's log, not to the caller.
            logger.exception("harbor api: health: the store cannot be read")
            store = {"name": "store", "status": "unhealthy",
                     "error": "the store cannot be read (see serve's log)"}
        overall = "healthy" if store["status"] == "healthy" else "unhealthy"
        return JSONResponse({"status": overall, "components": [store]})

    async def systeminfo(self, request: Request) -> Response:
        return JSONResponse({
            "harbor_version": HARBOR_VERSION_PREFIX + _version(),
            "current_time": _now().isoformat().replace("+00:00", "Z"),
            "auth_mode": "db_auth", "primary_auth_mode": False,
            "external_url": str(request.base_url).rstrip("/"),
            "project_creation_restriction": "adminonly", "self_registration": False,
            "has_ca_root": False, "read_only": False, "notification_enable": False,
        })

    # --------------------------------------------------------------------------- registries
    async def list_registries(self, request: Request) -> Response:
        views = await run_in_threadpool(self._registry_views)
        items = [v.model_dump(mode="json", exclude_none=True) for v in views.values()]
        page = paginate(items, request.query_params, request.url.path, query_keys=REGISTRY_KEYS,
                        sort_keys=(*SORT_KEYS, "type", "url"))
        return JSONResponse(page.items, headers=page.headers)

    async def create_registry(self, request: Request) -> Response:
        config = _config(registries=[registry_spec(await _body(request, RegistryIn))])

        def create() -> Response:
            self.store.apply(config, only_new=True)
            return self._created("registry", config.registries[0].name, "/registries")

        return await self._change(create)

    async def get_registry(self, request: Request) -> Response:
        number = _id(request, "registry")

        def read() -> Response:
            name = self._registry_name(number)
            return JSONResponse(self._registry_views()[name].model_dump(mode="json", exclude_none=True))

        return await run_in_threadpool(read)

    async def update_registry(self, request: Request) -> Response:
        number = _id(request, "registry")
        body = await _body(request, RegistryUpdate)

        def update() -> Response:
            stored = self.store.registry(self._registry_name(number))
            self.store.apply(_config(registries=[updated_registry_spec(stored, body)]))
            return _done()

        return await self._change(update)

    async def delete_registry(self, request: Request) -> Response:
        number = _id(request, "registry")

        def delete() -> Response:
            name = self._registry_name(number)
            try:
                self.store.delete_registry(name)
            except ConfigError as exc:  # used by a policy: Harbor's 412
                raise HarborError(412, api_message(exc)) from None
            return _done()

        return await self._change(delete)

    async def ping_registry(self, request: Request) -> Response:
        body = await _body(request, RegistryPing)
        registry, endpoint = await run_in_threadpool(self._ping_target, body)
        try:
            health = await self.health(registry.type, endpoint)
        except ReplicationError as exc:
            health = Health(status="unhealthy", reason=f"{type(exc).__name__}: {api_message(str(exc))}")
        if health.status != "healthy":
            raise HarborError(400, f"the registry is unhealthy: {health.reason}")
        return _done()

    def _ping_target(self, body: RegistryPing) -> tuple[Registry, Endpoint]:
        stored_endpoint = None
        if body.id is not None:
            stored = self.store.registry(self._registry_name(body.id))
            spec = updated_registry_spec(stored, body.model_copy(update={"name": None}))
            if body.type is not None:
                spec["type"] = body.type
            stored_endpoint = self.store.endpoint(stored.name)
        else:
            spec = registry_spec(RegistryIn(
                name="ping", type=body.type, url=body.url, insecure=body.insecure,
                ca_certificate=body.ca_certificate,
                credential={"type": body.credential_type, "access_key": body.access_key,
                            "access_secret": body.access_secret}))  # type: ignore[arg-type]
        registry = _config(registries=[spec]).registries[0]
        try:
            adapter_info(registry.type)
            check_options(registry.type, registry.options)
        except ConfigError as exc:
            raise bad_request(exc) from None
        password = None
        if registry.credential is not None:
            fresh = body.access_secret is not None and body.access_secret != SECRET_MASK
            if fresh or stored_endpoint is None:
                password = SecretStr(body.access_secret or "")
            elif registry.url != stored_endpoint.url.rstrip("/"):
                # The stored secret goes only where it was stored for: a caller cannot read it
                # back by pinging a host of their own with it.
                raise HarborError(400, "access_secret: give the secret to ping another URL with it")
            else:
                password = stored_endpoint.password
        ca = registry.ca_certificate
        if stored_endpoint is not None and body.ca_certificate is None:
            ca = stored_endpoint.ca_certificate  # a stored path, already read
        try:
            endpoint = Endpoint(url=registry.url, username=registry.credential.access_key or None
                                if registry.credential else None, password=password,
                                insecure=registry.insecure, ca_certificate=ca, options=registry.options)
        except ValidationError:
            raise HarborError(400, f"url: {registry.url!r} is not a registry URL") from None
        return registry, endpoint

    async def registry_info(self, request: Request) -> Response:
        number = _id(request, "registry")
        registry = await run_in_threadpool(lambda: self.store.registry(self._registry_name(number)))
        try:
            info = adapter_info(registry.type)
        except ConfigError as exc:
            raise bad_request(exc) from None
        styles = [FilterStyle(type=f, style=_FILTER_STYLES.get(f, "input"),
                              values=list(info.resource_types) if f == "resource" else [])
                  for f in info.filters]
        answer = RegistryInfo(type=info.type, description=info.description,
                              supported_resource_filters=styles, supported_triggers=list(info.triggers),
                              supported_copy_by_chunk=info.can_be_target)
        return JSONResponse(answer.model_dump(mode="json"))

    async def adapters(self, _: Request) -> Response:
        return JSONResponse(sorted(ADAPTERS))

    async def adapter_infos(self, _: Request) -> Response:
        # Harbor describes only adapters whose endpoint or credential is special; regflow's
        # adapters all take a URL and a user/password (or token) pair.
        return JSONResponse({t: {"endpoint_pattern": {"endpoint_type": "EndpointPatternTypeStandard"},
                                 "credential_pattern": {"access_key_type": "AccessKeyTypeStandard",
                                                        "access_secret_type": "AccessSecretTypeStandard"}}
                             for t in sorted(ADAPTERS)})

    # ----------------------------------------------------------------------------- policies
    async def list_policies(self, request: Request) -> Response:
        items = await run_in_threadpool(self._policy_views)
        page = paginate(items, request.query_params, request.url.path, query_keys=POLICY_KEYS,
                        sort_keys=SORT_KEYS)
        return JSONResponse(page.items, headers=page.headers)

    def _registry_names(self) -> dict[int, str]:
        return {number: name for name, number in self.store.api_ids("registry").items()}

    async def create_policy(self, request: Request) -> Response:
        body = await _body(request, PolicyIn)

        def create() -> Response:
            config = _config(policies=[policy_fields(body, self._registry_names())])
            self.store.apply(config, only_new=True)
            return self._created("policy", config.policies[0].name, "/replication/policies")

        return await self._change(create)

    async def get_policy(self, request: Request) -> Response:
        number = _id(request, "replication policy")

        def read() -> Response:
            name = self._policy_name(number)
            return JSONResponse(next(p for p in self._policy_views() if p["name"] == name))

        return await run_in_threadpool(read)

    async def update_policy(self, request: Request) -> Response:
        number = _id(request, "replication policy")
        body = await _body(request, PolicyIn)

        def update() -> Response:
            name = self._policy_name(number)
            fields = policy_fields(body, self._registry_names())
            if fields.get("name", name) != name:
                raise HarborError(400, f"name: a policy cannot be renamed here (it is {name!r}); "
                                       "create one with the new name and delete this one")
            # Fields the body leaves out keep their stored values (regflow's own ones included).
            spec = self.store.policy(name).model_dump(mode="json") | fields
            self.store.apply(_config(policies=[spec]))
            return _done()

        return await self._change(update)

    async def delete_policy(self, request: Request) -> Response:
        number = _id(request, "replication policy")
        name = await run_in_threadpool(self._policy_name, number)
        # Harbor's rule: a policy is not deleted under a running execution (which would go on
        # copying with no policy to show for it). Checked, not locked: a run started between
        # this check and the delete runs to its end, as one started by a schedule does.
        if any(execution_status(r) == "InProgress" for r in await self.runs.list(name)):
            raise HarborError(412, f"policy {name!r} has an execution in progress: stop it first")

        def delete() -> Response:
            self.store.delete_policy(name)
            return _done()

        return await self._change(delete)

    # --------------------------------------------------------------------------- executions
    async def list_executions(self, request: Request) -> Response:
        params = request.query_params
        wanted = {k: params[k] for k in EXECUTION_KEYS if params.get(k)}
        policy = None
        if "policy_id" in wanted:
            number = _whole(wanted.pop("policy_id"), "policy_id")
            names = {n: name for name, n in (await run_in_threadpool(self.store.api_ids, "policy")).items()}
            if number not in names:
                return JSONResponse([], headers={"X-Total-Count": "0"})
            policy = names[number]
        runs = await self.runs.list(policy)

        def views() -> list[dict[str, Any]]:
            policy_ids = self.store.api_ids("policy")
            # Oldest first: ids given now follow the order the runs started in.
            ids = self.store.run_ids([r.id for r in reversed(runs)])
            return [execution_out(r, ids[r.id], policy_ids.get(r.policy)).model_dump(
                        mode="json", exclude_none=True) for r in runs]

        items = [item for item in await run_in_threadpool(views)
                 if all(str(item.get(k)) == v for k, v in wanted.items())]
        page = paginate(items, params, request.url.path, query_keys=EXECUTION_KEYS,
                        sort_keys=EXECUTION_SORT_KEYS, default_sort="-id")
        return JSONResponse(page.items, headers=page.headers)

    async def _execution(self, number: int) -> tuple[RunView, int | None]:
        key = await run_in_threadpool(self.store.run_key, number)
        run = await self.runs.get(key) if key is not None and "/" not in key else None
        if run is None:
            raise HarborError(404, f"replication execution {number} not found")
        return run, (await run_in_threadpool(self.store.api_ids, "policy")).get(run.policy)

    async def get_execution(self, request: Request) -> Response:
        number = _id(request, "replication execution")
        run, policy_id = await self._execution(number)
        return JSONResponse(execution_out(run, number, policy_id).model_dump(mode="json", exclude_none=True))

    async def start_execution(self, request: Request) -> Response:
        body = await _body(request, StartExecution)
        if body.policy_id is None:
            raise HarborError(400, "policy_id: the policy to run is required")
        policy_id = body.policy_id

        def policy() -> str:
            name = self._policy_name(policy_id)
            if not self.store.policy(name).enabled:
                raise HarborError(400, f"policy {name!r} is disabled: enable it to run it")
            return name

        run_id = await self.runs.start(await run_in_threadpool(policy))
        number = (await run_in_threadpool(self.store.run_ids, [run_id]))[run_id]
        return _done(201, {"Location": f"{API_PREFIX}/replication/executions/{number}"})

    async def stop_execution(self, request: Request) -> Response:
        run, _ = await self._execution(_id(request, "replication execution"))
        await self.runs.stop(run.id)
        return _done()

    async def list_tasks(self, request: Request) -> Response:
        number = _id(request, "replication execution")
        run, _ = await self._execution(number)
        ids = await run_in_threadpool(self.store.run_ids, [task_key(run.id, t.repository) for t in run.tasks])
        items = [task_out(t, ids[task_key(run.id, t.repository)], number, run).model_dump(
                     mode="json", exclude_none=True) for t in run.tasks]
        params = request.query_params
        wanted = {k: params[k] for k in ("status", "resource_type") if params.get(k)}
        items = [item for item in items if all(str(item.get(k)) == v for k, v in wanted.items())]
        page = paginate(items, params, request.url.path, query_keys=TASK_KEYS, sort_keys=TASK_SORT_KEYS)
        return JSONResponse(page.items, headers=page.headers)

    async def task_log(self, request: Request) -> Response:
        number = _id(request, "replication execution")
        task = _id(request, "replication task", "task_id")
        run, _ = await self._execution(number)
        key = await run_in_threadpool(self.store.run_key, task)
        prefix = task_key(run.id, "")
        text = None
        if key is not None and key.startswith(prefix):
            text = await self.runs.log(run.id, key[len(prefix):])
        if text is None:
            raise HarborError(404, f"task {task} of replication execution {number} not found")
        return PlainTextResponse(text)

    # ------------------------------------------------------------------------------ plumbing
    async def _change(self, job: Callable[[], Response]) -> Response:
        def guarded() -> Response:
            try:
                return job()
            except NameTaken as exc:
                raise HarborError(409, api_message(exc)) from None
            except ConfigError as exc:
                raise bad_request(exc) from None

        response = await run_in_threadpool(guarded)
        self.on_change()
        return response


def _guard(handler: Handler, api: HarborApi, *, public: bool = False) -> Handler:
    async def guarded(request: Request) -> Response:
        request_id = request.headers.get(REQUEST_ID) or uuid.uuid4().hex
        if not public and not auth.authenticated(request, api.password):
            response: Response = error_response(401, "unauthorized", auth.CHALLENGE)
        else:
            try:
                response = await handler(request)
            except HarborError as exc:
                response = error_response(exc.status, exc.message)
            except ConfigError as exc:
                response = error_response(400, api_message(exc))
        response.headers[REQUEST_ID] = request_id
        return response

    return guarded


async def _http_error(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    message = {404: f"{request.url.path} is not an operation of regflow's Harbor API",
               405: f"{request.method} is not allowed on {request.url.path}"}.get(status, "internal error")
    if status == 500:
        logger.exception("harbor api: %s %s failed", request.method, request.url.path, exc_info=exc)
    return error_response(status, message)


def create_harbor_api(store: Store, password: SecretStr, *, health: HealthCheck = adapter_health,
                      on_change: Callable[[], None] = lambda: None, runs: Runs | None = None) -> Mount:
    """The API at API_PREFIX, to serve beside other routes (serve's webhooks and /metrics); its
    own app, so that its unknown paths and methods answer in Harbor's error shape. Executions
    go to ``runs`` (Prefect's, flows/history.py and flows/control.py, unless given)."""
    api = HarborApi(store, password, health=health, on_change=on_change, runs=runs)

    def route(path: str, handler: Handler, methods: list[str], *, public: bool = False) -> Route:
        return Route(path, _guard(handler, api, public=public), methods=methods)

    executions = "/replication/executions"
    return Mount(API_PREFIX, app=Starlette(
        routes=[
            route("/ping", api.ping, ["GET"], public=True),
            route("/health", api.health_status, ["GET"], public=True),
            route("/systeminfo", api.systeminfo, ["GET"], public=True),
            route("/registries", api.list_registries, ["GET"]),
            route("/registries", api.create_registry, ["POST"]),
            route("/registries/ping", api.ping_registry, ["POST"]),
            route("/registries/{id}", api.get_registry, ["GET"]),
            route("/registries/{id}", api.update_registry, ["PUT"]),
            route("/registries/{id}", api.delete_registry, ["DELETE"]),
            route("/registries/{id}/info", api.registry_info, ["GET"]),
            route("/replication/adapters", api.adapters, ["GET"]),
            route("/replication/adapterinfos", api.adapter_infos, ["GET"]),
            route("/replication/policies", api.list_policies, ["GET"]),
            route("/replication/policies", api.create_policy, ["POST"]),
            route("/replication/policies/{id}", api.get_policy, ["GET"]),
            route("/replication/policies/{id}", api.update_policy, ["PUT"]),
            route("/replication/policies/{id}", api.delete_policy, ["DELETE"]),
            route(executions, api.list_executions, ["GET"]),
            route(executions, api.start_execution, ["POST"]),
            route(executions + "/{id}", api.get_execution, ["GET"]),
            route(executions + "/{id}", api.stop_execution, ["PUT"]),
            route(executions + "/{id}/tasks", api.list_tasks, ["GET"]),
            route(executions + "/{id}/tasks/{task_id}/log", api.task_log, ["GET"]),
        ],
        exception_handlers={HTTPException: _http_error, Exception: _http_error},
    ))
