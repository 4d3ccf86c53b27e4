"""Merge bursts of registry events into one run per policy, repository and action.

A CI job pushing several tags, or a registry batching its notifications, would otherwise start
a run per tag, each listing and comparing the same repository. The first event for a (policy,
repository, action) opens a window; events for the same key arriving while it is open join
it; when it closes (trailing edge, ``window_seconds`` after the first event) one run starts for
everything gathered. Pushes and deletions never share a run: they are different work, and a
deletion must not be hidden inside a copy.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Final

from tasks.discover import Resource

logger = logging.getLogger(__name__)

# Registries report a multi-tag push or a batch within a second or so of each other; 2 s
# gathers such a burst into one run while delaying the copy by little next to its own length.
COALESCE_WINDOW_SECONDS: Final = 2.0

# A start that fails (Prefect's API busy, its database locked) is tried again after each of
# these pauses: about a quarter of a minute in all, longer than the API's usual hiccups and short
# enough that serve's shutdown, which waits for every start, does not hang on a server that is
# gone. The start callback must be safe to repeat (serve passes an idempotency key).
START_RETRY_SECONDS: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0)

# (policy name, resources, action, event id of the first event) -> started
StartRun = Callable[[str, list[Resource], str, str], Awaitable[None]]
_Key = tuple[str, str, str]  # (policy name, repository, action)


@dataclass
class _Window:
    event_id: str
    handle: asyncio.TimerHandle
    resources: list[Resource] = field(default_factory=list)
    whole_repository: bool = False

    def add(self, action: str, resource: Resource) -> None:
        if self.whole_repository or resource in self.resources:
            return
        if action == "push" and resource.tag is None and resource.digest is None:
            # A push naming neither tag nor digest asks for the whole repository, which covers
            # everything gathered so far.
            self.resources = [resource]
            self.whole_repository = True
            return
        # Deletions are kept one by one: "no tag" there is not a licence to delete everything.
        self.resources.append(resource)


class Coalescer:
    """Starts one run per (policy, repository, action) per window; asyncio only, one loop."""

    def __init__(self, window_seconds: float, start: StartRun) -> None:
        if not (math.isfinite(window_seconds) and window_seconds >= 0):
            raise ValueError(f"window_seconds must be a finite number >= 0, got {window_seconds}")
        self._window_seconds = window_seconds
        self._start = start
        self._windows: dict[_Key, _Window] = {}
        self._starting: set[asyncio.Task[None]] = set()

    async def add(self, policy_name: str, action: str, resource: Resource, event_id: str) -> None:
        key = (policy_name, resource.repository, action)
        window = self._windows.get(key)
        if window is None:
            handle = asyncio.get_running_loop().call_later(self._window_seconds, self._close, key)
            window = self._windows[key] = _Window(event_id=event_id, handle=handle)
        window.add(action, resource)

    def pending(self) -> int:
        """Runs waiting for their window to close."""
        return len(self._windows)

    async def drain(self) -> int:
        """Start every pending run now and wait for all starts; returns how many it started."""
        windows = list(self._windows.items())
        self._windows.clear()
        for _, window in windows:
            window.handle.cancel()
        await asyncio.gather(*(self._run(key, window) for key, window in windows))
        if self._starting:
            await asyncio.gather(*self._starting)
        return len(windows)

    def _close(self, key: _Key) -> None:
        window = self._windows.pop(key, None)
        if window is None:
            return
        task = asyncio.get_running_loop().create_task(self._run(key, window))
        # The loop keeps only weak references to tasks; this set keeps them alive to the end.
        self._starting.add(task)
        task.add_done_callback(self._starting.discard)

    async def _run(self, key: _Key, window: _Window) -> None:
        policy_name, repository, action = key
        for pause in (*START_RETRY_SECONDS, None):
            try:
                await self._start(policy_name, list(window.resources), action, window.event_id)
                return
            except Exception as exc:
                if pause is None:
                    # One failed start must not stop the others; the event's id is in the log to
                    # retry it by hand.
                    logger.exception(
                        "starting the %s run of policy %s for %s (event %s) failed; not tried again",
                        action, policy_name, repository, window.event_id,
                    )
                    return
                logger.warning("starting the %s run of policy %s for %s (event %s) failed (%s: %s); "
                               "trying again in %g s", action, policy_name, repository, window.event_id,
                               type(exc).__name__, str(exc)[:200], pause)
                await asyncio.sleep(pause)
