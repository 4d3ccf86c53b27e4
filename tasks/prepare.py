"""Step 5: make the target ready to receive (namespaces, projects, repositories)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

from adapters import Adapter
from tasks.plan import Plan


@runtime_checkable
class _VisibleNamespaces(Protocol):
    """A registry whose namespaces are public or private and that creates them either way
    (Harbor projects). ``isinstance`` checks the names only: ``project_public`` is the tell."""

    async def project_public(self, repository: str) -> bool | None: ...

    async def prepare_for_push(self, repositories: Sequence[str],
                               public: Mapping[str, bool] | None = None) -> None: ...


async def prepare(target: Adapter, plan: Plan, source: Adapter | None = None) -> None:
    ready = [r for r in plan.repositories if r.target_repository and not r.error]
    names = sorted({r.target_repository for r in ready})
    if not names:
        return
    if isinstance(source, _VisibleNamespaces) and isinstance(target, _VisibleNamespaces):
        # Harbor to Harbor: a project created on the target is as public as its source's.
        public = {r.target_repository: bool(await source.project_public(r.source_repository))
                  for r in ready}
        await target.prepare_for_push(names, public=public)
        return
    await target.prepare_for_push(names)
