"""Stopping an execution: Prefect's own cancellation, the request the UI's Cancel and
``prefect flow-run cancel`` send (the state Cancelling). The run notices it within
flows.runtime.CANCEL_POLL_SECONDS, even mid-blob, and ends Cancelled (regflow's "Stopped"); a run
that has not started yet is cancelled by the server at once."""

from __future__ import annotations

import asyncio
import time

from prefect import get_client
from prefect.client.schemas.objects import State, StateType
from pydantic import BaseModel

from flows.history import find_run

# How long `executions stop` waits for the run to end: a poll of the run's state, one chunk of
# the blob in flight and the run's summary artifacts take a few seconds; a run whose process is
# gone never ends by itself (flows/liveness.py marks it Crashed later).
STOP_WAIT_SECONDS = 60.0
STOP_POLL_SECONDS = 0.5


class StopOutcome(BaseModel):
    id: str
    name: str
    state: str  # the run's state when stop returned
    ended: bool
    already_ended: bool  # it had ended before the request: nothing was asked of it


async def stop(id_or_name: str, *, wait: bool = True) -> StopOutcome:
    async with get_client() as client:
        run = await find_run(client, id_or_name)
        if run.state is not None and run.state.is_final():
            return StopOutcome(id=str(run.id), name=run.name, state=_name(run.state), ended=True,
                               already_ended=True)
        await client.set_flow_run_state(run.id, State(type=StateType.CANCELLING,
                                                      message="stopped by user (regflow executions stop)"))
        deadline = time.monotonic() + (STOP_WAIT_SECONDS if wait else 0.0)
        while True:
            state = (await client.read_flow_run(run.id)).state
            ended = state is not None and state.is_final()
            if ended or time.monotonic() >= deadline:
                return StopOutcome(id=str(run.id), name=run.name, state=_name(state), ended=ended,
                                   already_ended=False)
            await asyncio.sleep(STOP_POLL_SECONDS)


def _name(state: State | None) -> str:
    return (state.name or state.type.value) if state is not None else "Unknown"
