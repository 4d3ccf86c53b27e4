"""``regflow copy``: one image from one location to another (tasks/transports.py), by the engine
every policy uses: the tag's contents first, children before their index, each blob verified
against its digest on the way, the manifest's bytes pushed exactly as pulled, last.

No Prefect: an ad-hoc copy is not an execution of a policy (as ``regflow verify``). The
engine's own blob attempts apply, and the copy as a whole is tried again while its failure is
transient, as the flow's task retries would. Chunked uploads left open by a broken copy are
kept in the store and continued by the next copy to the same place.

Platforms, as skopeo: an index is narrowed to the image for this machine's platform unless
``all_platforms`` (the whole index, byte for byte) or ``platform`` names another.
"""

from __future__ import annotations

import asyncio
import platform as host_platform
import tempfile
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel

from adapters import Adapter, Endpoint, create_adapter
from adapters.distribution.client import DistributionClient
from adapters.errors import ConfigError, ReplicationError, TransportError
from adapters.oci import Digest, Manifest
from adapters.oci.platform import PlatformSpec, platform_text
from adapters.oci_archive import extract_archive, partial_layout, remove_layout, write_archive
from adapters.oci_layout import OciLayoutClient
from policies.models import DIRECTORY_TYPES
from tasks.blobs import BlobCopier
from tasks.models import TagPlan, TagStatus, TransferSpec
from tasks.sessions import UploadSessions
from tasks.transfer import transfer_repository
from tasks.transports import DEFAULT_REGISTRY, ImageLocation

# Whole-copy attempts after the first while the failure is transient: as many as the flow's
# transfer task gets (flows/replicate.py TRANSFER_RETRIES), a few seconds apart.
COPY_RETRIES = 2
COPY_BACKOFF_SECONDS = 2.0
# Docker Hub answers for every name skopeo accepts for it; its adapter knows the real host.
DOCKER_HUB_TYPE = "docker-hub"
DOCKER_HUB_HOSTS = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
class PlatformChoice(PlatformSpec):
    """``--platform``: read and matched as a policy's ``platforms`` (adapters/oci/platform.py)."""

    @classmethod
    def of_this_machine(cls) -> PlatformChoice:
        # Images are Linux images wherever skopeo runs; so is its default.
        return cls.of_machine(host_platform.machine())


class CopyRequest(BaseModel):
    source: ImageLocation
    destination: ImageLocation
    all_platforms: bool = False
    platform: PlatformChoice | None = None
    src_tls_verify: bool = True
    dest_tls_verify: bool = True


class CopyResult(BaseModel):
    source: str
    destination: str
    status: TagStatus
    digest: Digest | None = None  # of what the destination now holds
    media_type: str = ""
    platform: str | None = None  # the child picked from an index, if one was
    bytes: int = 0
    reason: str = ""
    attempts: int = 1


@dataclass
class _Side:
    location: ImageLocation
    client: DistributionClient
    repository: str
    adapter: Adapter | None = None
    supports_mount: bool = True
    # oci-archive destinations: the archive the layout becomes once the copy is done.
    archive: Path | None = None


async def copy_image(request: CopyRequest, store: Any | None = None) -> CopyResult:
    """Copy one image; ``store`` (policies.store.Store) lends credentials and keeps upload
    sessions. Bad input raises ConfigError before anything is written."""
    if request.all_platforms and request.platform is not None:
        raise ConfigError("--all-platforms and --platform exclude each other")
    destination = request.destination
    async with AsyncExitStack() as stack:
        source = await stack.enter_async_context(_opened(request.source, store, reading=True,
                                                         verify=request.src_tls_verify))
        target = await stack.enter_async_context(_opened(destination, store, reading=False,
                                                         verify=request.dest_tls_verify))
        manifest, chosen = await _source_manifest(source, request)
        if destination.digest is not None and destination.digest != manifest.digest:
            raise ConfigError(f"{destination.text}: the image copied is {manifest.digest}, not "
                              f"{destination.digest}")
        if target.adapter is not None:
            await target.adapter.prepare_for_push([target.repository])
        result = await _transfer(source, target, manifest, store)
        result.platform = str(chosen) if chosen is not None else None
        if result.status in ("copied", "skipped"):
            if destination.is_layout and destination.reference is None:
                assert isinstance(target.client, OciLayoutClient)
                await target.client.add_untagged(target.repository, manifest)
            if target.archive is not None:
                assert isinstance(target.client, OciLayoutClient)
                await target.client.keep_only(target.repository, manifest.digest)
                await asyncio.to_thread(write_archive, target.client.root, target.archive)
                await asyncio.to_thread(remove_layout, target.client.root)
    result.source, result.destination = request.source.text, destination.text
    return result


