"""The oci-layout registry type (adapters/oci_layout.py) and oci-archive files
(adapters/oci_archive.py): real directories, the real engine (tasks/transfer.py, tasks/blobs.py)."""

from __future__ import annotations

import asyncio
import errno
import io
import json
import os
import tarfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

import tasks.blobs
from adapters import adapter_info, create_adapter
from adapters.distribution.client import BlobStream
from adapters.endpoint import Endpoint
from adapters.errors import (
    ConfigError,
    ContentError,
    DigestMismatchError,
    InvalidReferenceError,
    NotFoundError,
    PermissionDeniedError,
    TransportError,
    is_transient,
)
from adapters.oci import OCI_INDEX, OCI_MANIFEST, Descriptor, Digest, Manifest, parse_manifest
from adapters.oci_archive import extract_archive, write_archive
from adapters.oci_layout import STALE_TEMP_SECONDS, OciLayoutAdapter, OciLayoutClient, storage_error
from policies.models import Registry
from tasks.blobs import BlobCopier
from tasks.models import TagPlan, TransferSpec
from tasks.transfer import transfer_repository


def client_at(root: Path) -> OciLayoutClient:
    return OciLayoutClient(Endpoint(url=root.as_uri()))


def blob(data: bytes, media_type: str = "application/vnd.oci.image.layer.v1.tar") -> Descriptor:
    return Descriptor(mediaType=media_type, digest=Digest.of(data), size=len(data))


def image(layers: list[bytes], *, label: str = "x") -> tuple[Manifest, dict[Digest, bytes]]:
    config = json.dumps({"architecture": "amd64", "os": "linux", "label": label}).encode()
    contents = {Digest.of(d): d for d in [config, *layers]}
    raw = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": blob(config, "application/vnd.oci.image.config.v1+json").model_dump(by_alias=True,
                                                                                      exclude_none=True),
        "layers": [blob(d).model_dump(by_alias=True, exclude_none=True) for d in layers],
    }, indent=3).encode()  # an unusual indent: any re-serialisation would change the digest
    return parse_manifest(raw), contents


async def fill(client: OciLayoutClient, repository: str, tag: str, manifest: Manifest,
               contents: dict[Digest, bytes]) -> None:
    for digest, data in contents.items():
        location = await client.start_upload(repository)
        assert location is not None
        await client.put_blob(repository, location, digest, len(data), data)
    await client.put_manifest(repository, tag, manifest)


