"""OCI image layouts as a registry: a directory a site can fill from a registry, carry across an
air gap, and replicate into another registry, byte for byte.

    registry url  ``file:///srv/mirror``: the root directory (created on first write)
    repository    one image layout per repository under the root, as ``skopeo`` writes one for
                  ``oci:DIR``: ``team/app`` is ``/srv/mirror/team/app/`` holding ``oci-layout``,
                  ``index.json`` and ``blobs/<alg>/<hex>``
    tag           an ``index.json`` entry annotated ``org.opencontainers.image.ref.name: <tag>``
    manifest      a blob holding the exact bytes pulled; tagged ones also have their index entry
                  (children of an index, and manifests pushed by digest, are blobs only: the
                  spec needs only what is reachable from ``index.json`` to be listed there)
    blob          ``blobs/<alg>/<hex>``

Nothing half written is ever visible under its final name: a blob is written to a temporary file
in its layout, its digest checked against the bytes on disk, synced, then renamed into
``blobs/``; ``index.json`` is rewritten to a temporary file and renamed over the old one, under
an exclusive lock on the layout directory, so that two writers (tasks of one run, or two runs)
never lose each other's tags. Upload sessions are temporary files too (``.regflow-upload-*``):
the engine's chunked uploads continue them after a crash from the bytes synced to disk.

The client speaks the distribution verbs the replication engine uses (``tasks/transfer.py``,
``tasks/blobs.py``), answered from the filesystem; nothing here opens a socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import IO, Any, Final, TypeVar
from urllib.parse import unquote, urlsplit

import httpx
from pydantic import ValidationError

from adapters.base import AdapterInfo, Health
from adapters.distribution.auth import finished
from adapters.distribution.client import (
    CATALOG_PAGE_SIZE,
    STREAM_CHUNK_BYTES,
    BlobStream,
    DistributionClient,
    ManifestHead,
    UploadStatus,
)
from adapters.endpoint import Endpoint
from adapters.errors import (
    ConfigError,
    ContentError,
    DigestMismatchError,
    InvalidReferenceError,
    ManifestTooLargeError,
    NotFoundError,
    PermissionDeniedError,
    RegistryError,
    ReplicationError,
    ServerError,
    error_for_status,
)
from adapters.native import NativeAdapter
from adapters.oci import (
    MAX_MANIFEST_BYTES,
    OCI_INDEX,
    Descriptor,
    Digest,
    DigestVerifier,
    Manifest,
    parse_manifest,
    validate_repository,
    validate_tag,
)

LAYOUT_FILE: Final = "oci-layout"
INDEX_FILE: Final = "index.json"
BLOBS_DIR: Final = "blobs"
LAYOUT_VERSION: Final = "1.0.0"
REF_NAME: Final = "org.opencontainers.image.ref.name"
# Everything regflow writes beside a layout's own files starts with this, so that readers (and
# the archive writer) can tell it apart: upload sessions and temporary files.
TEMP_PREFIX: Final = ".regflow-"
UPLOAD_PREFIX: Final = ".regflow-upload-"
_UPLOAD_NAME: Final = re.compile(r"\.regflow-upload-[0-9a-f]{32}")
# index.json is read whole for every tag lookup: 64 MiB is ~300,000 tags, far past a real
# repository; a bigger file is not a layout this adapter should hold in memory.
MAX_INDEX_BYTES: Final = 64 * 1024 * 1024
# Temporary files older than this are left from a crash, not in use (distribution purges its
# abandoned uploads after the same week): they are removed the next time a layout is written.
STALE_TEMP_SECONDS: Final = 7 * 24 * 3600.0

T = TypeVar("T")
# index.json's ``manifests``, as parsed JSON: rewritten with every field we do not know kept.
Entries = list[dict[str, Any]]


def layout_root(endpoint: Endpoint) -> Path:
    """The directory a ``file:///...`` registry URL names."""
    parts = urlsplit(endpoint.url)
    if parts.scheme != "file":
        raise ConfigError(f"an oci-layout registry's url is file:///absolute/path, not {endpoint.url!r}",
                          field="url")
    return Path(unquote(parts.path))


