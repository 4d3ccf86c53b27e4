"""ChartMuseum as a read-only OCI source: its Helm charts replicate into any OCI registry as the
OCI charts ``helm push`` would have made of them (harbor #18098; Harbor never did this).

    repository  the chart name, from ChartMuseum's listing (GET /api[/<tenant>]/charts)
    tag         the chart version, '+' written '_' as Helm does for OCI tags
    manifest    made from the listing entry (adapters/helm.py): config = Chart.yaml as JSON,
                layers = the .tgz (digest from ChartMuseum's index) and the .tgz.prov if it has one
    blob        the config from memory; the files streamed from <repo>/charts/, checked against
                their digests on the way

The registry URL is the Helm repository URL, what ``helm repo add`` takes: ``http://cm:8080`` for
a single-tenant server, ``http://cm:8080/org/repo`` for a multitenant one (its API then lives under
``/api/org/repo/charts``). Basic credentials are sent to that host and no other.

The client answers what a replication asks of a source (catalog, list_tags, head_manifest,
get_manifest, open_blob) from one listing per run, and refuses every write.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterable, AsyncIterator, Generator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Final, TypeVar
from urllib.parse import quote, unquote, urlsplit

import httpx
from pydantic import SecretStr, TypeAdapter, ValidationError

from adapters.base import AdapterInfo
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
    AnswerTooLargeError,
    ConfigError,
    ContentError,
    DigestMismatchError,
    InvalidReferenceError,
    NotFoundError,
)
from adapters.helm import ChartArtifact, ChartFile, ChartMetadata, chart_artifact, oci_tag
from adapters.native import NativeAdapter
from adapters.oci import OCI_MANIFEST, Digest, DigestVerifier, Manifest, parse_manifest

# ChartMuseum answers the listing as one JSON document, about 1 KiB per chart version: this
# allows some 60,000 versions and still bounds what one answer can make us hold.
MAX_LISTING_BYTES: Final = 64 * 1024 * 1024
# ChartMuseum's own upload limit defaults to 20 MiB (--max-upload-size); five times that leaves
# room for servers that raised it and still stops a runaway download.
MAX_CHART_BYTES: Final = 100 * 1024 * 1024
# A provenance file is Chart.yaml, one checksum and a PGP signature: a few KiB.
MAX_PROV_BYTES: Final = 1024 * 1024

_PROV_SUFFIX: Final = ".prov"
T = TypeVar("T")


class ChartEntry(ChartMetadata):
    """One chart version in ChartMuseum's listing (Helm's ``repo.ChartVersion``)."""

    urls: tuple[str, ...] = ()
    created: str = ""
    digest: str = ""  # sha256 of the .tgz, hex without the algorithm
    removed: bool = False


_LISTING: Final = TypeAdapter(dict[str, list[ChartEntry]])
_VERSIONS: Final = TypeAdapter(list[ChartEntry])


@dataclass(frozen=True)
class _BlobSource:
    size: int
    path: str | None = None  # on ChartMuseum; None for the config, which lives in memory
    data: bytes = b""


class ChartMuseumClient(DistributionClient):
    """The distribution verbs of a source, answered from ChartMuseum's API and chart files."""

    def __init__(self, endpoint: Endpoint, *, transport: httpx.AsyncBaseTransport | None = None) -> None:
        super().__init__(endpoint, transport=transport)
        own_host = httpx.URL(endpoint.url).netloc.decode()
        self._http.auth = _OwnHostBasic(own_host, endpoint.username, endpoint.password)
        tenant = endpoint.prefix  # "" or "/org/repo"
        self._api = f"/api{tenant}/charts"
        self._files = f"{tenant}/charts"
        self._listed = False
        self._charts: dict[str, list[ChartEntry]] = {}
        self._built: dict[tuple[str, str], ChartArtifact] = {}  # (chart, version)
        self._manifests: dict[tuple[str, Digest], ChartArtifact] = {}
        self._blobs: dict[tuple[str, Digest], _BlobSource] = {}
        self._locks: dict[object, asyncio.Lock] = {}

    def __repr__(self) -> str:
        return f"ChartMuseumClient({self.endpoint.url!r})"

    # -- what a source answers ---------------------------------------------------------------

    async def ping(self) -> int:
        await self._send("GET", "/health", scopes=(), ok=(200,))
        return 200

    async def check_credentials(self) -> None:
        # ChartMuseum guards its API, not /health; one small page of the listing shows whether
        # it takes our credentials (servers without pagination answer the whole listing).
        await self._json(f"{self._api}?offset=0&limit=1", MAX_LISTING_BYTES, "chart listing")

    async def catalog(self, page_size: int = CATALOG_PAGE_SIZE) -> AsyncIterator[str]:
        # page_size is the distribution signature's; the listing comes whole, and once.
        for name in sorted(await self._all_charts()):
            yield name

    async def list_tags(self, repository: str) -> list[str]:
        return [oci_tag(e.version) for e in await self._versions(repository)]

    async def head_manifest(self, repository: str, ref: str) -> ManifestHead | None:
        try:
            artifact = await self._artifact(repository, ref)
        except NotFoundError:
            return None
        return ManifestHead(artifact.digest, OCI_MANIFEST, len(artifact.manifest))

    async def get_manifest(self, repository: str, ref: str) -> Manifest:
        artifact = await self._artifact(repository, ref)
        return parse_manifest(artifact.manifest, OCI_MANIFEST, expected_digest=artifact.digest)

    @asynccontextmanager
    async def open_blob(self, repository: str, digest: Digest, offset: int = 0) -> AsyncIterator[BlobStream]:
        source = await self._blob_source(repository, digest)
        if source.path is None:
            yield _MemoryStream(source.data, offset)
            return
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        response = await self._send("GET", source.path, scopes=(), ok=(200, 206), stream=True,
                                    headers=headers)
        try:
            # ChartMuseum ignores Range: a 200 holds the whole file and the stream skips ahead.
            skip = offset if response.status_code == 200 else 0
            yield _CheckedStream(response, source.size, skip, digest, offset)
        finally:
            await response.aclose()

    # -- writes: never -----------------------------------------------------------------------

    def _read_only(self) -> ConfigError:
        return ConfigError(f"ChartMuseum at {self.host} is a read-only source; replicate its charts "
                           "into an OCI registry instead", field="dest_registry")

    async def put_manifest(self, repository: str, ref: str, manifest: Manifest) -> Digest:
        raise self._read_only()

    async def delete_manifest(self, repository: str, digest: Digest) -> bool:
        raise self._read_only()

    async def blob_exists(self, repository: str, digest: Digest) -> int | None:
        raise self._read_only()  # asked only of targets

    async def start_upload(self, repository: str, *, mount: Digest | None = None,
                           mount_from: str | None = None) -> str | None:
        raise self._read_only()

    async def put_blob(self, repository: str, location: str, digest: Digest, size: int,
                       body: AsyncIterable[bytes] | bytes) -> None:
        raise self._read_only()

    async def patch_chunk(self, repository: str, location: str, offset: int, length: int,
                          body: AsyncIterable[bytes] | bytes) -> str:
        raise self._read_only()

    async def upload_status(self, repository: str, location: str) -> UploadStatus:
        raise self._read_only()

    async def complete_upload(self, repository: str, location: str, digest: Digest) -> None:
        raise self._read_only()

    async def cancel_upload(self, repository: str, location: str) -> None:
        raise self._read_only()

    # -- the listing -------------------------------------------------------------------------

    async def _all_charts(self) -> dict[str, list[ChartEntry]]:
        """Every chart and its versions: one request per run, whatever asks afterwards."""
        async with self._lock("listing"):
            if not self._listed:
                listing = _validated(_LISTING, await self._json(self._api, MAX_LISTING_BYTES,
                                                                "chart listing"), self._api)
                self._charts = {name: live for name, entries in listing.items()
                                if (live := [e for e in entries if not e.removed])}
                self._listed = True
        return self._charts

    async def _versions(self, chart: str) -> list[ChartEntry]:
        """One chart's versions: from the whole listing when a run read it, else one request
        (a policy naming its charts never downloads the listing of all of them)."""
        if not self._listed and chart not in self._charts:
            path = f"{self._api}/{quote(chart, safe='')}"
            entries = _validated(_VERSIONS, await self._json(path, MAX_LISTING_BYTES, "chart versions"),
                                 path)
            self._charts[chart] = [e for e in entries if not e.removed]
        versions = self._charts.get(chart)
        if not versions:
            raise self._not_found(chart)
        return versions

    # -- manifests, made from the listing --------------------------------------------------------

    async def _artifact(self, chart: str, ref: str) -> ChartArtifact:
        if ref.startswith(("sha256:", "sha512:")):
            try:
                digest = Digest(ref)
            except InvalidReferenceError:
                raise self._not_found(chart, ref) from None
            if (chart, digest) not in self._manifests:
                # Asked by digest before by tag (a retry in a fresh process): build them all.
                for entry in await self._versions(chart):
                    await self._build(chart, entry)
            found = self._manifests.get((chart, digest))
            if found is None:
                raise self._not_found(chart, ref)
            return found
        for entry in await self._versions(chart):
            if oci_tag(entry.version) == ref:
                return await self._build(chart, entry)
        raise self._not_found(chart, ref)

    async def _build(self, chart: str, entry: ChartEntry) -> ChartArtifact:
        key = (chart, entry.version)
        async with self._lock(key):
            built = self._built.get(key)
            if built is not None:
                return built
            chart_path = self._chart_path(chart, entry)
            digest = _index_digest(chart, entry)
            chart_file = ChartFile(digest=digest, size=await self._chart_size(chart_path, digest))
            prov = await self._provenance(chart_path + _PROV_SUFFIX)
            artifact = chart_artifact(entry, chart_file, prov, created=_created(entry))
            self._blobs[(chart, artifact.config_digest)] = _BlobSource(len(artifact.config),
                                                                       data=artifact.config)
            self._blobs[(chart, chart_file.digest)] = _BlobSource(chart_file.size, chart_path)
            if prov is not None:
                self._blobs[(chart, prov.digest)] = _BlobSource(prov.size, chart_path + _PROV_SUFFIX)
            self._manifests[(chart, artifact.digest)] = artifact
            self._built[key] = artifact
            return artifact

    def _chart_path(self, chart: str, entry: ChartEntry) -> str:
        """Where ChartMuseum serves the .tgz: the file its index names, from its own /charts/
        route (an index written with --chart-url may point at another host; we do not follow)."""
        name = unquote(urlsplit(entry.urls[0]).path.rpartition("/")[2]) if entry.urls else ""
        if not name.endswith(".tgz") or name.startswith("."):
            name = f"{entry.name or chart}-{entry.version}.tgz"
        return f"{self._files}/{quote(name, safe='')}"

    async def _chart_size(self, path: str, digest: Digest) -> int:
        """The .tgz's size. ChartMuseum sends Content-Length only for files under 2 KiB (Go
        chunks the rest), so a chunked answer is read through, and checked while we have it."""
        response = await self._send("GET", path, scopes=(), ok=(200,), stream=True)
        try:
            length = response.headers.get("Content-Length", "")
            if length.isdigit():
                if int(length) > MAX_CHART_BYTES:
                    raise ContentError(f"chart {path} is {length} bytes, over {MAX_CHART_BYTES}")
                return int(length)  # checked against the digest when it is streamed
            verifier = DigestVerifier(digest, what=f"chart {path}")
            async for chunk in BlobStream(response, None, 0).chunks():
                verifier.update(chunk)
                if verifier.size > MAX_CHART_BYTES:
                    raise ContentError(f"chart {path} is over {MAX_CHART_BYTES} bytes")
            verifier.verify()
            return verifier.size
        finally:
            await response.aclose()

    async def _provenance(self, path: str) -> ChartFile | None:
        """The .prov's digest and size, or None: unsigned charts have none and ChartMuseum
        answers 404."""
        try:
            data = await self._capped(path, MAX_PROV_BYTES, f"provenance file {path}")
        except NotFoundError:
            return None
        return ChartFile(digest=Digest.of(data), size=len(data))

    async def _blob_source(self, chart: str, digest: Digest) -> _BlobSource:
        source = self._blobs.get((chart, digest))
        if source is None:
            # Blobs are known once their chart's manifest is: make them all, then look again.
            for entry in await self._versions(chart):
                await self._build(chart, entry)
            source = self._blobs.get((chart, digest))
        if source is None:
            raise self._not_found(chart, digest)
        return source

    # -- plumbing ----------------------------------------------------------------------------

    async def _json(self, path: str, limit: int, what: str) -> bytes:
        return await self._capped(path, limit, f"{what} of {self.host}")

    async def _capped(self, path: str, limit: int, what: str) -> bytes:
        """A GET's body, read up to ``limit`` and within the non-blob deadline (the client's
        ``_exchange``), refused past it with this adapter's wording."""
        try:
            _, body = await self._exchange("GET", path, scopes=(), ok=(200,), limit=limit)
        except AnswerTooLargeError:
            raise AnswerTooLargeError(f"{what} is over {limit} bytes") from None
        return body

    def _lock(self, key: object) -> asyncio.Lock:
        return self._locks.setdefault(key, asyncio.Lock())

    def _not_found(self, chart: str, ref: str = "") -> NotFoundError:
        what = f"{chart}:{ref}" if ref else chart
        return NotFoundError(f"chart {what} is not in ChartMuseum {self.host}", status=404, method="GET",
                             url=f"{self.host}{self._api}/{chart}")


