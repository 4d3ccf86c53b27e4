"""Deterministic image corpus for tests: build images as raw bytes, push them over the
distribution HTTP API (sync httpx), and keep a record of exactly what was pushed.

Every byte is a function of the seed and of the image's name/options, never of push order, so
two registries filled the same way hold identical digests. Layers are real gzip'd tars holding
one seeded random file; a pool of *base* layers (by index and architecture) is shared by every
image that asks for it, across repositories and across Docker/OCI kinds.

    builder = CorpusBuilder(reg.url, auth=reg.httpx_auth())
    pushed = builder.push("team/app", ["1.0", "latest"], ImageKind.OCI_INDEX)
    pushed.digest, pushed.media_type, pushed.manifest, pushed.blobs, pushed.children
    builder.corpus.repos["team/app"]["1.0"] is pushed
    corrupt_blob(reg, next(iter(pushed.blobs)))   # bytes on disk no longer match the digest
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import random
import tarfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

import httpx

MT_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MT_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MT_DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
MT_DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
MT_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MT_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
ACCEPT_ALL = ", ".join([MT_OCI_INDEX, MT_OCI_MANIFEST, MT_DOCKER_LIST, MT_DOCKER_MANIFEST])

EPOCH = 1704067200  # 2024-01-01T00:00:00Z
PLATFORMS: tuple[tuple[str, str | None], ...] = (("amd64", None), ("arm64", "v8"))


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _rng(seed: int, identity: str) -> random.Random:
    h = hashlib.sha256(f"{seed}\0{identity}".encode()).digest()
    return random.Random(int.from_bytes(h[:16], "big"))


class ImageKind(StrEnum):
    DOCKER = "docker"  # Docker schema2 image manifest
    OCI = "oci"  # OCI image manifest
    DOCKER_LIST = "docker-list"  # Docker manifest list: linux/amd64 + linux/arm64 schema2 images
    OCI_INDEX = "oci-index"  # OCI image index: linux/amd64 + linux/arm64 OCI images

    @property
    def is_index(self) -> bool:
        return self in (ImageKind.DOCKER_LIST, ImageKind.OCI_INDEX)

    @property
    def is_oci(self) -> bool:
        return self in (ImageKind.OCI, ImageKind.OCI_INDEX)


@dataclass(frozen=True)
class Blob:
    data: bytes = field(repr=False)
    media_type: str
    diff_id: str | None = None  # sha256 of the uncompressed tar, for layers
    digest: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "digest", sha256_digest(self.data))

    @property
    def size(self) -> int:
        return len(self.data)

    def descriptor(self) -> dict[str, Any]:
        return {"mediaType": self.media_type, "size": self.size, "digest": self.digest}


@dataclass(frozen=True)
class Manifest:
    data: bytes = field(repr=False)
    media_type: str
    digest: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "digest", sha256_digest(self.data))

    @property
    def size(self) -> int:
        return len(self.data)

    def json(self) -> Any:
        return json.loads(self.data)


@dataclass(frozen=True)
class Image:
    """A built (not necessarily pushed) image: a single-platform manifest with its config and
    layers, or an index/list whose ``children`` are single-platform images."""

    kind: ImageKind
    manifest: Manifest
    config: Blob | None = None
    layers: tuple[Blob, ...] = ()
    children: tuple[Image, ...] = ()
    platform: dict[str, str] | None = None

    @property
    def digest(self) -> str:
        return self.manifest.digest

    @property
    def media_type(self) -> str:
        return self.manifest.media_type

    def blobs(self) -> dict[str, Blob]:
        """Every blob (configs and layers, children's included) by digest, in push order."""
        out: dict[str, Blob] = {}
        for child in self.children:
            out.update(child.blobs())
        for b in self.layers:
            out.setdefault(b.digest, b)
        if self.config is not None:
            out.setdefault(self.config.digest, self.config)
        return out

    def manifests(self) -> list[Manifest]:
        """Children first, then this manifest (the order they must be pushed in)."""
        return [c.manifest for c in self.children] + [self.manifest]


# --------------------------------------------------------------------------- building
def make_layer(seed: int, identity: str, payload_size: int, *, oci: bool, gzip_level: int = 1) -> Blob:
    """A gzip'd tar with one file of ``payload_size`` seeded random bytes; deterministic."""
    payload = _rng(seed, "layer\0" + identity).randbytes(payload_size)
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in identity)[:80]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        info = tarfile.TarInfo(f"opt/{safe}/data.bin")
        info.size, info.mtime, info.mode, info.uid, info.gid = len(payload), EPOCH, 0o644, 0, 0
        info.uname = info.gname = "root"
        tf.addfile(info, io.BytesIO(payload))
    tar = buf.getvalue()
    gz = gzip.compress(tar, compresslevel=gzip_level, mtime=0)
    return Blob(gz, MT_OCI_LAYER if oci else MT_DOCKER_LAYER, diff_id=sha256_digest(tar))