class OciLayoutClient(DistributionClient):
    """The distribution verbs a replication uses, on a directory of OCI image layouts.

    With ``single``, the root is itself one layout and every repository name means it (the
    ``oci:DIR`` of ``regflow copy``)."""

    # No HTTP API at all, so no referrers API: the fallback tag schemas are its only index.
    referrers_api = False

    def __init__(self, endpoint: Endpoint, *, transport: httpx.AsyncBaseTransport | None = None,
                 single: bool = False) -> None:
        # No super().__init__(): there is nothing to speak HTTP to, so no httpx client is made.
        # Every verb of DistributionClient is overridden below.
        del transport
        self.endpoint = endpoint
        self.root = layout_root(endpoint)
        self.single = single
        self.requests_made = 0  # filesystem operations, counted like requests (tasks/traffic.py)
        self.responses: Counter[str] = Counter()  # no HTTP answers: stays empty (tasks/traffic.py)
        self.holds = 0
        self.fastest_answer: float | None = None  # no round trips: blob slots stay as they are
        self.trace = None  # no requests to trace
        self._observer = None
        self._hold_until = 0.0
        self._locks: dict[Path, asyncio.Lock] = {}
        self._swept: set[Path] = set()

    @classmethod
    def for_directory(cls, directory: Path) -> OciLayoutClient:
        """One layout directory (``oci:DIR``), whatever the repository is called."""
        return cls(Endpoint(url=directory.absolute().as_uri()), single=True)

    def __repr__(self) -> str:
        return f"OciLayoutClient({str(self.root)!r})"

    @property
    def host(self) -> str:
        # Not a network host: names the root in messages and in per-registry limits, and makes
        # two clients on one root compare equal (the copier then links blobs across layouts).
        return f"oci-layout:{self.root}"

    async def aclose(self) -> None:
        """Nothing is held open between operations."""

    # -- where things live -----------------------------------------------------------------

    def layout(self, repository: str) -> Path:
        """The layout directory of ``repository``."""
        if self.single:
            return self.root
        validate_repository(repository)
        if BLOBS_DIR in repository.split("/"):
            # A repository inside another's layout would sit in its blob store.
            raise InvalidReferenceError(f"repository {repository!r}: an oci-layout registry cannot hold a "
                                        f"path component named {BLOBS_DIR!r}")
        return self.root.joinpath(*repository.split("/"))

    @staticmethod
    def _blob_path(layout: Path, digest: Digest) -> Path:
        return layout / BLOBS_DIR / digest.algorithm / digest.hex

    @staticmethod
    def _upload_path(layout: Path, location: str) -> Path:
        # A location comes back from the store: never let one name a file outside the layout.
        if not _UPLOAD_NAME.fullmatch(location):
            raise NotFoundError(f"no upload session {location[:80]!r} in {layout}", status=404,
                                codes=("BLOB_UPLOAD_UNKNOWN",))
        return layout / location

    async def _io(self, call: Callable[..., T], *args: Any) -> T:
        """``call`` in a worker thread (the event loop never waits on the disk), its OSError
        turned into the error tree."""
        self.requests_made += 1
        try:
            return await asyncio.to_thread(call, *args)
        except OSError as exc:
            raise storage_error(exc) from None

    def _lock(self, layout: Path) -> asyncio.Lock:
        return self._locks.setdefault(layout, asyncio.Lock())

    # -- base ------------------------------------------------------------------------------

    async def start_prefetch_tokens(self, repositories: Iterable[str], actions: str) -> asyncio.Future[None]:
        """No tokens for a directory."""
        del repositories, actions
        return finished()

    async def learn_realm(self) -> None:
        """No token service for a directory."""

    async def ping(self) -> int:
        """200 when the root is a directory regflow can read, or can be created. Writability is
        not asked: a source may be read-only media; a write says so when it is refused."""
        await self._io(_check_root, self.root)
        return 200

    async def check_credentials(self) -> None:
        """A directory has no credentials."""

    async def catalog(self, page_size: int = CATALOG_PAGE_SIZE) -> AsyncIterator[str]:
        # page_size is the distribution signature's: the walk is one listing.
        for name in await self._io(_walk_layouts, self.root):
            yield name

    async def list_tags(self, repository: str) -> list[str]:
        return list(_tags(await self._index(repository)))

    async def has_tags(self, repository: str) -> bool:
        try:
            return bool(_tags(await self._index(repository)))
        except NotFoundError:
            return False

    async def _index(self, repository: str) -> dict[str, Any]:
        layout = self.layout(repository)
        found = await self._io(_read_index, layout)
        if found is None:
            raise NotFoundError(f"no image layout for {repository!r} under {self.root}", status=404,
                                codes=("NAME_UNKNOWN",))
        return found

    # -- manifests -------------------------------------------------------------------------

    async def head_manifest(self, repository: str, ref: str) -> ManifestHead | None:
        try:
            descriptor, digest = await self._resolve(repository, ref)
        except NotFoundError:
            return None
        layout = self.layout(repository)
        if descriptor is not None:
            # An entry whose manifest is missing (a copy another tool left unfinished) is not
            # there: reporting it would make the plan skip the tag.
            if await self._io(_blob_size, self._blob_path(layout, digest)) is None:
                return None
            return ManifestHead(descriptor.digest, descriptor.media_type, descriptor.size)
        try:
            manifest = await self.get_manifest(repository, digest)
        except (NotFoundError, ContentError):
            return None  # no such blob, or a blob that is no manifest
        return ManifestHead(manifest.digest, manifest.media_type, manifest.size)

    async def get_manifest(self, repository: str, ref: str) -> Manifest:
        descriptor, digest = await self._resolve(repository, ref)
        path = self._blob_path(self.layout(repository), digest)
        raw = await self._io(_read_capped, path, MAX_MANIFEST_BYTES)
        if raw is None:
            raise NotFoundError(f"manifest {repository}@{digest} is not in {self.layout(repository)}",
                                status=404, codes=("MANIFEST_UNKNOWN",))
        if len(raw) > MAX_MANIFEST_BYTES:
            raise ManifestTooLargeError(f"manifest {repository}@{digest} is over {MAX_MANIFEST_BYTES} bytes")
        return parse_manifest(raw, descriptor.media_type if descriptor else None, expected_digest=digest)

    async def _resolve(self, repository: str, ref: str) -> tuple[Descriptor | None, Digest]:
        """The index entry of a tag or digest (None for a digest the index does not list), and
        the digest it names. A tag the index lacks raises NotFoundError."""
        if ref.startswith(("sha256:", "sha512:")):
            try:
                digest = Digest(ref)
            except InvalidReferenceError:
                raise NotFoundError(f"{ref[:80]!r} is not a digest", status=404) from None
            try:
                entries = _entries(await self._index(repository))
            except NotFoundError:
                entries = []
            return next((e for e in entries if e.digest == digest), None), digest
        found = _tags(await self._index(repository)).get(ref)
        if found is None:
            raise NotFoundError(f"tag {repository}:{ref} is not in {self.layout(repository)}", status=404,
                                codes=("MANIFEST_UNKNOWN",))
        return found, found.digest

    async def put_manifest(self, repository: str, ref: str, manifest: Manifest) -> Digest:
        """Store the manifest's exact bytes as a blob; under a tag, also (re)point its index
        entry at them. By digest, the blob alone (a child of an index)."""
        digest = Digest.of(manifest.raw)
        if digest != manifest.digest:
            raise DigestMismatchError(manifest.digest, digest, what="manifest")
        if ref.startswith(("sha256:", "sha512:")) and ref != digest:
            raise DigestMismatchError(ref, digest, what=f"manifest {repository}")
        tag = None if ref.startswith(("sha256:", "sha512:")) else validate_tag(ref)
        layout = self.layout(repository)
        await self._io(_ensure_layout, layout)
        await self._io(_store_bytes, self._blob_path(layout, digest), manifest.raw)
        if tag is not None:
            entry = _entry(manifest, tag)
            await self._update_index(layout, lambda entries: _retagged(entries, tag, entry))
        return digest

    async def add_untagged(self, repository: str, manifest: Manifest) -> None:
        """List a stored manifest in the index without a name, as skopeo does for ``oci:DIR``
        without a tag; once only."""
        layout = self.layout(repository)
        entry = _entry(manifest, None)
        await self._update_index(layout, lambda entries: None if any(
            e.get("digest") == manifest.digest for e in entries) else [*entries, entry])

    async def keep_only(self, repository: str, digest: Digest) -> None:
        """Drop every index entry not naming ``digest`` (an archive holds one image: an entry
        a broken-off copy of another left in its layout is not part of it)."""
        await self._update_index(self.layout(repository), lambda entries: _without(
            entries, lambda e: e.get("digest") != digest), create=False)

    async def only_manifest(self, repository: str) -> Digest:
        """The digest of the layout's single image, for ``oci:DIR`` named without a tag."""
        entries = _entries(await self._index(repository))
        if len(entries) != 1:
            names = ", ".join(sorted(_tags(await self._index(repository)))[:10]) or "none named"
            raise ConfigError(f"{self.layout(repository)} holds {len(entries)} images ({names}): "
                              "name one as oci:DIR:TAG")
        return entries[0].digest

    async def delete_manifest(self, repository: str, digest: Digest) -> bool:
        """Remove every index entry naming ``digest`` (its tags); False when none did. The blobs
        stay: another tag or index may share them."""
        if not digest.startswith(("sha256:", "sha512:")):
            return await self.delete_tag(repository, digest)
        layout = self.layout(repository)
        return await self._update_index(layout, lambda entries: _without(
            entries, lambda e: e.get("digest") == digest), create=False)

    async def delete_tag(self, repository: str, tag: str) -> bool:
        layout = self.layout(repository)
        return await self._update_index(layout, lambda entries: _without(
            entries, lambda e: _ref_name(e) == tag), create=False)

    async def _update_index(self, layout: Path,
                            change: Callable[[Entries], Entries | None], *,
                            create: bool = True) -> bool:
        """Read-modify-write of index.json under the layout's lock: an asyncio lock for this
        process's tasks, an flock for other processes. ``change`` returns the new entries, or
        None to leave the file alone. False when nothing changed."""
        if not create and await self._io(_read_index, layout) is None:
            return False
        async with self._lock(layout):
            return await self._io(_rewrite_index, layout, change)

    # -- blobs -----------------------------------------------------------------------------

    async def blob_exists(self, repository: str, digest: Digest) -> int | None:
        return await self._io(_blob_size, self._blob_path(self.layout(repository), digest))

    @asynccontextmanager
    async def open_blob(self, repository: str, digest: Digest, offset: int = 0) -> AsyncIterator[BlobStream]:
        path = self._blob_path(self.layout(repository), digest)
        opened = await self._io(_open_at, path, offset)
        if opened is None:
            raise NotFoundError(f"blob {digest} is not in {self.layout(repository)}", status=404,
                                codes=("BLOB_UNKNOWN",))
        handle, size = opened
        try:
            yield _FileStream(size, lambda n: self._io(handle.read, n))
        finally:
            handle.close()

    async def start_upload(self, repository: str, *, mount: Digest | None = None,
                           mount_from: str | None = None) -> str | None:
        """With ``mount``: None when the layout holds the blob already, or has just linked it from
        ``mount_from``'s layout under the same root; else (and without) a new session."""
        layout = self.layout(repository)
        await self._io(_ensure_layout, layout)
        if mount is not None:
            own = self._blob_path(layout, mount)
            if await self._io(_blob_size, own) is not None:
                return None
            if mount_from is not None and mount_from != repository and not self.single:
                other = self._blob_path(self.layout(mount_from), mount)
                if await self._io(_link_blob, other, own, layout):
                    return None
        if layout not in self._swept:
            self._swept.add(layout)
            await self._io(_sweep_stale, layout)
        name = f"{UPLOAD_PREFIX}{uuid.uuid4().hex}"
        await self._io(_create_empty, layout / name)
        return name

    async def put_blob(self, repository: str, location: str, digest: Digest, size: int,
                       body: AsyncIterable[bytes] | bytes) -> None:
        """The whole blob into the session's file, hashed on the way; renamed into ``blobs/``
        only when it is ``size`` bytes hashing to ``digest``."""
        layout = self.layout(repository)
        path = self._upload_path(layout, location)
        handle = await self._io(_open_session, path, 0)
        verifier = DigestVerifier(digest, what=f"blob {digest}")
        try:
            async for chunk in _pieces(body):
                await self._io(_write_hashed, handle, verifier, chunk)
                if verifier.size > size:
                    raise DigestMismatchError(digest, f"more than {size} bytes")
            if verifier.size != size:
                raise ContentError(f"blob {digest}: got {verifier.size} bytes, expected {size}")
            verifier.verify()
            await self._io(_sync_and_close, handle)
        except BaseException:
            handle.close()
            with contextlib.suppress(OSError):
                path.unlink()  # nothing to resume in a monolithic upload
            raise
        await self._io(_publish, path, self._blob_path(layout, digest))

    async def patch_chunk(self, repository: str, location: str, offset: int, length: int,
                          body: AsyncIterable[bytes] | bytes) -> str:
        """``length`` bytes at ``offset`` of the session's file, synced before this returns:
        what it acknowledges survives a crash. Bytes past ``offset`` that an earlier, broken
        chunk left are dropped first."""
        path = self._upload_path(self.layout(repository), location)
        handle = await self._io(_open_session, path, offset)
        written = 0
        try:
            async for chunk in _pieces(body):
                written += len(chunk)
                if written > length:
                    raise ContentError(f"chunk at {offset} is longer than {length} bytes")
                await self._io(handle.write, chunk)
            if written != length:
                raise ContentError(f"chunk at {offset}: got {written} bytes, expected {length}")
            await self._io(_sync_and_close, handle)
        finally:
            handle.close()
        return location

    async def upload_status(self, repository: str, location: str) -> UploadStatus:
        path = self._upload_path(self.layout(repository), location)
        size = await self._io(_blob_size, path)
        if size is None:
            raise NotFoundError(f"upload session {location} is gone from {path.parent}", status=404,
                                codes=("BLOB_UPLOAD_UNKNOWN",))
        return UploadStatus(location, size)

    async def complete_upload(self, repository: str, location: str, digest: Digest) -> None:
        """Hash the session's file as it is on disk; rename it into ``blobs/`` if it matches.
        A mismatch (bytes lost in a crash) ends the session, so the next attempt starts afresh."""
        layout = self.layout(repository)
        path = self._upload_path(layout, location)
        actual = await self._io(_hash_file, path, digest.algorithm)
        if actual is None:
            raise NotFoundError(f"upload session {location} is gone from {layout}", status=404,
                                codes=("BLOB_UPLOAD_UNKNOWN",))
        if actual != digest:
            with contextlib.suppress(OSError):
                path.unlink()
            raise DigestMismatchError(digest, actual, what=f"blob in {layout}")
        await self._io(_publish, path, self._blob_path(layout, digest))

    async def cancel_upload(self, repository: str, location: str) -> None:
        with contextlib.suppress(ReplicationError):
            await self._io(_unlink_quietly, self._upload_path(self.layout(repository), location))


