"""How much to keep in flight against far registries.

Little's law: to move as much per second as on loopback, a run keeps more requests in flight
the longer each one waits for its answer. The wait is read from the registries themselves
(DistributionClient.fastest_answer: the quickest answer of a request without a body, about one
round trip), not configured.
"""

from __future__ import annotations

from adapters.distribution.client import DistributionClient

# One more ``base`` in flight for every this much of round trip to the slower registry.
ROUND_TRIP_STEP_SECONDS = 0.02


def widened(base: int, ceiling: int, *clients: DistributionClient) -> int:
    """``base`` on loopback; more, up to ``ceiling``, the further the slower registry is."""
    answers = [c.fastest_answer for c in clients if c.fastest_answer is not None]
    if not answers:
        return base
    return max(base, min(ceiling, base + int(base * max(answers) / ROUND_TRIP_STEP_SECONDS)))