def make_config(
    name: str, arch: str, variant: str | None, layers: Sequence[Blob], *, oci: bool, created: int = EPOCH
) -> Blob:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(created))
    cfg: dict[str, Any] = {
        "architecture": arch,
        "os": "linux",
        "created": stamp,
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", f"IMAGE={name}"],
            "Cmd": ["/bin/sh", "-c", f"echo {name}"],
            "Labels": {"regflow.test.image": name},
        },
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
        "history": [{"created": stamp, "created_by": f"ADD layer {i}"} for i in range(len(layers))],
    }
    if variant:
        cfg["variant"] = variant
    data = json.dumps(cfg, sort_keys=True, separators=(",", ":")).encode()
    return Blob(data, MT_OCI_CONFIG if oci else MT_DOCKER_CONFIG)


def make_image_manifest(
    config: Blob, layers: Sequence[Blob], *, oci: bool, annotations: dict[str, str] | None = None
) -> Manifest:
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": MT_OCI_MANIFEST if oci else MT_DOCKER_MANIFEST,
        "config": config.descriptor(),
        "layers": [layer.descriptor() for layer in layers],
    }
    if oci and annotations:
        doc["annotations"] = annotations
    # indent=3: deliberately not the canonical form, so re-serialising changes the digest.
    return Manifest(json.dumps(doc, indent=3).encode(), doc["mediaType"])


def make_index(
    children: Sequence[Image], *, oci: bool, annotations: dict[str, str] | None = None
) -> Manifest:
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": MT_OCI_INDEX if oci else MT_DOCKER_LIST,
        "manifests": [
            {"mediaType": c.media_type, "size": c.manifest.size, "digest": c.digest, "platform": c.platform}
            for c in children
        ],
    }
    if oci and annotations:
        doc["annotations"] = annotations
    return Manifest(json.dumps(doc, indent=3).encode(), doc["mediaType"])


class ImageFactory:
    """Builds images deterministically from ``seed`` and each image's ``name``.

    An image has ``layers`` own layers (``layer_size`` bytes of payload each, or ``layer_sizes``)
    on top of base layer ``base`` (``base_size`` bytes; ``None`` = no base layer). Base layer N
    of an architecture is the same blob in every image that uses it.
    """

    def __init__(
        self,
        seed: int = 1,
        *,
        layers: int = 2,
        layer_size: int = 4096,
        base_size: int = 8192,
        gzip_level: int = 1,
    ) -> None:
        self.seed = seed
        self.layers = layers
        self.layer_size = layer_size
        self.base_size = base_size
        self.gzip_level = gzip_level
        self._cache: dict[tuple[str, int, bool], Blob] = {}

    def layer(self, identity: str, payload_size: int, *, oci: bool) -> Blob:
        key = (identity, payload_size, oci)
        blob = self._cache.get(key)
        if blob is None:
            blob = make_layer(self.seed, identity, payload_size, oci=oci, gzip_level=self.gzip_level)
            self._cache[key] = blob
        return blob

    def base_layer(
        self, index: int = 0, arch: str = "amd64", *, oci: bool = False, size: int | None = None
    ) -> Blob:
        return self.layer(f"base/{arch}/{index}", self.base_size if size is None else size, oci=oci)

    def single(
        self,
        name: str,
        *,
        oci: bool,
        arch: str = "amd64",
        variant: str | None = None,
        layers: int | None = None,
        layer_sizes: Sequence[int] | None = None,
        base: int | None = 0,
        base_size: int | None = None,
        created: int = EPOCH,
        annotations: dict[str, str] | None = None,
    ) -> Image:
        """One single-platform image."""
        sizes = (
            list(layer_sizes)
            if layer_sizes is not None
            else [self.layer_size] * (self.layers if layers is None else layers)
        )
        blobs: list[Blob] = []
        if base is not None:
            blobs.append(self.base_layer(base, arch, oci=oci, size=base_size))
        blobs += [self.layer(f"{name}/{arch}/{i}", size, oci=oci) for i, size in enumerate(sizes)]
        config = make_config(name, arch, variant, blobs, oci=oci, created=created)
        manifest = make_image_manifest(config, blobs, oci=oci, annotations=annotations)
        platform = {"architecture": arch, "os": "linux"}
        if variant:
            platform["variant"] = variant
        kind = ImageKind.OCI if oci else ImageKind.DOCKER
        return Image(kind, manifest, config=config, layers=tuple(blobs), platform=platform)

    def image(
        self,
        kind: ImageKind | str,
        name: str,
        *,
        platforms: Sequence[tuple[str, str | None]] = PLATFORMS,
        annotations: dict[str, str] | None = None,
        **single_opts: Any,
    ) -> Image:
        """An image of any kind; indexes/lists get one child per platform (default amd64, arm64/v8).
        ``single_opts`` go to :meth:`single` (layers, layer_sizes, base, base_size, created)."""
        kind = ImageKind(kind)
        if not kind.is_index:
            return self.single(name, oci=kind.is_oci, annotations=annotations, **single_opts)
        children = tuple(
            self.single(name, oci=kind.is_oci, arch=arch, variant=variant, **single_opts)
            for arch, variant in platforms
        )
        return Image(kind, make_index(children, oci=kind.is_oci, annotations=annotations), children=children)


