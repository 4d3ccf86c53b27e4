"""Getting one blob onto the target, by the cheapest route that works:

    already linked in this run → nothing
    known on the target in another repository (this run) → cross-repo mount (1 request)
    same registry on both sides → mount from the source repository
    otherwise a mount "from" the target repository itself: 201 = already there, 202 = the
    upload session to use (registries without mount: a HEAD first instead)
    then stream GET → PUT, sha256 checked on the way (chunked PATCH for big blobs)

One ``BlobCopier`` serves a whole run: each digest is uploaded once however many repositories
and tags share it, and a failed upload is forgotten so a later attempt can try again.
Memory stays flat: either kind of upload holds one read chunk (STREAM_CHUNK_BYTES) at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

from adapters.distribution.client import DistributionClient, UploadStatus
from adapters.errors import (
    ContentError,
    DigestMismatchError,
    NotFoundError,
    RateLimitedError,
    ReplicationError,
    UploadSessionLost,
)
from adapters.oci import Descriptor, Digest, DigestVerifier, Manifest
from tasks.bandwidth import Bandwidth
from tasks.sessions import UploadSessions
from tasks.stop import StopSignal

# Blobs moved at once per run. On the reference 2-core machine the registries, not the copier,
# saturate first, but each upload also waits on the target's file work (an upload directory
# created, renamed, removed): a medium full copy took a median ~12.4 s with 4 streams, ~11.4 s
# with 8 and about the same with 16 (A/B on fresh targets, 5-10 runs each, all 4 slots busy
# for the whole copy at 4). Each stream holds about one read chunk.
BLOB_CONCURRENCY = 8
# Blobs above this go up in chunks, so a dropped connection resumes from the registry's offset
# instead of restarting a multi-GB stream.
CHUNKED_UPLOAD_THRESHOLD_BYTES = 128 * 1024 * 1024
# One PATCH carries this much (streamed, never buffered): a broken PATCH costs at most this
# much re-reading from the source.
UPLOAD_CHUNK_BYTES = 64 * 1024 * 1024
# Attempts per blob inside one task attempt, for transient failures (resets, 5xx, 429).
BLOB_ATTEMPTS = 3
BACKOFF_BASE_SECONDS = 0.5
# A Retry-After longer than this fails the blob; the task-level retry takes over.
MAX_RETRY_AFTER_SECONDS = 120.0

T = TypeVar("T")


class BlobCopier:
    def __init__(
        self,
        source: DistributionClient,
        target: DistributionClient,
        *,
        stop: StopSignal | None = None,
        bandwidth: Bandwidth | None = None,
        concurrency: int = BLOB_CONCURRENCY,
        mount_probe: bool = True,
        sessions: UploadSessions | None = None,
        chunked_threshold: int = CHUNKED_UPLOAD_THRESHOLD_BYTES,
    ) -> None:
        self.source = source
        self.target = target
        self.stop = stop or StopSignal()
        self.bandwidth = bandwidth or Bandwidth(-1)
        self.mount_probe = mount_probe
        self.chunked_threshold = chunked_threshold
        self._slots = asyncio.Semaphore(concurrency)
        self._linked: set[tuple[str, str]] = set()
        self._home: dict[str, str] = {}  # digest -> a target repository that holds it
        self._uploads: dict[str, asyncio.Future[None]] = {}
        # Chunked sessions a failed attempt left open, for the next attempt to resume.
        self._sessions = sessions or UploadSessions()
        self.bytes_uploaded = 0

    async def ensure(self, source_repo: str, target_repo: str, blob: Descriptor, *,
                     chunked: bool = False) -> int:
        """Make ``target_repo`` hold ``blob``; returns the bytes uploaded for it.

        One digest is placed by one caller at a time, from its first request on: two tags of
        one repository sharing a layer must not upload it twice at once, because distribution
        rewrites the repository's link file in place and a manifest PUT reading it meanwhile
        fails with MANIFEST_BLOB_UNKNOWN (seen in the benchmark). A waiter then mounts or
        finds the blob linked."""
        digest = blob.digest
        while True:
            if (target_repo, digest) in self._linked:
                return 0
            self.stop.check()
            pending = self._uploads.get(digest)
            if pending is None:
                break
            with contextlib.suppress(ReplicationError):  # their failure is theirs; we try again
                await asyncio.shield(pending)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._uploads[digest] = done
        try:
            async with self._slots:
                self.stop.check()
                sent = await self._place(source_repo, target_repo, blob, chunked=chunked)
        except BaseException as exc:
            done.set_exception(exc if isinstance(exc, ReplicationError) else ReplicationError(str(exc)))
            done.exception()  # mark retrieved: nobody may be waiting
            raise
        else:
            done.set_result(None)
        finally:
            del self._uploads[digest]
        return sent

    async def _place(self, source_repo: str, target_repo: str, blob: Descriptor, *, chunked: bool) -> int:
        digest = blob.digest
        location: str | None = None
        mount_from = self._home.get(digest)
        if mount_from is None and self.source.host == self.target.host and source_repo != target_repo:
            mount_from = source_repo  # same registry: a server-side link, no bytes moved
        if mount_from is None and self.mount_probe:
            # Mounting from the target repository itself answers 201 when it already holds the
            # blob and otherwise opens the upload we need: one request instead of HEAD + POST.
            mount_from = target_repo
        # An earlier attempt left a chunked session open: go straight on with it.
        resuming = self._sessions.get(target_repo, digest) is not None
        # The first request (mount or HEAD) is retried like the upload: it is where a busy
        # registry's 429 or 503 lands first.
        if not resuming and mount_from is not None:
            source_of_mount = mount_from
            location = await self._retrying(lambda: self.target.start_upload(
                target_repo, mount=digest, mount_from=source_of_mount))
            if location is None:
                self._link(target_repo, digest)
                return 0
        elif not resuming and await self._retrying(
                lambda: self.target.blob_exists(target_repo, digest)) is not None:
            self._link(target_repo, digest)
            return 0

        sent = await self._upload_with_retries(source_repo, target_repo, blob, location,
                                               chunked=chunked or blob.size > self.chunked_threshold)
        self._link(target_repo, digest)
        if resuming:
            self._sessions.drop(target_repo, digest)  # done, whichever way it went up
        self.bytes_uploaded += sent
        return sent

    async def put_manifest(self, target_repo: str, ref: str, manifest: Manifest) -> Digest:
        """Push a manifest, retried like a blob's requests: the same bytes under the same
        reference, so a second PUT after a 429, a 5xx or a reset does no harm."""
        self.stop.check()
        return await self._retrying(lambda: self.target.put_manifest(target_repo, ref, manifest))

    async def _retrying(self, call: Callable[[], Awaitable[T]]) -> T:
        """One idempotent request, tried up to BLOB_ATTEMPTS times while its failures are
        transient, honouring Retry-After."""
        for attempt in range(1, BLOB_ATTEMPTS + 1):
            try:
                return await call()
            except ReplicationError as exc:
                if not exc.transient or attempt == BLOB_ATTEMPTS:
                    raise
                await self._pause(exc, attempt)
        raise AssertionError("unreachable")

    def _link(self, target_repo: str, digest: Digest) -> None:
        self._linked.add((target_repo, digest))
        self._home.setdefault(digest, target_repo)

    async def _upload_with_retries(self, source_repo: str, target_repo: str, blob: Descriptor,
                                   location: str | None, *, chunked: bool) -> int:
        left = self._sessions.get(target_repo, blob.digest) if chunked else None
        resume = False
        if left is not None:
            # A retry or a later run: continue the session the failed attempt left behind; if the
            # registry has dropped it meanwhile, UploadSessionLost below starts afresh.
            location, resume = left, True
        for attempt in range(1, BLOB_ATTEMPTS + 1):
            try:
                if location is None:
                    location = await self.target.start_upload(target_repo)
                assert location is not None  # start_upload without mount always opens a session
                if chunked:
                    return await self._upload_chunked(source_repo, target_repo, blob, location,
                                                      resume=resume)
                return await self._upload_monolithic(source_repo, target_repo, blob, location)
            except ReplicationError as exc:
                lost = isinstance(exc, UploadSessionLost)
                if lost or not exc.transient:
                    self._sessions.drop(target_repo, blob.digest)  # nothing worth resuming
                if not exc.transient or attempt == BLOB_ATTEMPTS:
                    raise
                if not lost:  # a lost session was found after a pause already
                    await self._pause(exc, attempt)
                # A broken monolithic PUT leaves nothing to resume; a chunked session may.
                resume = chunked and not lost
                location = (self._sessions.get(target_repo, blob.digest) or location) if resume else None
        raise AssertionError("unreachable")

    async def _status(self, target_repo: str, location: str) -> UploadStatus:
        """Where an interrupted session stands, or UploadSessionLost when it is gone."""
        try:
            return await self.target.upload_status(target_repo, location)
        except NotFoundError as exc:
            raise UploadSessionLost(f"upload session lost: {exc}") from exc

    async def _pause(self, exc: ReplicationError, attempt: int) -> None:
        delay = BACKOFF_BASE_SECONDS * 2 ** (attempt - 1) * (1 + random.random() / 2)
        if isinstance(exc, RateLimitedError) and exc.retry_after is not None:
            if exc.retry_after > MAX_RETRY_AFTER_SECONDS:
                raise exc
            delay = max(delay, exc.retry_after)
        self.stop.check()
        await asyncio.sleep(delay)
        self.stop.check()

    async def _upload_monolithic(self, source_repo: str, target_repo: str, blob: Descriptor,
                                 location: str) -> int:
        async with self.source.open_blob(source_repo, blob.digest) as stream:
            body = _verified(stream.chunks(), DigestVerifier(blob.digest), self.stop, self.bandwidth,
                             blob.size)
            await self.target.put_blob(target_repo, location, blob.digest, blob.size, body)
        return blob.size

    async def _upload_chunked(self, source_repo: str, target_repo: str, blob: Descriptor,
                              location: str, *, resume: bool) -> int:
        """PATCH by PATCH, each body streamed from the source. When a PATCH breaks, the
        registry's Range says how much it kept; the hash is rewound to the checkpoint taken at
        that PATCH's start and brought forward over exactly the kept bytes."""
        hasher = hashlib.new(blob.digest.algorithm)
        offset = 0
        if resume:
            status = await self._status(target_repo, location)
            location = status.location
            offset = await self._hash_range(source_repo, blob.digest, 0, status.offset, hasher)
        sent = 0
        attempt = 1
        while offset < blob.size:
            checkpoint, patch_start = hasher.copy(), offset
            try:
                async with self.source.open_blob(source_repo, blob.digest, offset) as stream:
                    reader = _Reader(stream.chunks(), self.stop, self.bandwidth)
                    while offset < blob.size:
                        checkpoint, patch_start = hasher.copy(), offset
                        length = min(UPLOAD_CHUNK_BYTES, blob.size - offset)
                        location = await self.target.patch_chunk(
                            target_repo, location, offset, length, reader.take(length, hasher))
                        # Each PATCH answers with the session's next location (distribution signs
                        # the offset into it): the one a later attempt must resume with.
                        self._sessions.put(target_repo, blob.digest, location)
                        offset += length
                        sent += length
            except ReplicationError as exc:
                if not exc.transient or attempt >= BLOB_ATTEMPTS:
                    raise
                await self._pause(exc, attempt)
                attempt += 1
                status = await self._status(target_repo, location)
                if status.offset < patch_start:
                    raise  # the registry lost bytes it had acknowledged: start over
                location, hasher = status.location, checkpoint
                offset = await self._hash_range(source_repo, blob.digest, patch_start, status.offset,
                                                hasher)
        actual = Digest(f"{blob.digest.algorithm}:{hasher.hexdigest()}")
        if actual != blob.digest:
            await self.target.cancel_upload(target_repo, location)
            raise DigestMismatchError(blob.digest, actual)
        await self.target.complete_upload(target_repo, location, blob.digest)
        self._sessions.drop(target_repo, blob.digest)
        return sent

    async def _hash_range(self, source_repo: str, digest: Digest, start: int, end: int,
                          hasher: hashlib._Hash) -> int:
        """Feed source bytes [start, end) to the hash without sending them; returns ``end``."""
        if end <= start:
            return start
        async with self.source.open_blob(source_repo, digest, start) as stream:
            reader = _Reader(stream.chunks(), self.stop, Bandwidth(-1))  # nothing is sent here
            async for _ in reader.take(end - start, hasher):
                pass
        return end