class OciLayoutAdapter(NativeAdapter):
    info = AdapterInfo(
        type="oci-layout",
        description="A directory of OCI image layouts (file:///path), one per repository, as "
                    "skopeo's oci:DIR: a source or target to carry images across an air gap",
        # A directory sends no notifications.
        triggers=("manual", "scheduled"),
        supports_tag_deletion=True,
    )
    client_class = OciLayoutClient

    def __init__(self, endpoint: Endpoint, *, transport: httpx.AsyncBaseTransport | None = None) -> None:
        if endpoint.username or endpoint.password is not None:
            raise ConfigError("an oci-layout registry is a directory: it takes no credential",
                              field="credential")
        super().__init__(endpoint, transport=transport)

    async def health(self) -> Health:
        # The native adapter reads a 403 as refused credentials; here it is file permissions.
        try:
            await self.probe()
        except ReplicationError as exc:
            return Health(status="unhealthy", reason=str(exc))
        return Health(status="healthy")

    async def probe(self) -> None:
        await self.client.ping()

    async def prepare_for_push(self, repositories: Sequence[str]) -> None:
        """Layouts are made on first write; only check that each name can be one."""
        client = self.client
        assert isinstance(client, OciLayoutClient)
        for name in repositories:
            client.layout(name)


def storage_error(exc: OSError) -> RegistryError:
    """A filesystem failure in the error tree: missing is 404, not allowed 403, a full disk is
    final (a retry seconds later finds it as full), anything else may pass (an NFS hiccup)."""
    what = f"{exc.filename}: {exc.strerror}" if exc.filename and exc.strerror else str(exc)
    message = f"oci-layout {what}"[:400]
    code = exc.errno
    if code == errno.ENOENT:
        return NotFoundError(message, status=404)
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return PermissionDeniedError(message, status=403)
    if code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.ENAMETOOLONG):
        return RegistryError(message, status=507, transient=False)
    return ServerError(message, status=500)


