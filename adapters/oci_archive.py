"""``oci-archive:FILE``: one OCI image layout as a tar file, as skopeo reads and writes it.

Reading extracts the layout's own files (``oci-layout``, ``index.json``, ``blobs/``) into a
directory and reads that as a layout: every blob is checked against its digest when it is copied
out, so nothing is trusted from the tar. Writing fills a layout directory beside the archive,
named after it (``.FILE.regflow-partial``: a copy broken off continues there, with the blobs it
already holds), then writes the tar to a temporary file, syncs it and renames it over FILE. A
reader never sees half an archive. Like skopeo's, a new archive holds only what was copied into
it this time.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tarfile
import uuid
from pathlib import Path, PurePosixPath

from adapters.errors import ConfigError, ContentError
from adapters.oci_layout import BLOBS_DIR, INDEX_FILE, LAYOUT_FILE, TEMP_PREFIX

PARTIAL_SUFFIX = ".regflow-partial"


def partial_layout(archive: Path) -> Path:
    """Where a copy into ``archive`` builds its layout (kept until the archive is written)."""
    return archive.parent / f".{archive.name}{PARTIAL_SUFFIX}"


def extract_archive(archive: Path, into: Path) -> None:
    """The layout inside ``archive``, extracted into the directory ``into``. Members outside a
    layout's own files are left out; links, devices and paths leaving ``into`` are refused
    (tarfile's "data" filter)."""
    if not archive.is_file():
        raise ConfigError(f"{archive} is not a file (oci-archive:FILE names an archive)")
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = [m for m in tar.getmembers() if _layout_member(m.name)]
            tar.extractall(into, members=members, filter="data")
    except (tarfile.TarError, OSError) as exc:
        raise ContentError(f"{archive} is not a readable tar archive: {exc}"[:300]) from None
    if not (into / LAYOUT_FILE).is_file():
        raise ContentError(f"{archive} holds no OCI image layout (no {LAYOUT_FILE} file at its top)")


def write_archive(layout: Path, archive: Path) -> None:
    """The layout's own files as a tar at ``archive``, replacing it atomically."""
    temp = archive.parent / f".{archive.name}{TEMP_PREFIX}{uuid.uuid4().hex}"
    try:
        with tarfile.open(temp, "w", format=tarfile.PAX_FORMAT) as tar:
            for path in _layout_files(layout):
                tar.add(path, arcname=path.relative_to(layout).as_posix(), recursive=False,
                        filter=_anonymous)
        with temp.open("rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temp, archive)
        directory = os.open(archive.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()


def remove_layout(layout: Path) -> None:
    shutil.rmtree(layout, ignore_errors=True)


def _layout_member(name: str) -> bool:
    parts = PurePosixPath(name).parts
    parts = parts[1:] if parts[:1] == (".",) else parts
    if not parts:
        return False
    return parts in ((LAYOUT_FILE,), (INDEX_FILE,)) or parts[0] == BLOBS_DIR


def _layout_files(layout: Path) -> list[Path]:
    """``oci-layout``, ``index.json``, then ``blobs/`` depth first, in a stable order; never
    regflow's own temporary files."""
    files = [layout / LAYOUT_FILE, layout / INDEX_FILE]
    for directory, subdirs, names in os.walk(layout / BLOBS_DIR):
        subdirs.sort()
        files.append(Path(directory))
        files.extend(Path(directory) / n for n in sorted(names) if not n.startswith(TEMP_PREFIX))
    return files


def _anonymous(info: tarfile.TarInfo) -> tarfile.TarInfo:
    # The archive travels to other sites: it names no local user.
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info