class ChartMuseumAdapter(NativeAdapter):
    info = AdapterInfo(
        type="chartmuseum",
        description="ChartMuseum Helm chart repository, read-only: its charts land on OCI "
                    "registries as OCI charts",
        resource_types=("chart",),
        filters=("name", "tag"),
        triggers=("manual", "scheduled"),
        can_be_target=False,
    )
    # Listing, tags and reads go through the native adapter's code to this virtual registry.
    client_class = ChartMuseumClient

    async def probe(self) -> None:
        await self.client.ping()
        await self.client.check_credentials()

    async def prepare_for_push(self, repositories: Sequence[str]) -> None:
        raise ConfigError("registry type 'chartmuseum' can only be a source (src_registry): "
                          "ChartMuseum charts replicate into OCI registries", field="dest_registry")


class _OwnHostBasic(httpx.Auth):
    """Basic credentials on every request to ChartMuseum's host and on none elsewhere. Sent up
    front: ChartMuseum has no challenge worth a round trip, and following one (a bearer realm on
    another host) would hand our credentials to it."""

    def __init__(self, host: str, username: str | None, password: SecretStr | None) -> None:
        self._host = host
        self._username = username
        self._password = password

    def __repr__(self) -> str:
        return f"_OwnHostBasic(host={self._host!r}, user={self._username!r})"

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if request.url.netloc.decode() == self._host and self._username and self._password is not None:
            raw = f"{self._username}:{self._password.get_secret_value()}".encode()
            request.headers["Authorization"] = "Basic " + base64.b64encode(raw).decode()
        else:
            request.headers.pop("Authorization", None)
        yield request


