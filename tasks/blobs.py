"""Getting one blob onto the target, by the cheapest route that works:

    already linked in this run → nothing
    known on the target in another repository (this run) → cross-repo mount (1 request)
    HEAD on the target repository says it is there → nothing more
    same registry on both sides → mount from the source repository
    otherwise stream GET → PUT, sha256 checked on the way (chunked PATCH for big blobs)

One ``BlobCopier`` serves a whole run: each digest is uploaded once however many repositories
and tags share it, and a failed upload is forgotten so a later attempt can try again.
Memory stays flat: a monolithic upload holds one read chunk, a chunked one one upload chunk.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import AsyncIterator

from adapters.distribution.client import DistributionClient
from adapters.errors import DigestMismatchError, RateLimitedError, ReplicationError
from adapters.oci import Descriptor, Digest, DigestVerifier
from tasks.stop import StopSignal

# Blobs moved at once per run. Measured on the reference 2-core machine the registries, not the
# copier, saturate first; more streams only add contention.
BLOB_CONCURRENCY = 4
# Blobs above this go up in chunks, so a dropped connection resumes from the registry's offset
# instead of restarting a multi-GB stream.
CHUNKED_UPLOAD_THRESHOLD_BYTES = 128 * 1024 * 1024
# One PATCH carries this much, buffered so that a partly received chunk can be resumed exactly.
UPLOAD_CHUNK_BYTES = 16 * 1024 * 1024
# Attempts per blob inside one task attempt, for transient failures (resets, 5xx, 429).
BLOB_ATTEMPTS = 3
BACKOFF_BASE_SECONDS = 0.5
# A Retry-After longer than this fails the blob; the task-level retry takes over.
MAX_RETRY_AFTER_SECONDS = 120.0


class BlobCopier:
    def __init__(
        self,
        source: DistributionClient,
        target: DistributionClient,
        *,
        stop: StopSignal | None = None,
        concurrency: int = BLOB_CONCURRENCY,
        chunked_threshold: int = CHUNKED_UPLOAD_THRESHOLD_BYTES,
    ) -> None:
        self.source = source
        self.target = target
        self.stop = stop or StopSignal()
        self.chunked_threshold = chunked_threshold
        self._slots = asyncio.Semaphore(concurrency)
        self._linked: set[tuple[str, str]] = set()
        self._home: dict[str, str] = {}  # digest -> a target repository that holds it
        self._uploads: dict[str, asyncio.Future[None]] = {}
        self.bytes_uploaded = 0

    async def ensure(self, source_repo: str, target_repo: str, blob: Descriptor, *,
                     chunked: bool = False) -> int:
        """Make ``target_repo`` hold ``blob``; returns the bytes uploaded for it."""
        digest = blob.digest
        if (target_repo, digest) in self._linked:
            return 0
        self.stop.check()
        pending = self._uploads.get(digest)
        if pending is not None:
            # Someone is uploading it to another repository now: wait, then mount.
            try:
                await asyncio.shield(pending)
            except ReplicationError:
                pass  # their failure is theirs; we try on our own below
        async with self._slots:
            self.stop.check()
            return await self._place(source_repo, target_repo, blob, chunked=chunked)

    async def _place(self, source_repo: str, target_repo: str, blob: Descriptor, *, chunked: bool) -> int:
        digest = blob.digest
        location: str | None = None
        home = self._home.get(digest)
        if home is not None and home != target_repo:
            location = await self.target.start_upload(target_repo, mount=digest, mount_from=home)
            if location is None:
                self._link(target_repo, digest)
                return 0
        elif await self.target.blob_exists(target_repo, digest) is not None:
            self._link(target_repo, digest)
            return 0
        elif self.source.host == self.target.host and source_repo != target_repo:
            location = await self.target.start_upload(target_repo, mount=digest, mount_from=source_repo)
            if location is None:
                self._link(target_repo, digest)
                return 0

        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._uploads.setdefault(digest, done)
        try:
            sent = await self._upload_with_retries(source_repo, target_repo, blob, location,
                                                   chunked=chunked or blob.size > self.chunked_threshold)
        except BaseException as exc:
            if self._uploads.get(digest) is done:
                del self._uploads[digest]  # forget the failure: a retry starts afresh
            if not done.done():
                done.set_exception(exc if isinstance(exc, ReplicationError) else ReplicationError(str(exc)))
                done.exception()  # mark retrieved: nobody may be waiting
            raise
        self._link(target_repo, digest)
        if not done.done():
            done.set_result(None)
        self.bytes_uploaded += sent
        return sent

    def _link(self, target_repo: str, digest: Digest) -> None:
        self._linked.add((target_repo, digest))
        self._home.setdefault(digest, target_repo)

    async def _upload_with_retries(self, source_repo: str, target_repo: str, blob: Descriptor,
                                   location: str | None, *, chunked: bool) -> int:
        resume = False
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
                if not exc.transient or attempt == BLOB_ATTEMPTS:
                    raise
                await self._pause(exc, attempt)
                # A broken monolithic PUT leaves nothing to resume; a chunked session may.
                resume = chunked
                if not chunked:
                    location = None
        raise AssertionError("unreachable")

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
            body = _verified(stream.chunks(), DigestVerifier(blob.digest), self.stop, blob.size)
            await self.target.put_blob(target_repo, location, blob.digest, blob.size, body)
        return blob.size

    async def _upload_chunked(self, source_repo: str, target_repo: str, blob: Descriptor,
                              location: str, *, resume: bool) -> int:
        """PATCH chunk by chunk. On a broken connection the registry's Range says where to go on;
        the hash always covers exactly the bytes the registry holds."""
        hasher = hashlib.new(blob.digest.algorithm)
        offset = 0
        if resume:
            # A session left over from an earlier attempt: its bytes must be hashed too.
            status = await self.target.upload_status(target_repo, location)
            offset, location = status.offset, status.location
            if offset:
                await self._hash_prefix(source_repo, blob.digest, offset, hasher)
        sent = 0
        for attempt in range(1, BLOB_ATTEMPTS + 1):
            try:
                async with self.source.open_blob(source_repo, blob.digest, offset) as stream:
                    async for chunk in _rechunk(stream.chunks(), UPLOAD_CHUNK_BYTES, self.stop):
                        start = 0
                        while start < len(chunk):
                            try:
                                location = await self.target.patch_chunk(target_repo, location, offset,
                                                                         chunk[start:])
                                hasher.update(chunk[start:])
                                sent += len(chunk) - start
                                offset += len(chunk) - start
                                start = len(chunk)
                            except ReplicationError as exc:
                                if not exc.transient or attempt == BLOB_ATTEMPTS:
                                    raise
                                await self._pause(exc, attempt)
                                attempt += 1
                                status = await self.target.upload_status(target_repo, location)
                                kept = status.offset - offset
                                if not 0 <= kept <= len(chunk) - start:
                                    raise
                                hasher.update(chunk[start:start + kept])
                                sent += kept
                                offset += kept
                                start += kept
                                location = status.location
                break
            except ReplicationError as exc:
                # The source broke mid-stream: reopen it at our offset.
                if not exc.transient or attempt == BLOB_ATTEMPTS:
                    raise
                await self._pause(exc, attempt)
        actual = Digest(f"{blob.digest.algorithm}:{hasher.hexdigest()}")
        if actual != blob.digest or offset != blob.size:
            await self.target.cancel_upload(target_repo, location)
            raise DigestMismatchError(blob.digest, actual)
        await self.target.complete_upload(target_repo, location, blob.digest)
        return sent

    async def _hash_prefix(self, source_repo: str, digest: Digest, length: int,
                           hasher: hashlib._Hash) -> None:
        seen = 0
        async with self.source.open_blob(source_repo, digest) as stream:
            async for chunk in stream.chunks():
                take = chunk[: length - seen]
                hasher.update(take)
                seen += len(take)
                if seen >= length:
                    return


async def _verified(chunks: AsyncIterator[bytes], verifier: DigestVerifier, stop: StopSignal,
                    size: int) -> AsyncIterator[bytes]:
    """Pass bytes through, holding back the last chunk until the digest is proven: a corrupt
    blob ends the upload short, so the registry never commits it."""
    held: bytes | None = None
    async for chunk in chunks:
        stop.check()
        verifier.update(chunk)
        if verifier.size > size:
            raise DigestMismatchError(verifier.expected, f"more than {size} bytes")
        if held is not None:
            yield held
        held = chunk
    verifier.verify()
    if held is not None:
        yield held


async def _rechunk(chunks: AsyncIterator[bytes], size: int, stop: StopSignal) -> AsyncIterator[bytes]:
    buf = bytearray()
    async for chunk in chunks:
        stop.check()
        buf += chunk
        while len(buf) >= size:
            yield bytes(buf[:size])
            del buf[:size]
    if buf:
        yield bytes(buf)