# -- index.json ------------------------------------------------------------------------------


def _entries(index: dict[str, Any]) -> list[Descriptor]:
    try:
        return [Descriptor.model_validate(e) for e in index["manifests"]]
    except ValidationError as exc:
        error = exc.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(p) for p in error["loc"])
        reason = f"{INDEX_FILE}: an entry is not a descriptor ({where}: {error['msg']})"
        raise ContentError(reason[:300]) from None


def _tags(index: dict[str, Any]) -> dict[str, Descriptor]:
    """Tag → entry. A ref.name that is no tag (a full reference some tools write) is no tag of
    this repository; the last of two entries naming one tag wins, as a later push would."""
    tags: dict[str, Descriptor] = {}
    for entry in _entries(index):
        name = (entry.annotations or {}).get(REF_NAME)
        if name is not None:
            with contextlib.suppress(InvalidReferenceError):
                tags[validate_tag(name)] = entry
    return tags


def _ref_name(entry: dict[str, Any]) -> str | None:
    annotations = entry.get("annotations")
    return annotations.get(REF_NAME) if isinstance(annotations, dict) else None


def _entry(manifest: Manifest, tag: str | None) -> dict[str, Any]:
    entry: dict[str, Any] = {"mediaType": manifest.media_type, "digest": str(manifest.digest),
                             "size": manifest.size}
    if manifest.artifact_type:
        entry["artifactType"] = manifest.artifact_type
    if tag is not None:
        entry["annotations"] = {REF_NAME: tag}
    return entry


