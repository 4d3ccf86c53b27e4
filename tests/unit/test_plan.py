"""Planning against fake registries: what the plan asks each side and what it hands on."""

from __future__ import annotations

from types import SimpleNamespace

from adapters.distribution.client import ManifestHead
from adapters.errors import UnsupportedMediaTypeError
from adapters.oci import Digest, parse_manifest
from policies.models import Policy
from tasks.discover import RepositoryTags
from tasks.plan import make_plan

POLICY = Policy(name="p", src_registry="s", dest_registry="d")
CONFIG = {"mediaType": "application/vnd.oci.image.config.v1+json", "size": 2,
          "digest": str(Digest.of(b"{}"))}
RAW = (b'{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json", "config": '
       + str(CONFIG).replace("'", '"').encode() + b', "layers": []}')
MANIFEST = parse_manifest(RAW, "application/vnd.oci.image.manifest.v1+json")
OLD = Digest.of(b"a schema1 manifest")


class Source:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    async def get_manifest(self, repository: str, ref: str) -> object:
        self.calls.append(("GET", ref))
        if ref == "old":
            raise UnsupportedMediaTypeError("schema1 manifests are not copied")
        return MANIFEST

    async def head_manifest(self, repository: str, ref: str) -> ManifestHead | None:
        self.calls.append(("HEAD", ref))
        return ManifestHead(OLD if ref == "old" else MANIFEST.digest, "x", 1)


class EmptyTarget:
    async def head_manifest(self, repository: str, ref: str) -> None:
        return None


def adapter(client: object) -> SimpleNamespace:
    unbounded = SimpleNamespace(min_path_components=None, max_path_components=None)
    return SimpleNamespace(client=client, info=unbounded)


async def test_a_manifest_regflow_refuses_fails_only_its_own_tag() -> None:
    source = Source()
    plan = await make_plan(adapter(source), adapter(EmptyTarget()), POLICY,  # type: ignore[arg-type]
                           [RepositoryTags(repository="app", tags=["new", "old"])])

    [repository] = plan.repositories
    assert repository.error == ""
    assert [(t.tag, t.digest, t.action) for t in repository.tags] == [
        ("new", MANIFEST.digest, "copy"), ("old", OLD, "copy")]
    [spec] = plan.specs(POLICY)
    assert [t.manifest for t in spec.tags] == [MANIFEST, None]  # the transfer GETs "old" and says why
    assert spec.new_on_target
    assert sorted(source.calls) == [("GET", "new"), ("GET", "old"), ("HEAD", "old")]
