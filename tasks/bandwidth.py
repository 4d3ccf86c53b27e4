"""A policy's bandwidth cap (Harbor's ``speed``, Kbit/s), shared by every stream of the run.

Harbor applies the setting to each blob stream, so ten workers use ten times the limit; here
all streams draw from one token bucket, so the policy's aggregate stays under the cap.
"""

from __future__ import annotations

import asyncio
import time

from tasks.stop import StopSignal

# Bytes the bucket may hold: one read chunk, so a stream never waits to send what it has read,
# and a long pause cannot build up a burst.
BURST_BYTES = 1024 * 1024
# Longest single sleep; a stop request is noticed at least this often while throttled.
MAX_SLEEP_SECONDS = 0.25


class Bandwidth:
    def __init__(self, kbit_per_second: int, stop: StopSignal | None = None) -> None:
        self.unlimited = kbit_per_second <= 0
        self.rate = kbit_per_second * 1000 / 8  # bytes per second
        self.stop = stop or StopSignal()
        self._tokens = float(BURST_BYTES)
        self._stamp = time.monotonic()
        self._lock = asyncio.Lock()

    async def spend(self, n: int) -> None:
        if self.unlimited:
            return
        async with self._lock:  # one waiter at a time: streams share the rate fairly in turn
            self._refill()
            self._tokens -= n
            while self._tokens < 0:
                self.stop.check()
                await asyncio.sleep(min(MAX_SLEEP_SECONDS, -self._tokens / self.rate))
                self._refill()

    def _refill(self) -> None:
        now = time.monotonic()
        self._tokens = min(float(BURST_BYTES), self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