def _retagged(entries: Entries, tag: str, entry: dict[str, Any]) -> Entries | None:
    """The tag's entry replaced in place (or appended), other entries untouched."""
    named = [i for i, e in enumerate(entries) if _ref_name(e) == tag]
    if named and len(named) == 1 and entries[named[0]] == entry:
        return None
    kept = [e for i, e in enumerate(entries) if i not in named[1:]]
    if named:
        kept[named[0]] = entry
        return kept
    return [*kept, entry]


def _without(entries: Entries, drop: Callable[[dict[str, Any]], bool]) -> Entries | None:
    kept = [e for e in entries if not drop(e)]
    return None if len(kept) == len(entries) else kept


def _empty_index() -> dict[str, Any]:
    return {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}


def _read_index(layout: Path) -> dict[str, Any] | None:
    """The layout's index.json, an empty one for a layout without it yet, None for no layout."""
    raw = _read_capped(layout / INDEX_FILE, MAX_INDEX_BYTES)
    if raw is None:
        return _empty_index() if (layout / LAYOUT_FILE).is_file() else None
    if len(raw) > MAX_INDEX_BYTES:
        raise ContentError(f"{layout / INDEX_FILE} is over {MAX_INDEX_BYTES} bytes")
    try:
        index = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError):
        raise ContentError(f"{layout / INDEX_FILE} is not JSON") from None
    if not isinstance(index, dict) or not isinstance(index.get("manifests", []), list):
        raise ContentError(f"{layout / INDEX_FILE} is not an image index")
    index.setdefault("manifests", [])
    return index