# --------------------------------------------------------------------------- pushing
class PushError(RuntimeError):
    def __init__(self, message: str, response: httpx.Response | None = None) -> None:
        super().__init__(message)
        self.response = response
        self.status_code = response.status_code if response is not None else None


def _check(resp: httpx.Response, *ok: int) -> httpx.Response:
    if resp.status_code not in ok:
        raise PushError(
            f"{resp.request.method} {resp.request.url.path}: HTTP {resp.status_code} {resp.text[:300]!r}",
            resp,
        )
    return resp


class RegistryClient:
    """Just enough of the distribution API, over a sync ``httpx.Client``, for planting and checking."""

    def __init__(self, url: str, auth: httpx.Auth | None = None, *, timeout: float = 60.0) -> None:
        self.url = url.rstrip("/")
        self.http = httpx.Client(base_url=self.url, auth=auth, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def push_blob(self, repository: str, data: bytes, *, digest: str | None = None) -> str:
        """POST an upload, then one monolithic ``PUT ?digest=``. A wrong ``digest`` makes the
        registry refuse (PushError, 400 DIGEST_INVALID)."""
        digest = digest or sha256_digest(data)
        resp = _check(self.http.post(f"/v2/{repository}/blobs/uploads/"), 202)
        # keep the Location's own query (_state=...) and add digest=
        location = resp.url.join(resp.headers["Location"]).copy_merge_params({"digest": digest})
        _check(
            self.http.put(
                location,
                content=data,
                headers={"Content-Type": "application/octet-stream"},
            ),
            201,
        )
        return digest

    def push_manifest(self, repository: str, reference: str, data: bytes, media_type: str) -> str:
        """PUT the exact bytes with ``Content-Type: media_type``; returns their sha256 digest."""
        resp = _check(
            self.http.put(
                f"/v2/{repository}/manifests/{reference}", content=data, headers={"Content-Type": media_type}
            ),
            201,
        )
        digest = sha256_digest(data)
        got = resp.headers.get("Docker-Content-Digest")
        if got is not None and got != digest:
            raise PushError(f"{repository}:{reference}: registry says {got}, bytes hash to {digest}", resp)
        return digest

    def get_manifest(self, repository: str, reference: str, accept: str = ACCEPT_ALL) -> httpx.Response:
        return _check(
            self.http.get(f"/v2/{repository}/manifests/{reference}", headers={"Accept": accept}), 200
        )

    def get_blob(self, repository: str, digest: str) -> bytes:
        return _check(self.http.get(f"/v2/{repository}/blobs/{digest}", follow_redirects=True), 200).content

    def blob_exists(self, repository: str, digest: str) -> bool:
        return _check(self.http.head(f"/v2/{repository}/blobs/{digest}"), 200, 404).status_code == 200

    def manifest_digest(self, repository: str, reference: str) -> str | None:
        """``Docker-Content-Digest`` of a HEAD with every manifest type accepted; None if 404."""
        resp = _check(
            self.http.head(f"/v2/{repository}/manifests/{reference}", headers={"Accept": ACCEPT_ALL}),
            200,
            404,
        )
        return resp.headers.get("Docker-Content-Digest") if resp.status_code == 200 else None

    def delete_manifest(self, repository: str, digest: str) -> None:
        _check(self.http.delete(f"/v2/{repository}/manifests/{digest}"), 202)

    def tags(self, repository: str) -> list[str]:
        resp = _check(self.http.get(f"/v2/{repository}/tags/list"), 200, 404)
        return sorted(resp.json().get("tags") or []) if resp.status_code == 200 else []

    def catalog(self) -> list[str]:
        return sorted(_check(self.http.get("/v2/_catalog", params={"n": 1000}), 200).json()["repositories"])


@dataclass(frozen=True)
class PushedTag:
    """What one tag was made to point at."""

    repository: str
    tag: str
    digest: str  # sha256 of exactly ``manifest``
    media_type: str
    manifest: bytes = field(repr=False)
    blobs: frozenset[str]  # every blob digest the image needs (children's included)
    manifests: frozenset[str]  # every manifest digest: children and this one
    children: tuple[str, ...]  # child manifest digests of an index/list, in order
    image: Image = field(repr=False)


@dataclass
class Corpus:
    """Record of everything pushed: ``repos[repository][tag] -> PushedTag``, plus contents."""

    repos: dict[str, dict[str, PushedTag]] = field(default_factory=dict)
    blobs: dict[str, bytes] = field(default_factory=dict)  # digest -> bytes
    manifests: dict[str, tuple[bytes, str]] = field(default_factory=dict)  # digest -> (bytes, media type)

    def tag(self, repository: str, tag: str) -> PushedTag:
        return self.repos[repository][tag]

    def refs(self) -> list[tuple[str, str]]:
        """Every (repository, tag), sorted."""
        return sorted((r, t) for r, tags in self.repos.items() for t in tags)

    def repo_blobs(self, repository: str) -> set[str]:
        return {d for p in self.repos.get(repository, {}).values() for d in p.blobs}

    def repo_manifests(self, repository: str) -> set[str]:
        return {d for p in self.repos.get(repository, {}).values() for d in p.manifests}

    def all_blobs(self) -> set[str]:
        return {d for r in self.repos for d in self.repo_blobs(r)}

    def _add(self, pushed: PushedTag) -> None:
        self.repos.setdefault(pushed.repository, {})[pushed.tag] = pushed
        for d, b in pushed.image.blobs().items():
            self.blobs[d] = b.data
        for m in pushed.image.manifests():
            self.manifests[m.digest] = (m.data, m.media_type)


# Shape of :meth:`CorpusBuilder.push_standard`: repository, kind, and one tuple of tags per image
# (tags in one tuple point at the same manifest). Every image uses base layer 0.
STANDARD_CORPUS: tuple[tuple[str, ImageKind, tuple[tuple[str, ...], ...]], ...] = (
    ("regflow/docker-app", ImageKind.DOCKER, (("1.0",), ("1.1", "latest"))),
    ("regflow/oci-app", ImageKind.OCI, (("1.0", "latest"),)),
    ("regflow/multi-docker", ImageKind.DOCKER_LIST, (("1.0",),)),
    ("regflow/multi-oci", ImageKind.OCI_INDEX, (("1.0",),)),
    ("team-a/svc/api", ImageKind.DOCKER, (("v1",),)),
)


class _HasUrl(Protocol):
    @property
    def url(self) -> str: ...


class CorpusBuilder:
    """Builds images with an :class:`ImageFactory` and pushes them (children before indexes,
    blobs before manifests), recording everything in :attr:`corpus`.

    ``registry`` is a base URL or anything with ``.url`` (a RegistryProcess); ``auth`` an
    ``httpx.Auth`` (``httpx.BasicAuth``, ``ChallengeTokenAuth``; see ``RegistryProcess.httpx_auth()``).
    A blob is uploaded at most once per repository per builder (no HEAD, no mount).
    """

    def __init__(
        self,
        registry: str | _HasUrl,
        *,
        auth: httpx.Auth | None = None,
        seed: int = 1,
        layers: int = 2,
        layer_size: int = 4096,
        base_size: int = 8192,
        factory: ImageFactory | None = None,
    ) -> None:
        url = registry if isinstance(registry, str) else registry.url
        self.factory = factory or ImageFactory(
            seed, layers=layers, layer_size=layer_size, base_size=base_size
        )
        self.client = RegistryClient(url, auth)
        self.corpus = Corpus()
        self._uploaded: set[tuple[str, str]] = set()

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> CorpusBuilder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def push(
        self,
        repository: str,
        tags: str | Sequence[str],
        kind: ImageKind | str = ImageKind.DOCKER,
        *,
        name: str | None = None,
        **image_opts: Any,
    ) -> PushedTag:
        """Build an image named ``name`` (default ``repository:first-tag``) and push it under every tag
        in ``tags``. ``image_opts`` go to :meth:`ImageFactory.image` (layers, layer_sizes, base,
        base_size, created, annotations, platforms). Returns the record of the first tag."""
        tag_list = [tags] if isinstance(tags, str) else list(tags)
        image = self.factory.image(kind, name or f"{repository}:{tag_list[0]}", **image_opts)
        return self.push_image(repository, image, tag_list)

    def push_image(self, repository: str, image: Image, tags: str | Iterable[str]) -> PushedTag:
        tag_list = [tags] if isinstance(tags, str) else list(tags)
        if not tag_list:
            raise ValueError("push_image needs at least one tag")
        for blob in image.blobs().values():
            self._upload(repository, blob)
        for child in image.children:
            self.client.push_manifest(repository, child.digest, child.manifest.data, child.media_type)
        records = []
        for tag in tag_list:
            digest = self.client.push_manifest(repository, tag, image.manifest.data, image.media_type)
            record = PushedTag(
                repository=repository,
                tag=tag,
                digest=digest,
                media_type=image.media_type,
                manifest=image.manifest.data,
                blobs=frozenset(image.blobs()),
                manifests=frozenset(m.digest for m in image.manifests()),
                children=tuple(c.digest for c in image.children),
                image=image,
            )
            self.corpus._add(record)
            records.append(record)
        return records[0]

    def _upload(self, repository: str, blob: Blob) -> None:
        if (repository, blob.digest) in self._uploaded:
            return
        self.client.push_blob(repository, blob.data)
        self._uploaded.add((repository, blob.digest))

    def push_blob(self, repository: str, data: bytes, *, digest: str | None = None) -> str:
        """Push one arbitrary blob (not recorded in the corpus)."""
        return self.client.push_blob(repository, data, digest=digest)

    def push_manifest(self, repository: str, reference: str, data: bytes, media_type: str) -> str:
        """Push one arbitrary manifest (not recorded in the corpus); its blobs must be there already."""
        return self.client.push_manifest(repository, reference, data, media_type)

    def push_standard(self) -> Corpus:
        """Push :data:`STANDARD_CORPUS` (every kind, tags aliasing one image, shared base layer)."""
        for repository, kind, images in STANDARD_CORPUS:
            for i, tags in enumerate(images):
                self.push(repository, tags, kind, created=EPOCH + 86400 * i)
        return self.corpus


# --------------------------------------------------------------------------- storage tampering
class _HasBlobPath(Protocol):
    def blob_data_path(self, digest: str) -> Path: ...


def _data_path(registry: _HasBlobPath | Path | str, digest: str) -> Path:
    if isinstance(registry, (str, Path)):
        hexpart = digest.removeprefix("sha256:")
        return Path(registry) / "docker/registry/v2/blobs/sha256" / hexpart[:2] / hexpart / "data"
    return registry.blob_data_path(digest)


def corrupt_blob(registry: _HasBlobPath | Path | str, digest: str) -> bytes:
    """Overwrite an already-pushed blob's bytes in filesystem storage with other bytes of the same
    length (every byte inverted), so the registry serves content that does not hash to ``digest``.
    ``registry`` is a RegistryProcess or a storage root directory. Returns the new bytes."""
    path = _data_path(registry, digest)
    original = path.read_bytes()
    if not original:
        raise ValueError(f"cannot corrupt empty blob {digest}")
    corrupted = bytes(b ^ 0xFF for b in original)
    path.write_bytes(corrupted)
    return corrupted


def remove_blob_data(registry: _HasBlobPath | Path | str, digest: str) -> None:
    """Delete a blob's bytes from storage behind the registry's back (a lost blob)."""
    _data_path(registry, digest).unlink()