class _MemoryStream(BlobStream):
    """A blob we made ourselves (the config): served from memory, no request."""

    def __init__(self, data: bytes, offset: int) -> None:  # no response to hold
        self.size = len(data)
        self._data = data[offset:]

    async def chunks(self, chunk_size: int = STREAM_CHUNK_BYTES) -> AsyncIterator[bytes]:
        for start in range(0, len(self._data), chunk_size):
            yield self._data[start:start + chunk_size]


class _CheckedStream(BlobStream):
    """A chart file as it streams: never more bytes than planned, and from the start, the digest
    ChartMuseum's index (or our own reading of the .prov) gave it. A file changed since the plan
    fails with DigestMismatchError before its last byte is handed on."""

    def __init__(self, response: httpx.Response, size: int, skip: int, digest: Digest, offset: int) -> None:
        super().__init__(response, size, skip)
        self._left = size - offset
        # A resumed read starts mid-file; whoever hashed the first part checks the whole.
        self._verifier = DigestVerifier(digest, what=f"chart file {digest}") if offset == 0 else None

    async def chunks(self, chunk_size: int = STREAM_CHUNK_BYTES) -> AsyncIterator[bytes]:
        async for chunk in super().chunks(chunk_size):
            self._left -= len(chunk)
            if self._left < 0:
                expected = self._verifier.expected if self._verifier else "the planned size"
                raise DigestMismatchError(str(expected), f"more than {self.size} bytes",
                                          what="chart file")
            if self._verifier is not None:
                self._verifier.update(chunk)
            yield chunk
        if self._verifier is not None:
            self._verifier.verify()


def _validated(adapter: TypeAdapter[T], raw: bytes, path: str) -> T:
    try:
        return adapter.validate_json(raw)
    except ValidationError as exc:
        error = exc.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(p) for p in error["loc"])
        raise ContentError(f"{path}: not a ChartMuseum answer ({where}: {error['msg']})"[:300]) from None


def _index_digest(chart: str, entry: ChartEntry) -> Digest:
    try:
        return Digest(f"sha256:{entry.digest}")
    except InvalidReferenceError:
        raise ContentError(f"ChartMuseum lists {chart} {entry.version} without a valid sha256 digest "
                           f"({entry.digest[:80]!r})") from None


def _created(entry: ChartEntry) -> datetime | None:
    """The chart version's creation time from the index; Go writes an unset one as year 1."""
    try:
        moment = datetime.fromisoformat(entry.created.strip())
    except ValueError:
        return None
    return moment if moment.year > 1 else None
