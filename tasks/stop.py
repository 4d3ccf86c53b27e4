"""A stop request that transfers poll between blobs and between chunks of one blob.

Set from any thread (Prefect delivers cancellation as a signal in the main thread, while the
transfers run on an event loop), read on the hot path at the cost of one attribute lookup.
"""

from __future__ import annotations

import threading

from adapters.errors import CancelledReplication


class StopSignal:
    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason = ""

    def set(self, reason: str = "stopped by user") -> None:
        self.reason = reason
        self._event.set()

    @property
    def is_set(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        if self._event.is_set():
            raise CancelledReplication(self.reason or "stopped")