def _rewrite_index(layout: Path, change: Callable[[Entries], Entries | None]) -> bool:
    fd = os.open(layout, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # released when fd closes
        index = _read_index(layout) or _empty_index()
        entries = [e for e in index["manifests"] if isinstance(e, dict)]
        updated = change(entries)
        if updated is None:
            return False
        index["manifests"] = updated
        _write_atomic(layout / INDEX_FILE, json.dumps(index, separators=(",", ":")).encode())
        return True
    finally:
        os.close(fd)


# -- files -----------------------------------------------------------------------------------


def _check_root(root: Path) -> None:
    probe = root
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "not a directory", str(probe))
    if not os.access(probe, os.R_OK | os.X_OK):
        raise PermissionError(errno.EACCES, "cannot read this directory", str(probe))


def _walk_layouts(root: Path) -> list[str]:
    """Repository names of every layout under ``root``: directories with an ``oci-layout``
    file, looked for below each other too (``team`` and ``team/app``), never inside blob
    stores, hidden directories or through symbolic links."""
    names: list[str] = []
    for directory, subdirs, files in os.walk(root):
        here = Path(directory)
        is_layout = LAYOUT_FILE in files
        subdirs[:] = sorted(d for d in subdirs
                            if not d.startswith(".") and not (is_layout and d == BLOBS_DIR))
        if is_layout and here != root:
            name = here.relative_to(root).as_posix()
            with contextlib.suppress(InvalidReferenceError):
                names.append(validate_repository(name))
    return sorted(names)