class _Reader:
    """Cuts a stream of source chunks into exact-length request bodies, hashing what passes."""

    def __init__(self, chunks: AsyncIterator[bytes], stop: StopSignal, bandwidth: Bandwidth) -> None:
        self._chunks = chunks
        self._stop = stop
        self._bandwidth = bandwidth
        self._left = b""

    async def take(self, length: int, hasher: hashlib._Hash) -> AsyncIterator[bytes]:
        while length > 0:
            self._stop.check()
            piece = self._left or await anext(self._chunks, b"")
            if not piece:
                raise ContentError(f"source blob ended {length} bytes early")
            piece, self._left = piece[:length], piece[length:]
            await self._bandwidth.spend(len(piece))
            hasher.update(piece)
            length -= len(piece)
            yield piece


async def _verified(chunks: AsyncIterator[bytes], verifier: DigestVerifier, stop: StopSignal,
                    bandwidth: Bandwidth, size: int) -> AsyncIterator[bytes]:
    """Pass bytes through, holding back the last chunk until the digest is proven: a corrupt
    blob ends the upload short, so the registry never commits it."""
    held: bytes | None = None
    async for chunk in chunks:
        stop.check()
        await bandwidth.spend(len(chunk))
        verifier.update(chunk)
        if verifier.size > size:
            raise DigestMismatchError(verifier.expected, f"more than {size} bytes")
        if held is not None:
            yield held
        held = chunk
    verifier.verify()
    if held is not None:
        yield held
