"""Which registry events the receiver has already acted on, so that a delivery seen twice (a
registry's retry, a captured request played again) starts nothing the second time.

Memory only, per receiver process: a restart forgets, and the oldest ids go first once
MAX_REMEMBERED_EVENTS are held; HMAC callers are also held to a signed timestamp.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Final

# Registries retry a failed delivery for hours at most (distribution backs off, Harbor gives
# up after a few tries); a day covers them with room.
EVENT_MEMORY_SECONDS: Final = 24 * 3600
# A few MiB at most (an id is at most 128 characters): far more events than a day of honest
# pushes, and a flood of fresh ids from an authenticated sender cannot grow it further.
MAX_REMEMBERED_EVENTS: Final = 20_000

Key = tuple[str, str]  # (webhook source, event id)


class EventMemory:
    def __init__(self, window: float = EVENT_MEMORY_SECONDS, capacity: int = MAX_REMEMBERED_EVENTS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._window = window
        self._capacity = capacity
        self._clock = clock
        self._until: OrderedDict[Key, float] = OrderedDict()  # oldest first: one window for all

    def __len__(self) -> int:
        return len(self._until)

    def claim(self, keys: Iterable[Key]) -> list[Key]:
        """The keys not seen within the window, now remembered (each once, in order). Claimed
        before the runs start, so that two copies of one delivery arriving together start one."""
        now = self._clock()
        self._expire(now)
        fresh: list[Key] = []
        for key in keys:
            if key in self._until:
                continue
            self._until[key] = now + self._window
            fresh.append(key)
        while len(self._until) > self._capacity:
            self._until.popitem(last=False)
        return fresh

    def forget(self, keys: Iterable[Key]) -> None:
        """Claims whose runs did not start: the registry's next delivery must count."""
        for key in keys:
            self._until.pop(key, None)

    def _expire(self, now: float) -> None:
        while self._until:
            key, until = next(iter(self._until.items()))
            if until > now:
                return
            del self._until[key]
