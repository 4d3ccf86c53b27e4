"""Peak memory and wall time of copying one image with a very large layer, regflow beside
skopeo, between two local CNCF distribution registries.

    uv run python -m benchmarks.large_layer [--size-mib 512] [--runs 1]

The layer is pseudo-random (incompressible), generated and pushed in streaming fashion so the
benchmark itself never holds it in memory. Each copy runs in a fresh child process into an
empty target; peak RSS is the child's ru_maxrss. Every copy is verified by digest with skopeo.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import random
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass

from adapters.distribution.client import DistributionClient
from adapters.endpoint import Endpoint
from adapters.oci import Digest, parse_manifest
from tests.support.registry import RegistryProcess
from tests.support.skopeo import inspect_raw_digest

CHUNK = 1024 * 1024
REPOSITORY, TAG = "bench/large", "1"


async def _layer(seed: int, size_mib: int) -> AsyncIterator[bytes]:
    rng = random.Random(seed)
    for _ in range(size_mib):
        yield rng.randbytes(CHUNK)


async def seed_image(url: str, size_mib: int) -> str:
    hasher = hashlib.sha256()
    async for chunk in _layer(1, size_mib):
        hasher.update(chunk)
    layer = Digest("sha256:" + hasher.hexdigest())
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": [str(layer)]}}).encode()
    async with DistributionClient(Endpoint(url=url)) as client:
        for digest, size, body in ((layer, size_mib * CHUNK, _layer(1, size_mib)),
                                   (Digest.of(config), len(config), config)):
            location = await client.start_upload(REPOSITORY)
            assert location is not None
            await client.put_blob(REPOSITORY, location, digest, size, body)
        raw = json.dumps({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": str(Digest.of(config)), "size": len(config)},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                        "digest": str(layer), "size": size_mib * CHUNK}],
        }).encode()
        manifest = parse_manifest(raw)
        await client.put_manifest(REPOSITORY, TAG, manifest)
    return manifest.digest


@dataclass
class Sample:
    tool: str
    seconds: float
    peak_rss_mib: float


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=512)
    ap.add_argument("--runs", type=int, default=1)
    args = ap.parse_args()
    if not shutil.which("skopeo"):
        print("skopeo is missing: apt-get install skopeo", file=sys.stderr)
        return 2

    with RegistryProcess("anonymous", log_level="error") as src:
        expected = asyncio.run(seed_image(src.url, args.size_mib))
        samples: list[Sample] = []
        for _ in range(args.runs):
            for tool in ("regflow", "skopeo"):
                with RegistryProcess("anonymous", log_level="error") as dst:
                    if tool == "regflow":
                        argv = [sys.executable, "-m", "benchmarks.copy_once", src.url, dst.url,
                                REPOSITORY, TAG]
                    else:
                        argv = ["skopeo", "copy", "--preserve-digests", "--src-tls-verify=false",
                                "--dest-tls-verify=false", f"docker://{src.ref(REPOSITORY, TAG)}",
                                f"docker://{dst.ref(REPOSITORY, TAG)}"]
                    # Separate interpreter per sample so ru_maxrss is this copy's alone.
                    sample = measure(tool, argv)
                    got = inspect_raw_digest(dst.ref(REPOSITORY, TAG))
                    if got != expected:
                        print(f"{tool}: target digest {got} != {expected}", file=sys.stderr)
                        return 1
                    samples.append(sample)
    print(f"layer {args.size_mib} MiB, {args.runs} run(s) each, digests verified with skopeo")
    print(f"{'tool':8} {'seconds':>8} {'peak RSS MiB':>13}")
    for s in samples:
        print(f"{s.tool:8} {s.seconds:8.2f} {s.peak_rss_mib:13.1f}")
    return 0


def measure(tool: str, argv: list[str]) -> Sample:
    """Run argv under a fresh Python wrapper so RUSAGE_CHILDREN covers this child only."""
    wrapper = ("import resource,subprocess,sys,time;t=time.monotonic();"
               "subprocess.run(sys.argv[1:],check=True,stdout=subprocess.DEVNULL);"
               "print(time.monotonic()-t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    out = subprocess.run([sys.executable, "-c", wrapper, *argv], check=True, capture_output=True,
                         text=True).stdout.split()
    return Sample(tool, float(out[0]), int(out[1]) / 1024)


if __name__ == "__main__":
    sys.exit(main())
