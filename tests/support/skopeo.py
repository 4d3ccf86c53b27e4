"""skopeo as an independent witness: what a registry really serves, and a reference copier."""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

SKOPEO_BIN = Path("/usr/bin/skopeo")

Creds = str | tuple[str, str] | None  # "user:password" or (user, password)


class SkopeoError(RuntimeError):
    def __init__(self, args: Sequence[str], returncode: int, stderr: str) -> None:
        super().__init__(f"skopeo failed ({returncode}): {' '.join(_redact(args))}\n{stderr.strip()}")
        self.returncode = returncode
        self.stderr = stderr


def require_skopeo() -> str:
    if not (SKOPEO_BIN.is_file() and os.access(SKOPEO_BIN, os.X_OK)):
        raise RuntimeError(
            f"{SKOPEO_BIN} is missing: the integration test bed needs the Debian packages "
            "`docker-registry skopeo apache2-utils` (apt-get install docker-registry skopeo apache2-utils)"
        )
    return str(SKOPEO_BIN)


def _creds(creds: Creds) -> str | None:
    if creds is None:
        return None
    return creds if isinstance(creds, str) else f"{creds[0]}:{creds[1]}"


def _redact(args: Sequence[str]) -> list[str]:
    out: list[str] = []
    for i, a in enumerate(args):
        out.append("***" if i > 0 and args[i - 1].endswith("creds") else a)
    return out


def docker_ref(ref: str) -> str:
    """``127.0.0.1:5000/repo:tag`` / ``http://127.0.0.1:5000/repo:tag`` -> ``docker://127.0.0.1:5000/repo:tag``;
    other transports (``docker://``, ``dir:``, ``oci:``...) pass through."""
    for prefix in ("http://", "https://"):
        if ref.startswith(prefix):
            return "docker://" + ref.removeprefix(prefix)
    if ref.startswith("docker://") or ref.split(":", 1)[0] in ("dir", "oci", "oci-archive", "docker-archive"):
        return ref
    return "docker://" + ref


def run_skopeo(args: Sequence[str], *, timeout: float = 120.0) -> subprocess.CompletedProcess[bytes]:
    """Run skopeo with ``args``; stdout is kept as bytes. Raises SkopeoError on failure."""
    cmd = [require_skopeo(), *args]
    proc = subprocess.run(cmd, capture_output=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise SkopeoError(cmd, proc.returncode, proc.stderr.decode("utf-8", "replace"))
    return proc


def inspect_raw(ref: str, creds: Creds = None, *, timeout: float = 60.0) -> bytes:
    """The exact manifest bytes ``skopeo inspect --raw`` prints for ``ref``."""
    args = ["inspect", "--raw", "--tls-verify=false"]
    c = _creds(creds)
    args += ["--creds", c] if c is not None else ["--no-creds"]
    return run_skopeo([*args, docker_ref(ref)], timeout=timeout).stdout


def inspect_raw_digest(ref: str, creds: Creds = None, *, timeout: float = 60.0) -> str:
    """``sha256:...`` of the exact bytes ``skopeo inspect --raw`` printed for ``ref``
    (e.g. ``docker://127.0.0.1:PORT/repo:tag`` or ``127.0.0.1:PORT/repo:tag``)."""
    return "sha256:" + hashlib.sha256(inspect_raw(ref, creds, timeout=timeout)).hexdigest()


def skopeo_copy(
    src: str,
    dst: str,
    *,
    src_creds: Creds = None,
    dest_creds: Creds = None,
    all_images: bool = True,
    preserve_digests: bool = True,
    extra_args: Sequence[str] = (),
    timeout: float = 300.0,
) -> subprocess.CompletedProcess[bytes]:
    """``skopeo copy`` between references (registry refs get ``docker://`` added), TLS verification
    off, no signature policy, ``--all --preserve-digests`` by default."""
    args = ["--insecure-policy", "copy", "--src-tls-verify=false", "--dest-tls-verify=false"]
    src, dst = docker_ref(src), docker_ref(dst)
    for side, ref, creds in (("src", src, src_creds), ("dest", dst, dest_creds)):
        c = _creds(creds)
        if c is not None:
            args += [f"--{side}-creds", c]
        elif ref.startswith("docker://"):
            args.append(f"--{side}-no-creds")
    if all_images:
        args.append("--all")
    if preserve_digests:
        args.append("--preserve-digests")
    return run_skopeo([*args, *extra_args, src, dst], timeout=timeout)
