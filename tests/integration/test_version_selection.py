"""Version selection and untagged artifacts against real registries, through the task-level
functions a run calls (discover, make_plan, transfer_repository), without a Prefect flow run:

- ``semver:<range>`` with ``latest`` by version over a table of tags with pre-releases, a ``v``
  prefix and a partial version;
- ``latest`` by the images' real config ``created``, read over the distribution API (an index
  through its first child; two tags of one image share their reads);
- an untagged image index listed by a Harbor artifacts API (the tests' loopback proxy answers
  ``/api/v2.0`` in front of a real registry) copied by digest, and found identical on a resync.
"""

from __future__ import annotations

import io
import json
import time
from calendar import timegm

import pytest

from adapters import create_adapter
from adapters.endpoint import Endpoint
from adapters.harbor import HarborAdapter
from policies.models import Policy
from tasks.blobs import BlobCopier
from tasks.discover import discover
from tasks.plan import make_plan
from tasks.transfer import transfer_repository
from tests.support.corpus import ImageKind, RegistryClient
from tests.support.endpoints import endpoint_for
from tests.support.fake_harbor import API, artifact_json, project_json, repository_json
from tests.support.faultproxy import FaultProxy, respond
from tests.support.registry import RegistryProcess

pytestmark = pytest.mark.integration


def day(text: str) -> int:
    return timegm(time.strptime(text, "%Y-%m-%d"))


def policy(*filters: tuple[str, str], **fields: object) -> Policy:
    return Policy.model_validate({"name": "p", "src_registry": "src", "dest_registry": "dst",
                                  "filters": [{"type": t, "value": v} for t, v in filters], **fields})


async def replicate(src: RegistryProcess, dst: RegistryProcess, chosen: Policy) -> list[str]:
    """Discover, plan and copy as a run does; the tags discovery selected, in its order."""
    source = create_adapter("docker-registry", endpoint_for(src))
    target = create_adapter("docker-registry", endpoint_for(dst))
    try:
        found = await discover(source, chosen)
        plan = await make_plan(source, target, chosen, found)
        for spec in plan.specs(chosen):
            result = await transfer_repository(source.client, target.client, spec,
                                               BlobCopier(source.client, target.client))
            assert result.status == "Succeeded", result.error
    finally:
        await source.aclose()
        await target.aclose()
    return [t for item in found for t in item.tags]


async def test_a_semver_range_and_the_newest_two_by_version(make_registry, make_corpus):
    src, dst = make_registry("anonymous"), make_registry("anonymous")
    corpus = make_corpus(src)
    for tags in (["1.0.0"], ["v1.2.0"], ["1.2.5"], ["1.3.0-rc.1"], ["1.4"], ["2.0.0", "latest"]):
        corpus.push("app/web", tags, ImageKind.OCI)

    chosen = await replicate(src, dst, policy(("name", "app/web"), ("tag", "semver:>=1.2 <2"),
                                              latest={"count": 2}))

    # In range: v1.2.0, 1.2.5, 1.4 (1.4.0); not the pre-release, not 2.0.0 nor latest.
    assert sorted(chosen) == ["1.2.5", "1.4"]
    with RegistryClient(dst.url, dst.httpx_auth()) as target:
        assert target.tags("app/web") == ["1.2.5", "1.4"]
        for tag in chosen:
            assert target.manifest_digest("app/web", tag) == corpus.corpus.tag("app/web", tag).digest


