"""Getting one blob onto the target, by the cheapest route that works:

    already linked in this run → nothing
    a chunked upload an earlier attempt left open → continue it from the registry's Range
    known on the target in another repository (this run) → cross-repo mount (1 request)
    same registry on both sides → mount from the source repository
    otherwise a mount "from" the target repository itself: 201 = already there, 202 = the
    upload session to use (registries without mount: a HEAD first instead)
    then stream GET → PUT, sha256 checked on the way (chunked PATCH for big blobs)

One ``BlobCopier`` serves a whole run: each digest is uploaded once however many repositories
and tags share it, and a failed upload is forgotten so a later attempt can try again.
Memory stays flat: either kind of upload holds one read chunk (STREAM_CHUNK_BYTES) at a time.

This is the blob level of the retry table (docs/decisions.md): a blob, or a manifest PUT, is
tried up to BLOB_ATTEMPTS times while ``is_transient`` says so, in ``_attempts`` and nowhere
else. Continuing a broken chunked upload is simply what the next attempt does first.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from adapters.distribution.client import MAX_BULK_CONNECTIONS, DistributionClient, UploadStatus
from adapters.errors import (
    ContentError,
    DigestMismatchError,
    RateLimitedError,
    RegistryError,
    ReplicationError,
    is_transient,
)
from adapters.oci import Descriptor, Digest, DigestVerifier, Manifest
from tasks.bandwidth import Bandwidth
from tasks.round_trips import widened
from tasks.sessions import UploadSession, UploadSessions
from tasks.stop import StopSignal

# Blobs moved at once per run. On the reference 2-core machine the registries, not the copier,
# saturate first, but each upload also waits on the target's file work (an upload directory
# created, renamed, removed): a medium full copy took a median ~12.4 s with 4 streams, ~11.4 s
# with 8 and about the same with 16 (A/B on fresh targets, 5-10 runs each, all 4 slots busy
# for the whole copy at 4). Each stream holds about one read chunk.
BLOB_CONCURRENCY = 8
# A far registry makes each blob wait about three round trips (POST, GET, PUT) besides its
# bytes, so more blobs move at once the longer the round trip (tasks/round_trips.py), up to the
# client's connections for blob bodies.
MAX_BLOB_CONCURRENCY = MAX_BULK_CONNECTIONS
# Blobs above this go up in chunks, so a dropped connection resumes from the registry's offset
# instead of restarting a multi-GB stream.
CHUNKED_UPLOAD_THRESHOLD_BYTES = 128 * 1024 * 1024
# One PATCH carries this much (streamed, never buffered): a broken PATCH costs at most this
# much re-reading from the source.
UPLOAD_CHUNK_BYTES = 64 * 1024 * 1024
# Attempts per blob (and per manifest PUT) within one task attempt: enough to ride out a reset,
# a registry restart or a 429, few enough that a registry which keeps failing hands the blob to
# the task level soon.
BLOB_ATTEMPTS = 3
# The pause before attempt n+1 is BACKOFF_BASE_SECONDS * 2**(n-1), plus up to half again at random
# so that the blobs which failed together do not come back together.
BACKOFF_BASE_SECONDS = 0.5
# A 429's Retry-After is waited out up to this long before the next attempt; the client holds
# every request to that registry for the same time anyway (adapters/distribution/client.py).
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
        concurrency: int | None = None,
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
        # None: BLOB_CONCURRENCY, widened for far registries when the first blob starts (the
        # plan has asked both registries by then).
        self._slots = asyncio.Semaphore(concurrency or BLOB_CONCURRENCY)
        self._sized = concurrency is not None
        self.concurrency = concurrency or BLOB_CONCURRENCY
        self._linked: set[tuple[str, str]] = set()
        self._home: dict[str, str] = {}  # digest -> a target repository that holds it
        self._uploads: dict[str, asyncio.Future[None]] = {}
        # Chunked sessions a failed attempt left open, for the next attempt to continue.
        self._sessions = sessions or UploadSessions(target.endpoint.url)
        # The hash of each open session's acknowledged bytes, so that continuing it in this process
        # re-reads only what the registry kept since (another process re-reads from byte 0).
        self._hashed: dict[tuple[str, str], tuple[int, hashlib._Hash]] = {}
        self.bytes_uploaded = 0
        # Blobs placed by this copier, by route: bytes sent, or none (mounted, or there already).
        self.blobs_uploaded = 0
        self.blobs_mounted = 0

    def _size_slots(self) -> None:
        """Widen the blob slots once, from the round trip both registries have shown so far."""
        if self._sized:
            return
        self._sized = True
        wanted = widened(self.concurrency, MAX_BLOB_CONCURRENCY, self.source, self.target)
        for _ in range(wanted - self.concurrency):
            self._slots.release()  # a semaphore's release beyond its acquisitions adds a slot
        self.concurrency = wanted

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
        self._size_slots()
        try:
            async with self._slots:
                self.stop.check()
                chunked = chunked or blob.size > self.chunked_threshold
                sent = _Sent()  # over all attempts: a continued upload counts what went before
                await self._attempts(lambda: self._place(source_repo, target_repo, blob, sent,
                                                         chunked=chunked))
                self._link(target_repo, digest)
                self.bytes_uploaded += sent.bytes
        except BaseException as exc:
            done.set_exception(exc if isinstance(exc, ReplicationError) else ReplicationError(str(exc)))
            done.exception()  # mark retrieved: nobody may be waiting
            raise
        else:
            done.set_result(None)
        finally:
            del self._uploads[digest]
        return sent.bytes

    async def put_manifest(self, target_repo: str, ref: str, manifest: Manifest) -> Digest:
        """Push a manifest, tried like a blob: the same bytes under the same reference, so a
        second PUT after a 429, a 5xx or a reset does no harm."""
        self.stop.check()
        return await self._attempts(lambda: self.target.put_manifest(target_repo, ref, manifest))

    async def _attempts(self, attempt: Callable[[], Awaitable[T]]) -> T:
        """The blob level of the retry table: ``attempt`` up to BLOB_ATTEMPTS times while its
        failure is transient, pausing with backoff (and a 429's Retry-After) in between."""
        for n in range(1, BLOB_ATTEMPTS + 1):
            try:
                return await attempt()
            except ReplicationError as exc:
                if n == BLOB_ATTEMPTS or not is_transient(exc):
                    raise
                await self._pause(exc, n)
        raise AssertionError("unreachable")

    async def _pause(self, exc: ReplicationError, attempt: int) -> None:
        delay = BACKOFF_BASE_SECONDS * 2 ** (attempt - 1) * (1 + random.random() / 2)
        if isinstance(exc, RateLimitedError) and exc.retry_after is not None:
            delay = max(delay, min(exc.retry_after, MAX_RETRY_AFTER_SECONDS))
        self.stop.check()
        await asyncio.sleep(delay)
        self.stop.check()

    async def _place(self, source_repo: str, target_repo: str, blob: Descriptor, sent: _Sent, *,
                     chunked: bool) -> None:
        """One attempt at the blob: go on with the session an earlier attempt left open, else
        find the blob there or open a session, then upload."""
        if chunked and (status := await self._left_open(target_repo, blob.digest)) is not None:
            await self._upload_chunked(source_repo, target_repo, blob, status, sent)
            self.blobs_uploaded += 1
            return
        location = await self._open(source_repo, target_repo, blob.digest)
        if location is None:
            self.blobs_mounted += 1
            return  # already there
        if chunked:
            await self._upload_chunked(source_repo, target_repo, blob, UploadStatus(location, 0), sent)
        else:
            await self._upload_monolithic(source_repo, target_repo, blob, location)
            sent.bytes += blob.size
        self.blobs_uploaded += 1

    async def _left_open(self, target_repo: str, digest: Digest) -> UploadStatus | None:
        """Where a session an earlier attempt (of any run) left open stands, if it still exists."""
        saved = await self._sessions.get(target_repo, digest)
        if saved is None:
            return None
        try:
            return await self.target.upload_status(target_repo, saved.location)
        except RegistryError as exc:
            if exc.status in (408, 429) or not 400 <= exc.status < 500:
                raise  # no answer about the session yet: the next attempt asks again
            # Purged, voided by a PATCH broken mid-body (distribution 2.8 answers 404), or refused
            # in another way: the registry will not go on with it, so the blob starts afresh.
            await self._forget(target_repo, digest)
            return None

    async def _open(self, source_repo: str, target_repo: str, digest: Digest) -> str | None:
        """A new upload session's location, or None when ``target_repo`` holds the blob already
        (or has just mounted it)."""
        mount_from = self._home.get(digest)
        if mount_from is None and self.source.host == self.target.host and source_repo != target_repo:
            mount_from = source_repo  # same registry: a server-side link, no bytes moved
        if mount_from is None and self.mount_probe:
            # Mounting from the target repository itself answers 201 when it already holds the
            # blob and otherwise opens the upload we need: one request instead of HEAD + POST.
            mount_from = target_repo
        if mount_from is not None:
            return await self.target.start_upload(target_repo, mount=digest, mount_from=mount_from)
        if await self.target.blob_exists(target_repo, digest) is not None:
            return None
        location = await self.target.start_upload(target_repo)
        assert location is not None  # start_upload without mount always opens a session
        return location

    def _link(self, target_repo: str, digest: Digest) -> None:
        self._linked.add((target_repo, digest))
        self._home.setdefault(digest, target_repo)

    async def _forget(self, target_repo: str, digest: Digest) -> None:
        self._hashed.pop((target_repo, digest), None)
        await self._sessions.drop(target_repo, digest)

    async def _upload_monolithic(self, source_repo: str, target_repo: str, blob: Descriptor,
                                 location: str) -> None:
        async with self.source.open_blob(source_repo, blob.digest) as stream:
            body = _verified(stream.chunks(), DigestVerifier(blob.digest), self.stop, self.bandwidth,
                             blob.size)
            await self.target.put_blob(target_repo, location, blob.digest, blob.size, body)

    async def _upload_chunked(self, source_repo: str, target_repo: str, blob: Descriptor,
                              at: UploadStatus, sent: _Sent) -> None:
        """PATCH by PATCH from the registry's offset, each body streamed from the source. After
        each acknowledged PATCH the session is saved, so that whichever attempt comes next goes
        on from there; the bytes a broken PATCH carried are not counted until the registry says
        it kept them."""
        key = (target_repo, str(blob.digest))
        location, offset = at.location, at.offset
        hasher = await self._hash_to(source_repo, target_repo, blob.digest, offset)
        if offset < blob.size:
            async with self.source.open_blob(source_repo, blob.digest, offset) as stream:
                reader = _Reader(stream.chunks(), self.stop, self.bandwidth)
                while offset < blob.size:
                    length = min(UPLOAD_CHUNK_BYTES, blob.size - offset)
                    # Each PATCH answers with the session's next location (distribution signs the
                    # offset into it): the one the next attempt must continue with.
                    location = await self.target.patch_chunk(
                        target_repo, location, offset, length, reader.take(length, hasher))
                    offset += length
                    sent.bytes += length
                    self._hashed[key] = (offset, hasher.copy())
                    await self._sessions.put(target_repo, blob.digest,
                                             UploadSession(location=location, offset=offset))
        actual = Digest(f"{blob.digest.algorithm}:{hasher.hexdigest()}")
        if actual != blob.digest:
            await self.target.cancel_upload(target_repo, location)
            await self._forget(target_repo, blob.digest)
            raise DigestMismatchError(blob.digest, actual)
        await self.target.complete_upload(target_repo, location, blob.digest)
        await self._forget(target_repo, blob.digest)

    async def _hash_to(self, source_repo: str, target_repo: str, digest: Digest,
                       offset: int) -> hashlib._Hash:
        """The hash of the source's first ``offset`` bytes, from this process's checkpoint of the
        session when it has one at or before ``offset``, else read from byte 0."""
        start, hasher = 0, hashlib.new(digest.algorithm)
        checkpoint = self._hashed.get((target_repo, str(digest)))
        if checkpoint is not None and checkpoint[0] <= offset:
            start, hasher = checkpoint[0], checkpoint[1].copy()
        if offset > start:
            async with self.source.open_blob(source_repo, digest, start) as stream:
                reader = _Reader(stream.chunks(), self.stop, Bandwidth(-1))  # nothing is sent here
                async for _ in reader.take(offset - start, hasher):
                    pass
        return hasher


@dataclass
class _Sent:
    """Bytes of one blob the target acknowledged, over all its attempts."""

    bytes: int = 0


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