async def _transfer(source: _Side, target: _Side, manifest: Manifest, store: Any | None) -> CopyResult:
    ref = target.location.reference or manifest.digest
    spec = TransferSpec(source_repository=source.repository, target_repository=target.repository,
                        tags=[TagPlan(tag=ref, digest=manifest.digest, manifest=manifest)], override=True)
    sessions = UploadSessions(target.client.endpoint.url, store)
    blobs = BlobCopier(source.client, target.client, mount_probe=target.supports_mount, sessions=sessions)
    attempt = 0
    while True:
        attempt += 1
        outcome = (await transfer_repository(source.client, target.client, spec, blobs)).tags[0]
        if outcome.status != "failed" or not outcome.transient or attempt > COPY_RETRIES:
            break
        await asyncio.sleep(COPY_BACKOFF_SECONDS * 2 ** (attempt - 1))
    return CopyResult(source="", destination="", status=outcome.status, digest=manifest.digest,
                      media_type=manifest.media_type, bytes=outcome.bytes, reason=outcome.reason,
                      attempts=attempt)


async def _source_manifest(source: _Side, request: CopyRequest) -> tuple[Manifest, PlatformChoice | None]:
    """The manifest to copy: the one named, or the child of an index for the chosen platform."""
    ref = source.location.reference
    if ref is None:
        assert isinstance(source.client, OciLayoutClient)
        ref = await source.client.only_manifest(source.repository)
    manifest = await source.client.get_manifest(source.repository, ref)
    if not manifest.is_index or request.all_platforms:
        return manifest, None
    wanted = request.platform or PlatformChoice.of_this_machine()
    child = next((c for c in manifest.children if wanted.matches(c)), None)
    if child is None:
        offered = ", ".join(sorted({platform_text(c) for c in manifest.children})) or "none"
        raise ConfigError(f"{source.location.text} has no image for {wanted} (it has: {offered}); "
                          "name one with --platform, or copy all with --all-platforms")
    return await source.client.get_manifest(source.repository, child.digest), wanted


@asynccontextmanager
async def _opened(location: ImageLocation, store: Any | None, *, reading: bool,
                  verify: bool) -> AsyncIterator[_Side]:
    if location.transport == "docker":
        adapter = await _registry_adapter(location.host, store, verify)
        try:
            yield _Side(location, adapter.client, location.repository, adapter,
                        supports_mount=adapter.info.supports_mount)
        finally:
            await adapter.aclose()
        return
    assert location.path is not None
    if location.transport == "oci":
        if reading and not location.path.is_dir():
            raise ConfigError(f"{location.text}: {location.path} is not a directory")
        yield _Side(location, OciLayoutClient.for_directory(location.path), "layout")
        return
    if reading:
        with tempfile.TemporaryDirectory(prefix="regflow-oci-archive-") as scratch:
            await asyncio.to_thread(extract_archive, location.path, Path(scratch))
            yield _Side(location, OciLayoutClient.for_directory(Path(scratch)), "layout")
        return
    if not location.path.parent.is_dir():
        raise ConfigError(f"{location.text}: {location.path.parent} is not a directory")
    # Written once the copy succeeded; a broken copy leaves the layout to continue from.
    building = partial_layout(location.path)
    yield _Side(location, OciLayoutClient.for_directory(building), "layout", archive=location.path)


async def _registry_adapter(host: str, store: Any | None, verify: bool) -> Adapter:
    """The adapter of the store's registry on ``host`` (its type, URL and credential), else an
    anonymous one: Docker Hub's for its hosts, else a plain distribution registry over HTTPS,
    or, with verification off, HTTPS falling back to HTTP as skopeo does."""
    known = _store_registry(host, store)
    if known is not None:
        name, type_ = known
        endpoint = store.endpoint(name)  # type: ignore[union-attr]
        if not verify:
            endpoint = endpoint.model_copy(update={"insecure": True, "ca_certificate": None})
        return create_adapter(type_, endpoint)
    if host.lower() in DOCKER_HUB_HOSTS:
        hub = Endpoint(url=f"https://{DEFAULT_REGISTRY}", insecure=not verify)
        return create_adapter(DOCKER_HUB_TYPE, hub)
    endpoint = Endpoint(url=f"https://{host}", insecure=not verify)
    if not verify and not await _speaks_https(endpoint):
        endpoint = Endpoint(url=f"http://{host}", insecure=True)
    return create_adapter("docker-registry", endpoint)


def _store_registry(host: str, store: Any | None) -> tuple[str, str] | None:
    """(name, type) of the store's registry whose URL has ``host``: one without a path first."""
    if store is None:
        return None
    matches = [r for r in store.registries()
               if r.type not in DIRECTORY_TYPES and urlsplit(r.url).netloc.lower() == host.lower()]
    matches.sort(key=lambda r: bool(urlsplit(r.url).path.strip("/")))
    return (matches[0].name, matches[0].type) if matches else None


async def _speaks_https(endpoint: Endpoint) -> bool:
    client = DistributionClient(endpoint)
    try:
        await client.ping()
    except TransportError:
        return False
    except ReplicationError:
        pass  # an answer, even an error, came over HTTPS
    finally:
        await client.aclose()
    return True