async def test_the_newest_by_the_images_created_time(make_registry, make_corpus):
    src, dst = make_registry("anonymous"), make_registry("anonymous")
    corpus = make_corpus(src)
    # Pushed in version order, built out of it; "edge" names the same index as "nightly".
    corpus.push("app/cli", ["1.0.0"], ImageKind.DOCKER, created=day("2024-03-01"))
    corpus.push("app/cli", ["1.5.0"], ImageKind.OCI, created=day("2024-02-01"))
    corpus.push("app/cli", ["2.0.0"], ImageKind.OCI, created=day("2024-01-01"))
    corpus.push("app/cli", ["nightly", "edge"], ImageKind.OCI_INDEX, created=day("2024-04-01"))
    corpus.push("app/cli", ["reproducible"], ImageKind.OCI, created=0)  # the epoch: no time
    mark = src.log_mark()

    chosen = await replicate(src, dst, policy(("name", "app/cli"),
                                              latest={"count": 3, "order": "created"}))

    # nightly and edge (one index) first, then 1.0.0; the epoch ranks below every real time.
    assert sorted(chosen) == ["1.0.0", "edge", "nightly"]
    with RegistryClient(dst.url, dst.httpx_auth()) as target:
        assert target.tags("app/cli") == ["1.0.0", "edge", "nightly"]
    # Each image's config is read once to rank it, an index's through its first child only, and
    # once more where it is copied: nightly and edge (one index) share their reads.
    repos = corpus.corpus.repos["app/cli"]
    first, second = (child.config.digest for child in repos["nightly"].image.children)
    reads = {tag: repos[tag].image.config.digest for tag in ("1.0.0", "1.5.0", "2.0.0", "reproducible")}
    reads |= {"nightly (first child)": first, "nightly (second child)": second}
    counted = {name: src.count_requests("GET", f"/v2/app/cli/blobs/{digest}", since=mark)
               for name, digest in reads.items()}
    assert counted == {"1.0.0": 2, "1.5.0": 1, "2.0.0": 1, "reproducible": 1,
                       "nightly (first child)": 2, "nightly (second child)": 1}


async def test_an_untagged_index_from_a_harbor_listing_travels_by_digest(make_registry, make_corpus):
    src, dst = make_registry("anonymous"), make_registry("anonymous")
    corpus = make_corpus(src)
    tagged = corpus.push("library/app", ["1.0"], ImageKind.DOCKER)
    # An index pushed by digest alone (children first), as a build that never tagged it.
    untagged = corpus.factory.image(ImageKind.OCI_INDEX, "library/app@untagged")
    for blob in untagged.blobs().values():
        corpus.push_blob("library/app", blob.data)
    for manifest in untagged.manifests():
        corpus.push_manifest("library/app", manifest.digest, manifest.data, manifest.media_type)

    proxy = FaultProxy(src).start()
    try:
        answers: dict[str, list[dict[str, object]]] = {
            f"{API}/projects": [project_json("library")],
            f"{API}/projects/library/repositories": [repository_json("library/app")],
            f"{API}/projects/library/repositories/app/artifacts": [
                artifact_json(tagged.digest, tags=["1.0"]), artifact_json(untagged.digest)],
        }
        for path, body in answers.items():
            proxy.rule("GET", path, respond(200, {"Content-Type": "application/json",
                                                  "X-Total-Count": str(len(body))},
                                            json.dumps(body)), nth=None)
        source = HarborAdapter(Endpoint(url=proxy.url))
        target = create_adapter("docker-registry", endpoint_for(dst))
        chosen = policy(("name", "library/app"), ("tag", "*"), untagged=True)
        try:
            [found] = await discover(source, chosen)
            assert found.tags == ["1.0", untagged.digest]
            plan = await make_plan(source, target, chosen, [found])
            [repository] = plan.repositories
            assert [(t.tag, t.action) for t in repository.tags] == [("1.0", "copy"),
                                                                     (untagged.digest, "copy")]
            [spec] = plan.specs(chosen)
            result = await transfer_repository(source.client, target.client, spec,
                                               BlobCopier(source.client, target.client))
            assert [(t.tag, t.status) for t in result.tags] == [("1.0", "copied"),
                                                                (untagged.digest, "copied")], result.error
            resync = await make_plan(source, target, chosen, [found])
            assert [t.action for t in resync.repositories[0].tags] == ["identical", "identical"]
        finally:
            await source.aclose()
            await target.aclose()
    finally:
        proxy.close()

    with RegistryClient(dst.url, dst.httpx_auth()) as on_target:
        assert on_target.tags("library/app") == ["1.0"]  # the digest became no tag
        for manifest in untagged.manifests():
            assert on_target.manifest_digest("library/app", manifest.digest) == manifest.digest


