"""deployments.sync.spec_for: a disabled policy's deployment is paused with every schedule
inactive; an enabled one's is live (issue 18)."""

from __future__ import annotations

from typing import Any

import pytest

from deployments.sync import spec_for
from policies.models import Policy, Trigger

SCHEDULES: dict[str, dict[str, Any]] = {
    "cron": {"cron": "0 3 * * *"},
    "interval": {"interval_seconds": 600},
}


@pytest.mark.parametrize("kind", sorted(SCHEDULES))
@pytest.mark.parametrize("enabled", [True, False])
def test_schedules_follow_the_enabled_flag(kind: str, enabled: bool) -> None:
    trigger = Trigger.model_validate({"type": "scheduled", "trigger_settings": SCHEDULES[kind]})
    policy = Policy(name="p", src_registry="a", dest_registry="b", enabled=enabled, trigger=trigger)
    spec = spec_for(policy)
    assert spec.paused is not enabled
    [schedule] = spec.schedules()
    assert schedule.active is enabled
    if kind == "cron":
        assert schedule.cron == "0 3 * * *"
    else:
        assert schedule.interval.total_seconds() == 600  # type: ignore[union-attr]


@pytest.mark.parametrize("trigger", ["manual", "event_based"])
def test_unscheduled_policies_have_no_schedule_either_way(trigger: str) -> None:
    for enabled in (True, False):
        spec = spec_for(Policy(name="p", src_registry="a", dest_registry="b", enabled=enabled,
                               trigger=Trigger(type=trigger)))  # type: ignore[arg-type]
        assert (spec.schedules(), spec.paused) == ([], not enabled)
