"""What every in-memory stand-in for a DistributionClient needs besides the verbs it fakes."""

from __future__ import annotations

from collections.abc import Iterable


class NoRoundTrips:
    """A client on no network: nothing to widen for (tasks/round_trips.py), no tokens to fetch."""

    fastest_answer: float | None = None

    async def prefetch_tokens(self, repositories: Iterable[str], actions: str) -> None:
        del repositories, actions
