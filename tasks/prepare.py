"""Step 5: make the target ready to receive (namespaces, projects, repositories)."""

from __future__ import annotations

from adapters import Adapter
from tasks.plan import Plan


async def prepare(target: Adapter, plan: Plan) -> None:
    names = sorted({r.target_repository for r in plan.repositories if r.target_repository and not r.error})
    if names:
        await target.prepare_for_push(names)
