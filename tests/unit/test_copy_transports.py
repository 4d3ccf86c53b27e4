"""``regflow copy``'s arguments: skopeo's transport syntax (tasks/transports.py), platform
choice, the store's credentials by host, and copies between local layouts and archives
(tasks/copy_image.py)."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest

from adapters.errors import ConfigError
from adapters.oci import OCI_MANIFEST, Descriptor, Digest, parse_manifest
from adapters.oci_archive import partial_layout
from adapters.oci_layout import OciLayoutClient
from policies.models import Registry
from tasks.copy_image import CopyRequest, PlatformChoice, _store_registry, copy_image
from tasks.transports import parse_location

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(("text", "host", "repository", "tag", "digest", "reference"), [
    ("docker://127.0.0.1:5000/team/app:1.0", "127.0.0.1:5000", "team/app", "1.0", None, "1.0"),
    ("docker://registry.example.com/app", "registry.example.com", "app", None, None, "latest"),
    (f"docker://localhost/app@{DIGEST}", "localhost", "app", None, DIGEST, DIGEST),
    ("docker://nginx:1.25", "docker.io", "nginx", "1.25", None, "1.25"),
    ("docker://library/nginx", "docker.io", "library/nginx", None, None, "latest"),
])
def test_docker_references(text: str, host: str, repository: str, tag: str | None, digest: str | None,
                           reference: str) -> None:
    location = parse_location(text)
    assert (location.transport, location.host, location.repository) == ("docker", host, repository)
    assert (location.tag, location.digest, location.reference) == (tag, digest, reference)
    assert not location.is_layout


def test_layout_paths_end_at_the_first_colon(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert parse_location("oci:/srv/images:v1").path == Path("/srv/images")
    assert parse_location("oci:/srv/images:v1").tag == "v1"
    relative = parse_location("oci:images")
    assert (relative.path, relative.tag, relative.reference) == (tmp_path / "images", None, None)
    archive = parse_location("oci-archive:out/app.tar:latest")
    assert (archive.transport, archive.path) == ("oci-archive", tmp_path / "out/app.tar")
    assert archive.tag == "latest"
    assert archive.is_layout


@pytest.mark.parametrize(("text", "needle"), [
    ("127.0.0.1:5000/app:1", "give a transport"),
    ("dir:/tmp/x", "give a transport"),
    ("oci:", "needs a path"),
    ("oci-archive::tag", "needs a path"),
    ("oci:/tmp/x:bad tag", "invalid tag"),
    ("docker://127.0.0.1:5000/App:1", "lowercase"),
    (f"docker://127.0.0.1:5000/app:1@{DIGEST}", "not both"),
])
def test_bad_locations_say_what_is_wrong(text: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        parse_location(text)


def child(os: str, arch: str, variant: str | None = None) -> Descriptor:
    platform = {"os": os, "architecture": arch, **({"variant": variant} if variant else {})}
    return Descriptor.model_validate({"mediaType": "application/vnd.oci.image.manifest.v1+json",
                                      "digest": Digest.of(f"{os}{arch}{variant}".encode()), "size": 1,
                                      "platform": platform})


def test_platform_choice() -> None:
    arm64 = PlatformChoice.parse("linux/arm64")
    assert str(arm64) == "linux/arm64" and arm64.matches(child("linux", "arm64", "v8"))
    assert not arm64.matches(child("linux", "amd64")) and not arm64.matches(child("windows", "arm64"))
    assert PlatformChoice.parse("linux/arm64/v8").matches(child("linux", "arm64"))  # v8 is arm64's only
    v7 = PlatformChoice.parse("linux/arm/v7")
    assert v7.matches(child("linux", "arm", "v7")) and not v7.matches(child("linux", "arm", "v6"))
    no_platform = Descriptor.model_validate({"mediaType": "x", "digest": Digest.of(b""), "size": 0})
    assert not arm64.matches(no_platform)
    here = PlatformChoice.of_this_machine()
    assert here.os == "linux" and here.architecture and "_" not in here.architecture
    for bad in ("linux", "linux/", "/amd64", "a/b/c/d"):
        with pytest.raises(ConfigError, match="OS/ARCH"):
            PlatformChoice.parse(bad)


class _Store:
    def __init__(self, *registries: Registry) -> None:
        self._registries = list(registries)

    def registries(self) -> list[Registry]:
        return self._registries


def test_the_store_lends_the_credentials_of_the_registry_on_that_host() -> None:
    store = _Store(
        Registry(name="under-path", type="harbor", url="https://reg.example.com/sub"),
        Registry(name="plain", type="docker-registry", url="https://REG.example.com"),
        Registry(name="other", type="docker-registry", url="http://127.0.0.1:5000"),
        Registry(name="carried", type="oci-layout", url="file:///srv/images"),
    )
    assert _store_registry("reg.example.com", store) == ("plain", "docker-registry")
    assert _store_registry("127.0.0.1:5000", store) == ("other", "docker-registry")
    assert _store_registry("127.0.0.1:5001", store) is None
    assert _store_registry("", store) is None  # a directory registry has no host to match
    assert _store_registry("reg.example.com", None) is None


async def test_an_archive_holds_the_copied_image_alone(tmp_path: Path) -> None:
    source = OciLayoutClient.for_directory(tmp_path / "src")
    manifests = {}
    for tag in ("a", "b"):
        layer = f"layer of {tag}".encode()
        location = await source.start_upload("x")
        await source.put_blob("x", location or "", Digest.of(layer), len(layer), layer)
        raw = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                          "config": {"mediaType": "application/vnd.oci.empty.v1+json",
                                     "digest": Digest.of(layer), "size": len(layer)},
                          "layers": []}).encode()
        manifests[tag] = parse_manifest(raw)
        await source.put_manifest("x", tag, manifests[tag])
    archive = tmp_path / "out.tar"
    # A copy of b into the same file broke off after its manifest: its entry is in the layout.
    left = OciLayoutClient.for_directory(partial_layout(archive))
    layer_b = b"layer of b"
    await left.put_blob("x", await left.start_upload("x") or "", Digest.of(layer_b), len(layer_b), layer_b)
    await left.put_manifest("x", "b", manifests["b"])

    request = CopyRequest(source=parse_location(f"oci:{tmp_path / 'src'}:a"),
                          destination=parse_location(f"oci-archive:{archive}:a"))
    result = await copy_image(request)
    assert (result.status, result.digest) == ("copied", manifests["a"].digest)
    assert not partial_layout(archive).exists()
    with tarfile.open(archive) as tar:
        index = json.load(tar.extractfile("index.json"))  # type: ignore[arg-type]
    assert [e["annotations"]["org.opencontainers.image.ref.name"] for e in index["manifests"]] == ["a"]
    # Again from the archive into a layout: identical the second time.
    back = CopyRequest(source=parse_location(f"oci-archive:{archive}:a"),
                       destination=parse_location(f"oci:{tmp_path / 'back'}:a"))
    assert (await copy_image(back)).status == "copied"
    assert (await copy_image(back)).status == "skipped"
