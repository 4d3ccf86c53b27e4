"""Chunked upload sessions left open by an interrupted attempt, so that the next attempt — the
blob loop's next try, a task retry, or the next run after the process died, on this machine or
another one sharing the store — continues the upload from the registry's Range instead of from
byte zero.

With a store, each session is a row of the store's ``upload_sessions`` table (policies.store),
written on its own after every acknowledged PATCH; without one (tests, a copier used on its own)
they stay in memory. A location is not a credential (registries sign their own upload state
into it), so it is stored as it is. The store only saves work: when it cannot be read or
written, the upload goes on and the sessions stay in memory for this run.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.exc import SQLAlchemyError

from policies.store import Store, UploadSession

__all__ = ["UploadSession", "UploadSessions"]

T = TypeVar("T")
logger = logging.getLogger(__name__)


class UploadSessions:
    """The open sessions on one target registry (``target``: its URL), by repository and digest."""

    def __init__(self, target: str, store: Store | None = None) -> None:
        self.target = target
        self._store = store
        self._memory: dict[tuple[str, str], UploadSession] = {}
        self._expired = False

    async def get(self, repository: str, digest: str) -> UploadSession | None:
        if self._store is not None and not self._expired:
            self._expired = True  # once per run is enough to keep the table small
            await self._in_store(self._store.expire_upload_sessions)
        if self._store is None:
            return self._memory.get((repository, digest))
        return await self._in_store(self._store.upload_session, self.target, repository, digest)

    async def put(self, repository: str, digest: str, saved: UploadSession) -> None:
        if self._store is None:
            self._memory[(repository, digest)] = saved
        else:
            await self._in_store(self._store.save_upload_session, self.target, repository, digest, saved)

    async def drop(self, repository: str, digest: str) -> None:
        self._memory.pop((repository, digest), None)
        if self._store is not None:
            await self._in_store(self._store.drop_upload_session, self.target, repository, digest)

    async def _in_store(self, call: Callable[..., T], *args: object) -> T | None:
        """``call`` off the event loop; on a database failure, say so once and go on in memory."""
        assert self._store is not None
        try:
            return await asyncio.to_thread(call, *args)
        except SQLAlchemyError as exc:
            logger.warning("upload sessions stay in memory for this run: the store failed (%s)",
                           type(exc).__name__)
            self._store = None
            return None
