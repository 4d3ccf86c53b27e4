"""What every in-memory stand-in for a DistributionClient needs besides the verbs it fakes."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from adapters.distribution.auth import finished


class NoRoundTrips:
    """A client on no network: nothing to widen for (tasks/round_trips.py), no tokens to fetch."""

    fastest_answer: float | None = None

    async def prefetch_tokens(self, repositories: Iterable[str], actions: str) -> None:
        del repositories, actions

    async def start_prefetch_tokens(self, repositories: Iterable[str], actions: str) -> asyncio.Future[None]:
        del repositories, actions
        return finished()

    async def learn_realm(self) -> None:
        return None
