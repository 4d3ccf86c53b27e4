"""Deterministic synthetic corpora for the replication benchmarks, pushed over the distribution
API with httpx (several repositories at once, cross-repository mounts for shared blobs).

    uv run python -m benchmarks.corpus --shape small --estimate
    uv run python -m benchmarks.corpus --shape small --registry http://127.0.0.1:5101

Same shapes as the skopeo baseline (/work/shared/bench/BASELINE.md), built with our own
generator: every byte is a function of the seed and of the image's identity, never of push
order or parallelism, so two registries filled alike hold identical digests.

Model (as in the baseline):
  * repository i is ``team-<x>/app-<i>``; every ``every``-th is ``team-<x>/svc/api-<i>`` (3 levels)
  * tags ``1.0.0 .. 1.0.<T-1>``; the last one is also tagged ``latest``
  * image = one base layer from a shared pool (chosen per repository) + ``layers`` layers; the
    first ``repo_layers`` of those are shared by all tags of the repository, the rest are the tag's own
  * every ``every``-th repository is multi-arch: each tag is an index/list -> linux/amd64 + linux/arm64
  * even repositories are Docker schema2, odd ones OCI
  * layers are gzip'd tars of seeded random bytes (``tests.support.corpus.make_layer``); the
    ``huge`` shape's single layer is streamed raw random bytes instead (never held in memory)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import ssl
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx

from tests.support.corpus import (
    ACCEPT_ALL,
    EPOCH,
    MT_OCI_LAYER,
    Blob,
    Image,
    ImageKind,
    Manifest,
    make_config,
    make_image_manifest,
    make_index,
    make_layer,
    sha256_digest,
)

KIB = 1024
MIB = 1024 * KIB
# Repositories pushed at once while seeding: the registry, not the pusher, is the limit.
PUSH_WORKERS = 6
# The huge shape's layer is generated and sent in pieces of this size.
STREAM_CHUNK = MIB
PLATFORMS: tuple[tuple[str, str | None], ...] = (("amd64", None), ("arm64", "v8"))


@dataclass(frozen=True)
class Shape:
    """The knobs of one corpus (sizes are tar payload KiB: ``N``, ``LO-HI`` log-uniform, ``A,B,C``)."""

    name: str
    repos: int
    tags: int
    layers: int
    layer_kib: str
    shared_base: int = 4
    base_kib: str = "1024"
    repo_layers: int = 0
    every: int = 5  # every N-th repository is multi-arch, and every N-th is 3 levels deep
    seed: int = 1
    latest: bool = True
    stream_layer_mib: int = 0  # >0: one raw streamed layer of this size instead of tar layers
    base_depth: int = 1  # layers in each shared base: a FROM image of several layers, not one


SHAPES: dict[str, Shape] = {
    s.name: s
    for s in (
        # 3 repositories, one of them 3 levels deep and multi-arch: every code path, in seconds.
        Shape("smoke", repos=3, tags=2, layers=2, layer_kib="16", shared_base=1, base_kib="64",
              every=3, seed=7),
        Shape("small", repos=20, tags=3, layers=3, layer_kib="256", seed=1),
        Shape("medium", repos=50, tags=5, layers=3, layer_kib="16-3072", repo_layers=1,
              shared_base=6, base_kib="8192", seed=2),
        Shape("manysmall", repos=300, tags=2, layers=2, layer_kib="4", base_kib="16", seed=3),
        # Issue 21's corpora the project was not tuned on: a few repositories of big layers, and
        # every image on one of three deep bases (eight shared layers each, like FROM a distro
        # image plus a runtime), so most of the bytes are blobs that every repository mounts.
        Shape("fewbig", repos=4, tags=3, layers=3, layer_kib="2048-32768", repo_layers=1,
              shared_base=2, base_kib="16384", every=4, seed=8),
        Shape("deepbase", repos=40, tags=4, layers=2, layer_kib="32-1024", repo_layers=1,
              shared_base=3, base_kib="256-8192", base_depth=8, seed=6),
        Shape("huge", repos=1, tags=1, layers=0, layer_kib="0", shared_base=0, every=0, seed=4,
              latest=False, stream_layer_mib=1024),
    )
}


def scale_shape(repos: int) -> Shape:
    """``repos`` repositories x 5 tags (+ latest) of tiny images: one 1 KiB layer per repository
    and one shared 1 KiB base, so every tag differs only by its config and manifest."""
    return Shape(f"scale-{repos}", repos=repos, tags=5, layers=1, layer_kib="1", repo_layers=1,
                 shared_base=1, base_kib="1", seed=5)


def _rng(seed: int, identity: str) -> random.Random:
    digest = hashlib.sha256(f"{seed}\0{identity}".encode()).digest()
    return random.Random(int.from_bytes(digest[:16], "big"))


def _pick_kib(spec: str, seed: int, identity: str, position: int) -> int:
    """Payload bytes for one layer from a size spec (seeded per layer identity)."""
    if "," in spec:
        values = [float(x) for x in spec.split(",")]
        kib = values[position % len(values)]
    elif "-" in spec:
        lo, hi = (float(x) for x in spec.split("-", 1))
        kib = math.exp(_rng(seed, "size\0" + identity).uniform(math.log(lo), math.log(hi)))
    else:
        kib = float(spec)
    return max(1, int(kib * KIB))


def repo_name(i: int, n: int, every: int) -> str:
    team = "team-" + chr(ord("a") + i % min(26, max(1, n // 10)))
    return f"{team}/svc/api-{i}" if every and i % every == every - 1 else f"{team}/app-{i}"


# --------------------------------------------------------------------------- plan
@dataclass(frozen=True)
class LayerPlan:
    identity: str
    payload: int


@dataclass(frozen=True)
class ImagePlan:
    arch: str
    variant: str | None
    layers: tuple[LayerPlan, ...]


@dataclass(frozen=True)
class TagPlan:
    tag: str
    created: int
    images: tuple[ImagePlan, ...]


@dataclass(frozen=True)
class RepoPlan:
    name: str
    oci: bool
    multi: bool
    tags: tuple[TagPlan, ...]


def build_plan(shape: Shape) -> list[RepoPlan]:
    """Every image of the corpus, described without content (cheap, deterministic)."""
    plan: list[RepoPlan] = []
    for i in range(shape.repos):
        multi = bool(shape.every) and i % shape.every == shape.every - 1
        base = _rng(shape.seed, f"repo\0{i}").randrange(shape.shared_base) if shape.shared_base else None
        tags = []
        for t in range(shape.tags):
            images = []
            for arch, variant in PLATFORMS if multi else PLATFORMS[:1]:
                layers: list[LayerPlan] = []
                for depth in range(shape.base_depth if base is not None else 0):
                    ident = f"base/{arch}/{base}" + (f"/{depth}" if depth else "")
                    layers.append(LayerPlan(ident, _pick_kib(shape.base_kib, shape.seed, ident, depth)))
                for p in range(shape.layers):
                    ident = f"repo/{i}/{arch}/{p}" if p < shape.repo_layers else f"img/{i}/{t}/{arch}/{p}"
                    layers.append(LayerPlan(ident, _pick_kib(shape.layer_kib, shape.seed, ident, p)))
                images.append(ImagePlan(arch, variant, tuple(layers)))
            tags.append(TagPlan(f"1.0.{t}", EPOCH + 86400 * t, tuple(images)))
        plan.append(RepoPlan(repo_name(i, shape.repos, shape.every), i % 2 == 1, multi, tuple(tags)))
    return plan


@dataclass
class Estimate:
    repos: int
    tags: int
    manifests: int
    layers: int
    layer_bytes: int

    def __str__(self) -> str:
        return (f"repos={self.repos} tags={self.tags} manifests={self.manifests} "
                f"unique layers={self.layers} layer payload={self.layer_bytes / MIB:.1f} MiB "
                "(+ one small config per image)")


def estimate(shape: Shape) -> Estimate:
    plan = build_plan(shape)
    unique: dict[str, int] = {}
    tags = manifests = 0
    for repo in plan:
        for t in repo.tags:
            tags += 1
            manifests += len(t.images) + (1 if repo.multi else 0)
            for image in t.images:
                unique.update((layer.identity, layer.payload) for layer in image.layers)
        tags += 1 if shape.latest and repo.tags else 0
    if shape.stream_layer_mib:
        tags, manifests = shape.repos * shape.tags, shape.repos * shape.tags
        unique = {"stream": shape.stream_layer_mib * MIB}
    return Estimate(len(plan), tags, manifests, len(unique), sum(unique.values()))


# --------------------------------------------------------------------------- pushing
class PushError(RuntimeError):
    pass


@dataclass
class Seeded:
    """What was pushed: ``tags[repository][tag] -> digest`` and the totals."""

    shape: str
    tags: dict[str, dict[str, str]] = field(default_factory=dict)
    blobs: dict[str, int] = field(default_factory=dict)  # digest -> size
    manifests: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    requests: int = 0

    @property
    def tag_count(self) -> int:
        return sum(len(t) for t in self.tags.values())

    @property
    def blob_bytes(self) -> int:
        return sum(self.blobs.values())

    def refs(self) -> list[tuple[str, str, str]]:
        return sorted((r, t, d) for r, tags in self.tags.items() for t, d in tags.items())

    def describe(self) -> str:
        return (f"{self.shape}: {len(self.tags)} repos, {self.tag_count} tags, {len(self.manifests)} "
                f"manifests, {len(self.blobs)} blobs, {self.blob_bytes / 1e6:.1f} MB")

    def to_json(self) -> dict[str, Any]:
        return {"shape": self.shape, "tags": self.tags, "blobs": self.blobs, "manifests": self.manifests}


class Pusher:
    """Pushes blobs (mounting from a repository that has the blob already) and manifests."""

    def __init__(self, url: str, verify: ssl.SSLContext | bool = True,
                 auth: httpx.Auth | None = None) -> None:
        self.http = httpx.Client(base_url=url.rstrip("/"), timeout=httpx.Timeout(60.0, connect=10.0),
                                 limits=httpx.Limits(max_connections=PUSH_WORKERS * 2), verify=verify,
                                 auth=auth)
        self.lock = threading.Lock()
        self.linked: set[tuple[str, str]] = set()
        self.home: dict[str, str] = {}  # digest -> a repository holding it
        self.requests = 0

    def close(self) -> None:
        self.http.close()

    def _send(self, method: str, url: str | httpx.URL, *ok: int, **kw: Any) -> httpx.Response:
        response = self.http.request(method, url, **kw)
        with self.lock:
            self.requests += 1
        if response.status_code not in ok:
            raise PushError(f"{method} {response.request.url.path}: HTTP {response.status_code} "
                            f"{response.text[:200]!r}")
        return response

    def blob(self, repository: str, digest: str, content: bytes | Iterator[bytes], size: int) -> None:
        with self.lock:
            if (repository, digest) in self.linked:
                return
            source = self.home.get(digest)
        if source is not None:
            response = self._send("POST", f"/v2/{repository}/blobs/uploads/", 201, 202,
                                  params={"mount": digest, "from": source})
        else:
            response = self._send("POST", f"/v2/{repository}/blobs/uploads/", 202)
        if response.status_code == 202:
            location = response.url.join(response.headers["Location"]).copy_merge_params({"digest": digest})
            self._send("PUT", location, 201, content=content,
                       headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)})
        with self.lock:
            self.linked.add((repository, digest))
            self.home.setdefault(digest, repository)

    def manifest(self, repository: str, reference: str, manifest: Manifest) -> str:
        response = self._send("PUT", f"/v2/{repository}/manifests/{reference}", 201,
                              content=manifest.data, headers={"Content-Type": manifest.media_type})
        got = response.headers.get("Docker-Content-Digest")
        if got is not None and got != manifest.digest:
            raise PushError(f"{repository}:{reference}: registry says {got}, bytes hash to {manifest.digest}")
        return manifest.digest


def _streamed_layer(seed: int, mib: int) -> Iterator[bytes]:
    rng = _rng(seed, "stream")
    for _ in range(mib):
        yield rng.randbytes(STREAM_CHUNK)


def seed(url: str, shape: Shape, *, workers: int = PUSH_WORKERS,
         verify: ssl.SSLContext | bool = True, auth: httpx.Auth | None = None) -> Seeded:
    """Push the whole corpus into the registry at ``url`` (``verify``: its CA, for https;
    ``auth``: for a registry that wants credentials)."""
    started = time.monotonic()
    pusher = Pusher(url, verify, auth)
    result = Seeded(shape.name)
    cache: dict[tuple[str, bool], Blob] = {}
    cache_lock = threading.Lock()
    try:
        if shape.stream_layer_mib:
            _seed_streamed(pusher, shape, result)
        else:
            def layer(item: LayerPlan, oci: bool) -> Blob:
                shared = not item.identity.startswith("img/")
                key = (item.identity, oci)
                with cache_lock:
                    if key in cache:
                        return cache[key]
                blob = make_layer(shape.seed, item.identity, item.payload, oci=oci)
                if shared:
                    with cache_lock:
                        cache[key] = blob
                return blob

            def push_repo(repo: RepoPlan) -> tuple[str, dict[str, str], dict[str, int], dict[str, int]]:
                tags: dict[str, str] = {}
                blobs: dict[str, int] = {}
                manifests: dict[str, int] = {}
                last: Image | None = None
                for t in repo.tags:
                    singles = []
                    for plan in t.images:
                        layers = [layer(item, repo.oci) for item in plan.layers]
                        config = make_config(f"{repo.name}:{t.tag}", plan.arch, plan.variant, layers,
                                             oci=repo.oci, created=t.created)
                        for blob in [*layers, config]:
                            pusher.blob(repo.name, blob.digest, blob.data, blob.size)
                            blobs[blob.digest] = blob.size
                        annotations = {"org.opencontainers.image.version": t.tag} if repo.oci else None
                        manifest = make_image_manifest(config, layers, oci=repo.oci, annotations=annotations)
                        platform = {"architecture": plan.arch, "os": "linux"}
                        if plan.variant:
                            platform["variant"] = plan.variant
                        kind = ImageKind.OCI if repo.oci else ImageKind.DOCKER
                        singles.append(Image(kind, manifest, config=config, layers=tuple(layers),
                                             platform=platform))
                    if repo.multi:
                        for child in singles:
                            pushed = pusher.manifest(repo.name, child.digest, child.manifest)
                            manifests[pushed] = child.manifest.size
                        kind = ImageKind.OCI_INDEX if repo.oci else ImageKind.DOCKER_LIST
                        image = Image(kind, make_index(singles, oci=repo.oci), children=tuple(singles))
                    else:
                        image = singles[0]
                    tags[t.tag] = pusher.manifest(repo.name, t.tag, image.manifest)
                    manifests[image.digest] = image.manifest.size
                    last = image
                if shape.latest and last is not None:
                    tags["latest"] = pusher.manifest(repo.name, "latest", last.manifest)
                return repo.name, tags, blobs, manifests

            with ThreadPoolExecutor(max_workers=workers) as pool:
                for name, tags, blobs, manifests in pool.map(push_repo, build_plan(shape)):
                    result.tags[name] = tags
                    result.blobs.update(blobs)
                    result.manifests.update(manifests)
    finally:
        pusher.close()
    result.seconds = time.monotonic() - started
    result.requests = pusher.requests
    return result


def _seed_streamed(pusher: Pusher, shape: Shape, result: Seeded) -> None:
    """One repository, one tag: a config and one raw layer of ``stream_layer_mib`` MiB."""
    hasher = hashlib.sha256()
    for chunk in _streamed_layer(shape.seed, shape.stream_layer_mib):
        hasher.update(chunk)
    digest, size = "sha256:" + hasher.hexdigest(), shape.stream_layer_mib * MIB
    layer_stub = Blob(b"", MT_OCI_LAYER, diff_id=digest)
    config = make_config("bench/huge:1", "amd64", None, [layer_stub], oci=True)
    repository = repo_name(0, 1, 0)
    pusher.blob(repository, digest, _streamed_layer(shape.seed, shape.stream_layer_mib), size)
    pusher.blob(repository, config.digest, config.data, config.size)
    media_type = "application/vnd.oci.image.manifest.v1+json"
    doc = {
        "schemaVersion": 2, "mediaType": media_type,
        "config": config.descriptor(),
        "layers": [{"mediaType": MT_OCI_LAYER, "size": size, "digest": digest}],
    }
    manifest = Manifest(json.dumps(doc, indent=3).encode(), media_type)
    result.tags[repository] = {"1": pusher.manifest(repository, "1", manifest)}
    result.blobs.update({digest: size, config.digest: config.size})
    result.manifests[manifest.digest] = manifest.size


# --------------------------------------------------------------------------- checking
def manifest_digests(url: str, refs: list[tuple[str, str]], *, workers: int = 8,
                     verify: ssl.SSLContext | bool = True,
                     auth: httpx.Auth | None = None) -> dict[tuple[str, str], str | None]:
    """GET every (repository, tag) with the full Accept list; sha256 of the bytes (None = missing)."""
    with httpx.Client(base_url=url.rstrip("/"), timeout=60.0, verify=verify, auth=auth,
                      limits=httpx.Limits(max_connections=workers)) as http:
        def one(ref: tuple[str, str]) -> str | None:
            response = http.get(f"/v2/{ref[0]}/manifests/{ref[1]}", headers={"Accept": ACCEPT_ALL})
            return sha256_digest(response.content) if response.status_code == 200 else None

        with ThreadPoolExecutor(max_workers=workers) as pool:
            return dict(zip(refs, pool.map(one, refs), strict=True))


def verify(url: str, seeded: Seeded, tls: ssl.SSLContext | bool = True,
           auth: httpx.Auth | None = None) -> list[str]:
    """Every tag of the corpus, compared by the sha256 of the manifest bytes served; the problems."""
    refs = [(r, t) for r, t, _ in seeded.refs()]
    got = manifest_digests(url, refs, verify=tls, auth=auth)
    return [f"{r}:{t}: {got[(r, t)] or 'missing'} != {d}" for r, t, d in seeded.refs() if got[(r, t)] != d]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="small", help=f"one of {', '.join(SHAPES)}, or scale-N")
    ap.add_argument("--registry", help="base URL to push to, e.g. http://127.0.0.1:5101")
    ap.add_argument("--estimate", action="store_true", help="print the sizes; push nothing")
    args = ap.parse_args()
    shape = scale_shape(int(args.shape[6:])) if args.shape.startswith("scale-") else SHAPES[args.shape]
    if args.estimate or not args.registry:
        print(f"{shape.name}: {estimate(shape)}")
        return 0
    seeded = seed(args.registry, shape)
    print(seeded.describe(), f"pushed in {seeded.seconds:.1f} s with {seeded.requests} requests")
    problems = verify(args.registry, seeded)
    for p in problems:
        print(p, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