async def test_a_layout_written_through_the_client_is_an_oci_image_layout(tmp_path: Path) -> None:
    client = client_at(tmp_path / "root")
    manifest, contents = image([b"layer one" * 500])
    await fill(client, "team/app", "1.0", manifest, contents)

    layout = tmp_path / "root/team/app"
    assert json.loads((layout / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads((layout / "index.json").read_text())
    assert index["mediaType"] == OCI_INDEX and index["schemaVersion"] == 2
    assert index["manifests"] == [{"mediaType": OCI_MANIFEST, "digest": manifest.digest,
                                   "size": manifest.size,
                                   "annotations": {"org.opencontainers.image.ref.name": "1.0"}}]
    for digest, data in {manifest.digest: manifest.raw, **contents}.items():
        assert (layout / "blobs/sha256" / digest.hex).read_bytes() == data
    assert sorted(p.name for p in layout.iterdir()) == ["blobs", "index.json", "oci-layout"]

    assert await client.list_tags("team/app") == ["1.0"]
    assert (await client.get_manifest("team/app", "1.0")).raw == manifest.raw
    head = await client.head_manifest("team/app", "1.0")
    assert head is not None and (head.digest, head.media_type, head.size) == (manifest.digest, OCI_MANIFEST,
                                                                              manifest.size)
    assert await client.head_manifest("team/app", "2.0") is None
    assert await client.head_manifest("nothing/here", "1.0") is None
    with pytest.raises(NotFoundError):
        await client.list_tags("nothing/here")


async def test_the_engine_copies_layout_to_layout_byte_exact_and_then_skips(tmp_path: Path) -> None:
    source, target = client_at(tmp_path / "a"), client_at(tmp_path / "b")
    shared = b"shared base" * 2000
    first, contents = image([shared, b"app layer"], label="one")
    second, more = image([shared, b"other layer"], label="two")
    await fill(source, "app", "1.0", first, contents)
    await fill(source, "app", "2.0", second, more)
    spec = TransferSpec(source_repository="app", target_repository="mirror/app",
                        tags=[TagPlan(tag="1.0"), TagPlan(tag="2.0")])

    result = await transfer_repository(source, target, spec, BlobCopier(source, target))
    assert [t.status for t in result.tags] == ["copied", "copied"], result.tags
    for tag, manifest in (("1.0", first), ("2.0", second)):
        assert (await target.get_manifest("mirror/app", tag)).raw == manifest.raw
    for digest, data in {**contents, **more}.items():
        assert (tmp_path / "b/mirror/app/blobs/sha256" / digest.hex).read_bytes() == data

    again = await transfer_repository(source, target, spec, BlobCopier(source, target))
    assert [(t.status, t.reason) for t in again.tags] == [("skipped", "identical on target")] * 2


async def test_a_corrupt_blob_never_becomes_visible(tmp_path: Path) -> None:
    client = client_at(tmp_path)
    good = b"the real bytes"
    location = await client.start_upload("app")
    assert location is not None
    with pytest.raises(DigestMismatchError):
        await client.put_blob("app", location, Digest.of(good), len(good), b"the fake bytes")
    assert await client.blob_exists("app", Digest.of(good)) is None
    assert not list((tmp_path / "app").glob(".regflow-*")), "the failed upload's file is left"
    with pytest.raises(ContentError):  # shorter than announced
        await client.put_blob("app", (await client.start_upload("app")) or "", Digest.of(good), 99, good)


async def test_a_chunked_upload_resumes_from_what_the_disk_holds(tmp_path: Path) -> None:
    client = client_at(tmp_path)
    data = bytes(range(256)) * 40
    digest = Digest.of(data)
    location = await client.start_upload("app")
    assert location is not None
    await client.patch_chunk("app", location, 0, 4000, data[:4000])

    async def broken() -> AsyncIterator[bytes]:
        yield data[4000:5000]
        raise TransportError("connection reset")

    with pytest.raises(TransportError):
        await client.patch_chunk("app", location, 4000, 6240, broken())
    status = await client.upload_status("app", location)
    assert status.offset == 5000  # what reached the disk; all of it came from the source
    # A chunk from an earlier offset drops what lies past it.
    await client.patch_chunk("app", location, 4500, len(data) - 4500, data[4500:])
    await client.complete_upload("app", location, digest)
    assert (tmp_path / "app/blobs/sha256" / digest.hex).read_bytes() == data
    with pytest.raises(NotFoundError):
        await client.upload_status("app", location)


async def test_a_session_damaged_on_disk_fails_and_ends(tmp_path: Path) -> None:
    client = client_at(tmp_path)
    data = b"x" * 3000
    location = await client.start_upload("app")
    assert location is not None
    await client.patch_chunk("app", location, 0, len(data), data)
    session = tmp_path / "app" / location
    session.write_bytes(b"y" * 3000)  # a crash lost the synced bytes
    with pytest.raises(DigestMismatchError):
        await client.complete_upload("app", location, Digest.of(data))
    assert not session.exists() and await client.blob_exists("app", Digest.of(data)) is None
    with pytest.raises(NotFoundError) as gone:
        await client.upload_status("app", location)
    assert gone.value.status == 404  # the copier starts the blob afresh on a 4xx
    with pytest.raises(NotFoundError):
        await client.upload_status("app", "../../etc/passwd")


class _Flaky(OciLayoutClient):
    """A source whose first read of each blob breaks after ``cut`` bytes."""

    cut = 2500

    def __init__(self, root: Path) -> None:
        super().__init__(Endpoint(url=root.as_uri()))
        self.broken: set[str] = set()
        self.bytes_read = 0

    @asynccontextmanager
    async def open_blob(self, repository: str, digest: Digest, offset: int = 0) -> AsyncIterator[BlobStream]:
        async with super().open_blob(repository, digest, offset) as stream:
            yield _Breaking(stream, self, digest, offset)


class _Breaking(BlobStream):
    def __init__(self, inner: BlobStream, owner: _Flaky, digest: Digest, offset: int) -> None:
        self.size, self._inner, self._owner = inner.size, inner, owner
        self._digest, self._offset = digest, offset

    async def chunks(self, chunk_size: int = 1024) -> AsyncIterator[bytes]:
        sent = self._offset
        async for chunk in self._inner.chunks(1000):
            if self._digest not in self._owner.broken and sent + len(chunk) > self._owner.cut:
                self._owner.broken.add(self._digest)
                raise TransportError("reset mid-blob")
            sent += len(chunk)
            self._owner.bytes_read += len(chunk)
            yield chunk


async def test_the_copier_continues_a_chunked_upload_into_a_layout(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tasks.blobs, "UPLOAD_CHUNK_BYTES", 1000)
    monkeypatch.setattr(tasks.blobs, "BACKOFF_BASE_SECONDS", 0.01)
    source, target = _Flaky(tmp_path / "src"), client_at(tmp_path / "dst")
    data = os.urandom(6000)
    await fill(source, "app", "1.0", *image([data]))
    source.bytes_read = 0
    copier = BlobCopier(source, target, chunked_threshold=100)
    sent = await copier.ensure("app", "app", blob(data))
    assert sent == len(data)  # every byte acknowledged once: the second attempt went on from 2000
    assert source.bytes_read == len(data)  # nothing read twice: the hash of the kept part was too
    assert (tmp_path / "dst/app/blobs/sha256" / Digest.of(data).hex).read_bytes() == data
    assert not list((tmp_path / "dst/app").glob(".regflow-*"))


async def test_concurrent_tags_from_two_writers_all_land(tmp_path: Path) -> None:
    one, two = client_at(tmp_path), client_at(tmp_path)  # two processes' worth of locks
    manifest, contents = image([b"layer"])
    await fill(one, "app", "seed", manifest, contents)
    await asyncio.gather(*(c.put_manifest("app", f"t{i}", manifest)
                           for i in range(40) for c in ((one,) if i % 2 else (two,))))
    assert sorted(await one.list_tags("app")) == sorted(["seed", *(f"t{i}" for i in range(40))])


async def test_the_index_keeps_what_other_tools_wrote(tmp_path: Path) -> None:
    client = client_at(tmp_path)
    manifest, contents = image([b"layer"])
    await fill(client, "app", "1.0", manifest, contents)
    index_path = tmp_path / "app/index.json"
    index = json.loads(index_path.read_text())
    foreign = {"mediaType": OCI_MANIFEST, "digest": manifest.digest, "size": manifest.size,
               "annotations": {"org.opencontainers.image.ref.name": "example.com/app:1.0", "x": "y"},
               "platform": {"architecture": "amd64", "os": "linux"}}
    index["manifests"].append(foreign)
    index["annotations"] = {"made.by": "another tool"}
    index_path.write_text(json.dumps(index))

    other, more = image([b"layer 2"], label="other")
    await fill(client, "app", "1.0", other, more)  # retag in place
    rewritten = json.loads(index_path.read_text())
    assert rewritten["annotations"] == {"made.by": "another tool"}
    assert rewritten["manifests"][1] == foreign
    assert rewritten["manifests"][0]["digest"] == other.digest
    assert await client.list_tags("app") == ["1.0"]  # a full reference is no tag of this repository

    assert await client.delete_tag("app", "1.0") is True
    assert await client.delete_tag("app", "1.0") is False
    assert await client.list_tags("app") == []
    assert await client.delete_manifest("app", manifest.digest) is True  # the foreign entry
    assert json.loads(index_path.read_text())["manifests"] == []
    # The blobs stay: another tag or index may share them.
    assert await client.blob_exists("app", other.digest) == other.size


async def test_a_tag_whose_manifest_is_missing_is_not_there(tmp_path: Path) -> None:
    client = client_at(tmp_path)
    manifest, contents = image([b"layer"])
    await fill(client, "app", "1.0", manifest, contents)
    (tmp_path / "app/blobs/sha256" / manifest.digest.hex).unlink()
    assert await client.head_manifest("app", "1.0") is None
    with pytest.raises(NotFoundError):
        await client.get_manifest("app", "1.0")


async def test_manifests_pushed_by_digest_are_blobs_only(tmp_path: Path) -> None:
    client = client_at(tmp_path)
    manifest, contents = image([b"layer"])
    await fill(client, "app", "1.0", manifest, contents)
    child, more = image([b"child layer"], label="child")
    for digest, data in more.items():
        await client.put_blob("app", await client.start_upload("app") or "", digest, len(data), data)
    await client.put_manifest("app", child.digest, child)
    assert len(json.loads((tmp_path / "app/index.json").read_text())["manifests"]) == 1
    head = await client.head_manifest("app", child.digest)
    assert head is not None and head.digest == child.digest and head.media_type == OCI_MANIFEST
    layer_digest = next(iter(more))
    assert await client.head_manifest("app", layer_digest) is None  # a blob that is no manifest
    with pytest.raises(DigestMismatchError):
        await client.put_manifest("app", manifest.digest, child)


async def test_mounting_links_a_blob_of_another_layout(tmp_path: Path) -> None:
    client = client_at(tmp_path)
    manifest, contents = image([b"big layer" * 100])
    await fill(client, "team/a", "1.0", manifest, contents)
    digest = next(iter(contents))
    assert await client.start_upload("team/b", mount=digest, mount_from="team/a") is None
    mounted = tmp_path / "team/b/blobs/sha256" / digest.hex
    assert mounted.read_bytes() == contents[digest]
    assert mounted.stat().st_ino == (tmp_path / "team/a/blobs/sha256" / digest.hex).stat().st_ino
    assert await client.start_upload("team/b", mount=digest, mount_from="team/b") is None  # already there
    missing = Digest.of(b"nowhere")
    location = await client.start_upload("team/b", mount=missing, mount_from="team/a")
    assert location is not None and location.startswith(".regflow-upload-")


async def test_catalog_finds_nested_layouts_and_nothing_else(tmp_path: Path) -> None:
    client = client_at(tmp_path)
    manifest, contents = image([b"layer"])
    for name in ("team", "team/app", "team/app/sub", "zeta"):
        await fill(client, name, "1.0", manifest, contents)
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden/oci-layout").write_text("{}")
    (tmp_path / "Bad_Name").mkdir()
    (tmp_path / "Bad_Name/oci-layout").write_text("{}")
    (tmp_path / "plain/dir").mkdir(parents=True)
    assert [name async for name in client.catalog()] == ["team", "team/app", "team/app/sub", "zeta"]
    assert await client.has_tags("team") and not await client.has_tags("plain")


async def test_names_that_cannot_be_layouts_are_refused(tmp_path: Path) -> None:
    client = client_at(tmp_path)
    for name in ("team/blobs", "blobs", "../escape", "a//b", "Upper"):
        with pytest.raises(InvalidReferenceError):
            client.layout(name)
    adapter = create_adapter("oci-layout", Endpoint(url=tmp_path.as_uri()))
    with pytest.raises(InvalidReferenceError):
        await adapter.prepare_for_push(["ok/name", "team/blobs/x"])
    await adapter.aclose()


async def test_stale_temporary_files_are_swept(tmp_path: Path) -> None:
    client = client_at(tmp_path)
    manifest, contents = image([b"layer"])
    await fill(client, "app", "1.0", manifest, contents)
    old, fresh = tmp_path / "app/.regflow-upload-old", tmp_path / "app/.regflow-tmp-fresh"
    old.write_bytes(b"left by a crash")
    fresh.write_bytes(b"in use")
    stale = time.time() - STALE_TEMP_SECONDS - 60
    os.utime(old, (stale, stale))
    await client_at(tmp_path).start_upload("app")
    assert not old.exists() and fresh.exists()


async def test_the_adapter(tmp_path: Path) -> None:
    info = adapter_info("oci-layout")
    assert "event_based" not in info.triggers and info.can_be_target and info.supports_tag_deletion
    adapter = create_adapter("oci-layout", Endpoint(url=(tmp_path / "new/root").as_uri()))
    assert isinstance(adapter, OciLayoutAdapter)
    assert (await adapter.health()).status == "healthy"  # created on first write
    (tmp_path / "file").write_text("")
    blocked = create_adapter("oci-layout", Endpoint(url=(tmp_path / "file/root").as_uri()))
    health = await blocked.health()
    assert health.status == "unhealthy" and "file" in health.reason
    with pytest.raises(ConfigError, match="credential"):
        create_adapter("oci-layout", Endpoint(url=tmp_path.as_uri(), username="u"))


def test_registry_urls_of_a_directory_type() -> None:
    ok = Registry(name="carried", type="oci-layout", url="file:///srv/air%20gap/")
    assert ok.url == "file:///srv/air%20gap"
    assert client_at(Path("/x")).root == Path("/x")
    assert OciLayoutClient(Endpoint(url=ok.url)).root == Path("/srv/air gap")
    for bad in ("http://127.0.0.1:5000", "file://host/srv", "file:relative", "file:///", "file:///x?y=1"):
        with pytest.raises(ValueError, match="file:///absolute/path"):
            Registry(name="carried", type="oci-layout", url=bad)
    with pytest.raises(ValueError, match="http"):
        Registry(name="r", type="docker-registry", url="file:///srv")
    with pytest.raises(ValueError):
        Endpoint(url="file://host/srv")


def test_filesystem_errors_land_in_the_error_tree() -> None:
    full = storage_error(OSError(errno.ENOSPC, "No space left on device", "/srv/x"))
    assert full.status == 507 and not is_transient(full) and "No space left" in str(full)
    denied = storage_error(PermissionError(errno.EACCES, "Permission denied", "/srv/x"))
    assert isinstance(denied, PermissionDeniedError) and not is_transient(denied)
    assert is_transient(storage_error(OSError(errno.EIO, "Input/output error", "/srv/x")))
    assert isinstance(storage_error(FileNotFoundError(errno.ENOENT, "gone", "/x")), NotFoundError)


async def test_an_archive_round_trip_and_what_extraction_refuses(tmp_path: Path) -> None:
    client = client_at(tmp_path / "root")
    manifest, contents = image([b"layer" * 300])
    await fill(client, "app", "1.0", manifest, contents)
    (tmp_path / "root/app/.regflow-upload-x").write_bytes(b"not part of the layout")
    archive = tmp_path / "app.tar"
    write_archive(tmp_path / "root/app", archive)
    with tarfile.open(archive) as tar:
        names = tar.getnames()
        assert names[:2] == ["oci-layout", "index.json"] and not [n for n in names if ".regflow" in n]
        assert {m.uname for m in tar.getmembers()} == {""}
    into = tmp_path / "out"
    into.mkdir()
    extract_archive(archive, into)
    read = OciLayoutClient.for_directory(into)
    assert (await read.get_manifest("anything", "1.0")).raw == manifest.raw
    assert await read.only_manifest("anything") == manifest.digest

    evil = tmp_path / "evil.tar"
    with tarfile.open(evil, "w") as tar:
        for name, data in (("oci-layout", b"{}"), ("blobs/../../escaped", b"x")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    target = tmp_path / "evil-out"
    target.mkdir()
    with pytest.raises(ContentError):
        extract_archive(evil, target)
    assert not (tmp_path / "escaped").exists()
    with tarfile.open(tmp_path / "empty.tar", "w"):
        pass
    (tmp_path / "empty-out").mkdir()
    with pytest.raises(ContentError, match="no OCI image layout"):
        extract_archive(tmp_path / "empty.tar", tmp_path / "empty-out")


async def test_the_layout_client_has_every_attribute_a_distribution_client_gets() -> None:
    """OciLayoutClient skips DistributionClient.__init__ (it has no HTTP to set up): whatever
    that __init__ adds for the engine to read (counters, holds) must be set here too, or a
    policy into a layout fails at its end (it did once: `responses`)."""
    from adapters.distribution.client import DistributionClient

    http_only = {"_http", "_bulk", "_token_http", "auth", "_origin", "_realm_probe"}
    remote = DistributionClient(Endpoint(url="http://127.0.0.1:9"))
    try:
        layout = OciLayoutClient(Endpoint(url="file:///tmp/regflow-layout-attributes"))
        missing = set(vars(remote)) - http_only - set(vars(layout))
        assert not missing, f"OciLayoutClient lacks {sorted(missing)}"
    finally:
        await remote.aclose()
