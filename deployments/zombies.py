"""Executions whose process died (SIGKILL, OOM, a lost machine) must not stay Running forever.

The detection itself lives with the flow (flows/liveness.py), since every run ensures it on
its own server whoever started it; `regflow serve` also ensures it when it starts, so the
automation is in place before the first event arrives.
"""

from __future__ import annotations

from flows.liveness import SILENCE_SECONDS, ensure_automation, heartbeat_environment

__all__ = ["SILENCE_SECONDS", "ensure_zombie_automation", "heartbeat_environment"]


async def ensure_zombie_automation() -> None:
    await ensure_automation()
