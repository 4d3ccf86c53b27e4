"""An in-memory stand-in for the Harbor API's ``Runs`` boundary (deployments/harbor_api/runs.py):
runs are kept as given, ``start`` adds a Running one, ``stop`` marks it Cancelled."""

from __future__ import annotations

import uuid

from deployments.harbor_api.runs import RunView, TaskView


class FakeRuns:
    def __init__(self, runs: list[RunView] | None = None) -> None:
        self.runs: dict[str, RunView] = {r.id: r for r in runs or []}
        self.logs: dict[tuple[str, str], str] = {}
        self.started: list[str] = []
        self.stopped: list[str] = []

    def add(self, policy: str, state: str, tasks: list[TaskView] | None = None, *, trigger: str = "manual",
            start: str = "2026-12-01T10:00:00+00:00", end: str | None = "2026-12-01T10:01:00+00:00",
            message: str = "") -> RunView:
        run = RunView(id=str(uuid.uuid4()), policy=policy, trigger=trigger, state=state, message=message,
                      start_time=start, end_time=end, tasks=tasks or [])
        self.runs[run.id] = run
        return run

    async def list(self, policy: str | None) -> list[RunView]:
        found = [r for r in self.runs.values() if policy is None or r.policy == policy]
        return sorted(found, key=lambda r: r.start_time or "", reverse=True)  # newest first, as Prefect

    async def get(self, run_id: str) -> RunView | None:
        return self.runs.get(run_id)

    async def start(self, policy: str) -> str:
        run = self.add(policy, "Pending", end=None)
        self.started.append(policy)
        return run.id

    async def stop(self, run_id: str) -> None:
        self.stopped.append(run_id)
        run = self.runs[run_id]
        if run.state not in ("Completed", "Failed", "Crashed", "Cancelled"):
            self.runs[run_id] = run.model_copy(update={"state": "Cancelled"})

    async def log(self, run_id: str, repository: str) -> str | None:
        return self.logs.get((run_id, repository))
