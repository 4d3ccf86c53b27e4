"""`regflow serve`: one process that keeps every policy's deployment current, runs them (a
process worker on regflow's work pool), turns registry webhooks into runs and answers
Prometheus on ``/metrics`` (deployments/metrics.py, deployments/scrape.py).

The metrics and Harbor's replication API (deployments/harbor_api, under ``/api/v2.0``) share the
webhook receiver's listener: one port to open and secure; each route checks its own credentials
(webhook secrets, the metrics token, the admin password). Without ``REGFLOW_ADMIN_PASSWORD`` the
API is not mounted at all and the rest is served as before.

Event runs are started directly with ``run_deployment`` (written down in docs/decisions.md):
the receiver already knows the policy, so an automation would only add a hop and a delay.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import signal
from collections.abc import Iterator

import uvicorn
from prefect.deployments import run_deployment
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.routing import BaseRoute

from adapters.errors import ConfigError
from adapters.oci import Digest
from deployments.coalesce import COALESCE_WINDOW_SECONDS, Coalescer
from deployments.events import RegistryEvent
from deployments.harbor_api import ADMIN_PASSWORD_ENV, API_PREFIX, admin_password, create_harbor_api
from deployments.harbor_api.runs import PrefectRuns
from deployments.matching import matching_policies
from deployments.metrics import MetricsCollector, PolicyState
from deployments.processes import Worker
from deployments.receiver import WebhookSource, create_receiver
from deployments.scrape import METRICS_PATH, metrics_route, metrics_token, token_origin
from deployments.sync import spec_for, sync_deployments
from flows.liveness import ensure_automation, heartbeat_environment
from flows.retention import prune_periodically
from flows.spread import WORK_POOL
from policies.home import regflow_home
from policies.store import Store
from tasks.discover import Resource

# How often the store is read for policy changes made with `regflow apply`.
SYNC_SECONDS = 3.0
# How often the worker is checked and restarted if it died.
SUPERVISE_SECONDS = 2.0
DEFAULT_HTTP_PORT = 8787


class Service:
    def __init__(self, http_host: str, http_port: int, sync_seconds: float = SYNC_SECONDS,
                 worker_limit: int | None = None) -> None:
        self.http_host = http_host
        self.http_port = http_port
        self.sync_seconds = sync_seconds
        self.coalescer = Coalescer(COALESCE_WINDOW_SECONDS, self._start_run)
        self._fingerprint = ""
        self.store = Store()  # one engine for the service's life; every read sees new rows
        self.worker = Worker(WORK_POOL, dict(os.environ) | heartbeat_environment(),
                             regflow_home() / "logs" / "worker.log", worker_limit)
        self._stopping = asyncio.Event()
        # Set by the API after it changed the store: the deployments follow at once, not at the next poll.
        self._store_changed = asyncio.Event()
        self.metrics = MetricsCollector(self._policy_states)

    def _policy_states(self) -> list[PolicyState]:
        return [PolicyState(name=p.name, enabled=p.enabled, trigger=p.trigger.type)
                for p in self.store.policies()]

    # -- events ---------------------------------------------------------------------------

    def source(self, name: str) -> WebhookSource | None:
        try:
            hook = self.store.webhook(name)
        except ConfigError:
            return None
        if hook is None:
            return None
        return WebhookSource(name=name, kind=hook.kind, auth=hook.auth, secret=hook.secret)

    async def submit(self, events: list[RegistryEvent]) -> int:
        policies = self.store.policies()
        runs = 0
        for event in events:
            for policy in matching_policies(event, policies):
                resource = Resource(repository=event.repository, tag=event.tag,
                                    digest=Digest(event.digest) if event.digest else None)
                await self.coalescer.add(policy.name, event.action, resource, event.event_id)
                runs += 1
        return runs

    async def _start_run(self, policy: str, resources: list[Resource], action: str, event_id: str) -> None:
        parameters = {"policy": policy, "resources": [r.model_dump(mode="json") for r in resources],
                      "trigger": "event", "event_id": event_id,
                      "operation": "delete" if action == "delete" else "copy"}
        # The coalescer starts again after a failure that may have come after the run was made
        # (an answer lost): with the same key Prefect hands back that run instead of a second.
        key = hashlib.sha256(json.dumps(parameters, sort_keys=True).encode()).hexdigest()
        await run_deployment(  # type: ignore[misc]
            name=f"replicate/{policy}", timeout=0, tags=[f"event:{event_id}"], parameters=parameters,
            idempotency_key=f"regflow-event-{key}")

    # -- loops ----------------------------------------------------------------------------

    async def keep_deployments_current(self) -> None:
        while not self._stopping.is_set():
            try:
                policies = self.store.policies()
                fingerprint = hashlib.sha256(json.dumps(
                    [spec_for(p).model_dump() for p in policies], sort_keys=True,
                    default=str).encode()).hexdigest()
                if fingerprint != self._fingerprint:
                    report = await sync_deployments(policies)
                    self._fingerprint = fingerprint
                    print(f"deployments: applied {report.applied or '-'}, deleted {report.deleted or '-'}",
                          flush=True)
            except ConfigError:
                pass  # a store being written: the next pass reads it whole
            except Exception as exc:  # Prefect busy or away: this pass is lost, the loop must not be
                print(f"deployments: not synced ({type(exc).__name__}: {str(exc)[:200]}); "
                      f"trying again in {self.sync_seconds:g} s", flush=True)
            await self._pause(self.sync_seconds)

    async def _pause(self, seconds: float) -> None:
        """Until ``seconds`` passed, serve is stopping or the API changed the store."""
        waits = [asyncio.ensure_future(self._stopping.wait()),
                 asyncio.ensure_future(self._store_changed.wait())]
        _, pending = await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        for wait in pending:
            wait.cancel()
        self._store_changed.clear()

    async def supervise_worker(self) -> None:
        while not self._stopping.is_set():
            if not self.worker.alive:
                self.worker.start()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), SUPERVISE_SECONDS)

    def http_app(self, token: SecretStr, password: SecretStr | None) -> Starlette:
        """The listener's app: webhooks, /metrics, and Harbor's API when there is a password."""
        routes: list[BaseRoute] = [metrics_route(self.metrics, token)]
        if password is not None:
            routes.append(create_harbor_api(self.store, password, on_change=self._store_changed.set,
                                            runs=PrefectRuns()))
        return create_receiver(self.source, self.submit, routes=routes)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stopping.set)
        # Before anything starts: a bad token or password stops serve with its reason.
        token = metrics_token()
        password = admin_password()
        await ensure_automation()
        app = self.http_app(token, password)
        server = _Receiver(uvicorn.Config(app, host=self.http_host, port=self.http_port,
                                          log_level="warning", lifespan="off"))
        tasks = [asyncio.create_task(self.keep_deployments_current()),
                 asyncio.create_task(self.supervise_worker()),
                 asyncio.create_task(prune_periodically(self.store, self._stopping)),
                 asyncio.create_task(server.serve())]
        base = f"http://{self.http_host}:{self.http_port}"
        print(f"webhooks on {base}/webhooks/<registry>", flush=True)
        print(f"metrics on {base}{METRICS_PATH} (bearer token in {token_origin()})", flush=True)
        if password is None:
            print(f"Harbor API off: set {ADMIN_PASSWORD_ENV} to serve it on {base}{API_PREFIX}", flush=True)
        else:
            print(f"Harbor API on {base}{API_PREFIX} (user admin, password in {ADMIN_PASSWORD_ENV})",
                  flush=True)
        try:
            await self._stopping.wait()
        finally:
            server.should_exit = True
            await self.coalescer.drain()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.worker.stop()



class _Receiver(uvicorn.Server):
    """uvicorn without its own signal handling: the service decides when everything stops."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield
