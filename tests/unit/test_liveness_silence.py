"""Which Running runs `crash_if_silent` judges dead: one whose heartbeats stopped, and, when the
caller knows the server keeps heartbeats (a spread execution's parts), one that died between
going Running and its first heartbeat, which Prefect's automation (waiting for a heartbeat's
successor) never judges. A client stand-in answers the two calls it makes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any
from uuid import uuid4

import pytest
from prefect.client.schemas.objects import FlowRun, State, StateType

from flows import liveness


class Server:
    def __init__(self, heartbeat: datetime | None) -> None:
        self.heartbeat = heartbeat
        self.set: list[State] = []

    async def read_events(self, *args: Any, **kwargs: Any) -> SimpleNamespace:
        events = [] if self.heartbeat is None else [SimpleNamespace(occurred=self.heartbeat)]
        return SimpleNamespace(events=events)

    async def set_flow_run_state(self, run_id: Any, state: State) -> SimpleNamespace:
        self.set.append(state)
        return SimpleNamespace(state=state)


def running_for(seconds: float) -> FlowRun:
    since = datetime.now(UTC) - timedelta(seconds=seconds)
    return FlowRun(id=uuid4(), flow_id=uuid4(), name="r", start_time=since,
                   state=State(type=StateType.RUNNING, name="Running", timestamp=since))


SILENCE = liveness.SILENCE_SECONDS


@pytest.mark.parametrize(("heartbeat_age", "running", "unheard_is_silent", "crashed", "says"), [
    (None, SILENCE + 5, True, True, "no heartbeat in"),      # a part that died while starting
    (None, SILENCE - 5, True, False, ""),                    # a part still starting
    (None, SILENCE + 5, False, False, ""),                   # never heard of: an older regflow's run
    (SILENCE + 5, 600, False, True, "no heartbeat for"),     # its beats stopped
    (1, 600, True, False, ""),                               # alive
])
async def test_silent_runs_are_crashed_live_and_unheard_ones_are_not(
        heartbeat_age: float | None, running: float, unheard_is_silent: bool, crashed: bool,
        says: str) -> None:
    heard = None if heartbeat_age is None else datetime.now(UTC) - timedelta(seconds=heartbeat_age)
    server = Server(heard)

    judged = await liveness.crash_if_silent(server, running_for(running),  # type: ignore[arg-type]
                                            unheard_is_silent=unheard_is_silent)

    assert judged is crashed

    assert [s.type for s in server.set] == ([StateType.CRASHED] if crashed else [])
    if crashed:
        assert says in (server.set[0].message or "")