def test_the_dry_run_table_reads_with_untagged_referrer_platform_and_delete_rows(
        make_registry, make_corpus, monkeypatch):
    """``regflow replicate --dry-run``'s table (regflow_cli/main.py ``_dry_run``, in process)
    with every kind of row issue 17 adds, from real registries: an untagged image, a cosign
    signature and a digest-only SBOM of a multi-platform tag, the platforms column and a prune
    deletion; each row on one line of a piped (160-column) table."""
    from contextlib import asynccontextmanager
    from types import SimpleNamespace

    from rich.console import Console

    import regflow_cli.main as cli
    import tasks.load
    from tests.integration.test_referrers import push_artifact, push_fallback_index, push_signature

    src, dst = make_registry("anonymous"), make_registry("anonymous")
    corpus = make_corpus(src)
    tagged = corpus.push("library/app", ["1.0"], ImageKind.OCI_INDEX)
    push_signature(corpus, "library/app", tagged.digest)
    sbom = push_artifact(corpus, "library/app", tagged.digest, len(tagged.manifest), "sbom of 1.0")
    push_fallback_index(corpus, "library/app", tagged.digest, [sbom])
    untagged = corpus.factory.image(ImageKind.OCI, "library/app@untagged")
    for blob in untagged.blobs().values():
        corpus.push_blob("library/app", blob.data)
    corpus.push_manifest("library/app", untagged.digest, untagged.manifest.data, untagged.media_type)
    make_corpus(dst).push("library/app", ["0.9"], ImageKind.OCI)  # gone from the source: pruned

    proxy = FaultProxy(src).start()
    try:
        answers: dict[str, list[dict[str, object]]] = {
            f"{API}/projects": [project_json("library")],
            f"{API}/projects/library/repositories": [repository_json("library/app")],
            f"{API}/projects/library/repositories/app/artifacts": [
                artifact_json(tagged.digest, tags=["1.0"]), artifact_json(untagged.digest)],
        }
        for path, body in answers.items():
            proxy.rule("GET", path, respond(200, {"Content-Type": "application/json",
                                                  "X-Total-Count": str(len(body))},
                                            json.dumps(body)), nth=None)

        @asynccontextmanager
        async def opened(loaded):  # type: ignore[no-untyped-def]
            source = HarborAdapter(Endpoint(url=proxy.url))
            target = create_adapter("docker-registry", endpoint_for(dst))
            try:
                yield source, target
            finally:
                await source.aclose()
                await target.aclose()

        monkeypatch.setattr(tasks.load, "open_adapters", opened)
        console = Console(width=160, record=True, file=io.StringIO())
        monkeypatch.setattr(cli, "out", console)
        chosen = policy(("name", "library/app"), ("tag", "*"), untagged=True, platforms=["linux/amd64"],
                        prune=True)
        cli._dry_run(SimpleNamespace(policy=chosen), False)
    finally:
        proxy.close()

    text = console.export_text()
    print(text)
    rows = [[cell.strip() for cell in line.split("│")[1:-1]] for line in text.splitlines()
            if line.startswith("│") and "library/app" in line]
    short = tagged.digest[len("sha256:"):][:12]
    assert [(r[2], r[3], r[5]) for r in rows] == [
        ("1.0", "copy", "linux/amd64"),
        (f"sha256:{untagged.digest[7:19]}… (untagged)", "copy", "linux/amd64"),
        (f"sha256-{short}….sig (referrer of 1.0)", "copy", ""),
        (f"sha256:{sbom['digest'][7:19]}… (referrer of 1.0)", "copy", ""),
        ("0.9", "delete (gone from the source)", ""),
    ]
    assert "prune: 1 tag(s) to delete after a successful run, within prune_limit 50" in text