def _ensure_layout(layout: Path) -> None:
    """Make ``layout`` a layout (idempotent, safe against a concurrent maker)."""
    (layout / BLOBS_DIR).mkdir(parents=True, exist_ok=True)
    _write_atomic(layout / LAYOUT_FILE, json.dumps({"imageLayoutVersion": LAYOUT_VERSION}).encode(),
                  only_new=True)
    _write_atomic(layout / INDEX_FILE, json.dumps(_empty_index(), separators=(",", ":")).encode(),
                  only_new=True)


def _temp_name(directory: Path) -> Path:
    return directory / f"{TEMP_PREFIX}tmp-{uuid.uuid4().hex}"


def _write_atomic(path: Path, data: bytes, *, only_new: bool = False) -> None:
    """``data`` under ``path`` whole or not at all: written beside it, synced, renamed (or with
    ``only_new``, linked: a file someone made meanwhile is kept)."""
    if only_new and path.exists():
        return
    temp = _temp_name(path.parent)
    try:
        with temp.open("xb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if only_new:
            with contextlib.suppress(FileExistsError):
                os.link(temp, path)
        else:
            os.replace(temp, path)
        _sync_directory(path.parent)
    finally:
        _unlink_quietly(temp)


def _store_bytes(target: Path, data: bytes) -> None:
    if target.exists():
        return  # content-addressed: the same name holds the same bytes
    target.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(target, data)


def _publish(temp: Path, target: Path) -> None:
    """A verified, synced file under its blob name, atomically."""
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(temp, target)
    _sync_directory(target.parent)


def _link_blob(source: Path, target: Path, layout: Path) -> bool:
    """``source`` (a blob of another layout under the root) under ``target`` as well: a hard
    link, else a verified copy. False when ``source`` does not exist."""
    if not source.is_file():
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except FileExistsError:
        return True
    except OSError:
        # Hard links refused (another filesystem under the root, or none on this one).
        temp = _temp_name(layout)
        try:
            algorithm = target.parent.name
            with source.open("rb") as reader, temp.open("xb") as writer:
                hasher = hashlib.new(algorithm)
                while piece := reader.read(STREAM_CHUNK_BYTES):
                    hasher.update(piece)
                    writer.write(piece)
                writer.flush()
                os.fsync(writer.fileno())
            if hasher.hexdigest() != target.name:
                return False  # the other layout's blob is damaged: upload it instead
            _publish(temp, target)
        finally:
            _unlink_quietly(temp)
        return True
    _sync_directory(target.parent)
    return True


def _sync_directory(directory: Path) -> None:
    """Make a rename or a new name in ``directory`` survive a crash."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _blob_size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return None


def _read_capped(path: Path, limit: int) -> bytes | None:
    """Up to ``limit`` + 1 bytes of ``path`` (the caller tells a file over its limit by the
    length), or None when there is no such file."""
    try:
        with path.open("rb") as handle:
            return handle.read(limit + 1)
    except (FileNotFoundError, NotADirectoryError):
        return None


def _open_at(path: Path, offset: int) -> tuple[IO[bytes], int] | None:
    try:
        handle = path.open("rb")
    except (FileNotFoundError, NotADirectoryError):
        return None
    size = os.fstat(handle.fileno()).st_size
    handle.seek(offset)
    return handle, size


def _create_empty(path: Path) -> None:
    with path.open("xb"):
        pass


def _open_session(path: Path, offset: int) -> IO[bytes]:
    """The session's file, positioned at ``offset``: what is past it was never acknowledged."""
    try:
        handle = path.open("r+b")
    except FileNotFoundError:
        raise NotFoundError(f"upload session {path.name} is gone from {path.parent}", status=404,
                            codes=("BLOB_UPLOAD_UNKNOWN",)) from None
    size = os.fstat(handle.fileno()).st_size
    if size < offset:
        handle.close()
        raise error_for_status(f"upload session {path.name} holds {size} bytes, not {offset}",
                               status=416, codes=("RANGE_INVALID",))
    handle.truncate(offset)
    handle.seek(offset)
    return handle


def _write_hashed(handle: IO[bytes], verifier: DigestVerifier, chunk: bytes) -> None:
    # Hashing here, off the event loop: hashlib lets go of the GIL for big buffers.
    verifier.update(chunk)
    handle.write(chunk)


def _sync_and_close(handle: IO[bytes]) -> None:
    handle.flush()
    os.fsync(handle.fileno())
    handle.close()


def _hash_file(path: Path, algorithm: str) -> Digest | None:
    hasher = hashlib.new(algorithm)
    try:
        with path.open("rb") as handle:
            while piece := handle.read(STREAM_CHUNK_BYTES):
                hasher.update(piece)
    except FileNotFoundError:
        return None
    return Digest(f"{algorithm}:{hasher.hexdigest()}")


def _unlink_quietly(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _sweep_stale(layout: Path) -> None:
    """Remove what crashed writers left in ``layout`` more than STALE_TEMP_SECONDS ago."""
    cutoff = time.time() - STALE_TEMP_SECONDS
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(layout):
            if entry.name.startswith(TEMP_PREFIX) and entry.is_file(follow_symlinks=False):
                with contextlib.suppress(OSError):
                    if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                        os.unlink(entry.path)


async def _pieces(body: AsyncIterable[bytes] | bytes) -> AsyncIterator[bytes]:
    if isinstance(body, bytes):
        for start in range(0, len(body), STREAM_CHUNK_BYTES):
            yield body[start:start + STREAM_CHUNK_BYTES]
        return
    async for chunk in body:
        yield chunk


class _FileStream(BlobStream):
    """A blob read from its file, chunk by chunk (``read`` does it off the event loop)."""

    def __init__(self, size: int, read: Callable[[int], Awaitable[bytes]]) -> None:  # no response
        self.size = size
        self._read = read

    async def chunks(self, chunk_size: int = STREAM_CHUNK_BYTES) -> AsyncIterator[bytes]:
        while piece := await self._read(chunk_size):
            yield piece
