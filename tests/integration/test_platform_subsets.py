"""A policy's ``platforms`` against the real registry: planned (what ``--dry-run`` shows) and
transferred by the task-level functions, in both ``platform_index`` modes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from adapters import Adapter, create_adapter
from adapters.endpoint import Endpoint
from adapters.oci import Digest
from policies.models import Policy, parse_config
from policies.store import Store
from tasks.blobs import BlobCopier
from tasks.discover import RepositoryTags
from tasks.models import TagPlan, TransferResult, TransferSpec
from tasks.plan import Plan, make_plan
from tasks.transfer import transfer_repository
from tasks.verify import verify_policy
from tests.support.corpus import ImageKind, PushedTag
from tests.support.endpoints import endpoint_for
from tests.support.registry import RegistryProcess
from tests.support.skopeo import inspect_raw_digest

pytestmark = pytest.mark.integration

FOUR = (("amd64", None), ("arm64", "v8"), ("arm", "v7"), ("s390x", None))
REPO = "app/multi"


def policy(mode: str, platforms: tuple[str, ...] = ("linux/amd64",)) -> Policy:
    # referrers off: this module is about platforms; the referrers' own tests cover theirs.
    return Policy(name="p", src_registry="s", dest_registry="d", platforms=list(platforms),
                  platform_index=mode, referrers=False)


@asynccontextmanager
async def adapters(src: RegistryProcess, dst: RegistryProcess) -> AsyncIterator[tuple[Adapter, Adapter]]:
    source = create_adapter("docker-registry", endpoint_for(src))
    target = create_adapter("docker-registry", endpoint_for(dst))
    try:
        yield source, target
    finally:
        await source.aclose()
        await target.aclose()


async def plan_and_copy(src: RegistryProcess, dst: RegistryProcess, chosen: Policy,
                        tags: list[str]) -> tuple[Plan, TransferResult]:
    async with adapters(src, dst) as (source, target):
        plan = await make_plan(source, target, chosen, [RepositoryTags(repository=REPO, tags=tags)],
                               measure=True)
        [spec] = plan.specs(chosen)
        result = await transfer_repository(source.client, target.client, spec,
                                           BlobCopier(source.client, target.client))
    return plan, result


def children(pushed: PushedTag) -> dict[str, Any]:
    """The four children by architecture, with their blobs."""
    return {c.platform["architecture"]: c for c in pushed.image.children if c.platform}


@pytest.mark.parametrize("kind", [ImageKind.OCI_INDEX, ImageKind.DOCKER_LIST])
async def test_rewrite_pushes_an_index_of_exactly_the_chosen_child(make_registry, make_corpus, kind):
    src, dst = make_registry("anonymous"), make_registry("anonymous")
    pushed = make_corpus(src).push(REPO, ["1.0"], kind, platforms=FOUR)
    by_arch = children(pushed)

    plan, result = await plan_and_copy(src, dst, policy("rewrite"), ["1.0"])

    [planned] = plan.repositories[0].tags
    amd64 = by_arch["amd64"]
    assert planned.platforms == ["linux/amd64"]
    # At most the new index, the amd64 image and its blobs: nothing of the other three.
    assert planned.bytes is not None
    assert 0 < planned.bytes < len(pushed.manifest) + amd64.manifest.size + sum(
        b.size for b in amd64.blobs().values()) + 1
    [outcome] = result.tags
    assert outcome.status == "copied", outcome.reason
    on_target = Digest(inspect_raw_digest(dst.ref(REPO, "1.0")))
    assert outcome.digest == pushed.digest and outcome.pushed_digest == on_target != pushed.digest
    assert f"index rewritten for linux/amd64: {on_target}" == outcome.reason
    src_index = json.loads(pushed.manifest)
    async with adapters(src, dst) as (_, target):
        rewritten = await target.client.get_manifest(REPO, "1.0")
        index = json.loads(rewritten.raw)
        assert rewritten.media_type == pushed.media_type
        assert index["manifests"] == [m for m in src_index["manifests"] if m["digest"] == amd64.digest]
        assert await target.client.head_manifest(REPO, amd64.digest) is not None
        for arch in ("arm64", "arm", "s390x"):
            assert await target.client.head_manifest(REPO, by_arch[arch].digest) is None
            assert await target.client.blob_exists(REPO, Digest(by_arch[arch].config.digest)) is None

    # A second run plans the rewritten index on the target as identical: no transfer at all.
    # Verification expects that index, and only the amd64 image.
    mark = dst.log_mark()
    async with adapters(src, dst) as (source, target):
        found = [RepositoryTags(repository=REPO, tags=["1.0"])]
        again = await make_plan(source, target, policy("rewrite"), found)
        assert again.specs(policy("rewrite")) == []
        assert [(t.status, t.reason, t.pushed_digest) for t in again.repositories[0].settled()] == [
            ("skipped", "identical on target", on_target)]
        report = await verify_policy(source, target, policy("rewrite"), found=found)
        assert report.ok and report.checked_tags == 1, report.problems
    assert dst.count_requests("PUT", since=mark) == 0


async def test_keep_on_distribution_2_fails_the_tag_and_names_rewrite(make_registry, make_corpus,
                                                                    monkeypatch):
    """CNCF distribution 2.x checks every child of an index pushed to it: the source index
    cannot be kept there without its other platforms, and the tag says so. The next such tag
    fails before sending anything."""
    monkeypatch.setattr("tasks.transfer.TAG_CONCURRENCY", 1)  # the tags one after the other
    src, dst = make_registry("anonymous"), make_registry("anonymous")
    corpus = make_corpus(src)
    first = corpus.push(REPO, ["1.0"], ImageKind.OCI_INDEX, platforms=FOUR)
    corpus.push(REPO, ["2.0"], ImageKind.OCI_INDEX, platforms=FOUR)
    mark = dst.log_mark()

    plan, result = await plan_and_copy(src, dst, policy("keep"), ["1.0", "2.0"])

    assert [t.platforms for t in plan.repositories[0].tags] == [["linux/amd64"]] * 2
    for outcome in result.tags:
        assert outcome.status == "failed" and not outcome.transient
        assert outcome.reason.startswith("ConfigError: platform_index: the target refuses an index")
        assert "set platform_index: rewrite" in outcome.reason
    # Only the first tag's amd64 image went over before the refusal.
    assert dst.count_requests("POST", since=mark) == len(children(first)["amd64"].blobs())
    async with adapters(src, dst) as (_, target):
        assert await target.client.head_manifest(REPO, "1.0") is None
        assert await target.client.head_manifest(REPO, "2.0") is None


async def test_keep_pushes_the_source_index_byte_for_byte_where_the_target_accepts_it(
        make_registry, make_corpus, tmp_path: Path):
    """An OCI layout holds an index whatever of it is there, as registries configured for sparse
    indexes (distribution 3's validation.manifests.indexes.platforms) do."""
    src = make_registry("anonymous")
    pushed = make_corpus(src).push(REPO, ["1.0"], ImageKind.OCI_INDEX, platforms=FOUR)
    by_arch = children(pushed)
    source = create_adapter("docker-registry", endpoint_for(src))
    target = create_adapter("oci-layout", Endpoint(url=(tmp_path / "mirror").as_uri()))
    layout = target.client
    spec = TransferSpec(source_repository=REPO, target_repository=REPO, tags=[TagPlan(tag="1.0")],
                        platforms=["linux/amd64"], platform_index="keep")
    try:
        result = await transfer_repository(source.client, layout, spec, BlobCopier(source.client, layout))
        [outcome] = result.tags
        assert outcome.status == "copied", outcome.reason
        assert outcome.pushed_digest is None and outcome.digest == pushed.digest
        assert outcome.reason == ("only linux/amd64 copied; the source index pushed as is "
                                  "(other platforms absent)")
        assert await layout.head_manifest(REPO, by_arch["amd64"].digest) is not None
        assert await layout.blob_exists(REPO, Digest(by_arch["amd64"].layers[-1].digest)) is not None
        for arch in ("arm64", "arm", "s390x"):
            assert await layout.head_manifest(REPO, by_arch[arch].digest) is None
        assert inspect_raw_digest(f"oci:{tmp_path / 'mirror' / REPO}:1.0") == pushed.digest
        # Verification expects the source index there and looks only into its amd64 image.
        found = [RepositoryTags(repository=REPO, tags=["1.0"])]
        report = await verify_policy(source, target, policy("keep"), found=found)
        assert report.ok and report.checked_blobs == len(by_arch["amd64"].blobs()), report.problems
    finally:
        await source.aclose()
        await target.aclose()


async def test_a_single_platform_image_of_another_platform_is_skipped_with_the_reason(make_registry,
                                                                                     make_corpus):
    src, dst = make_registry("anonymous"), make_registry("anonymous")
    corpus = make_corpus(src)
    corpus.push(REPO, ["arm"], ImageKind.DOCKER, arch="arm64", variant="v8")
    amd64 = corpus.push(REPO, ["amd"], ImageKind.OCI)

    plan, result = await plan_and_copy(src, dst, policy("keep"), ["amd", "arm"])

    planned = {t.tag: t for t in plan.repositories[0].tags}
    reason = "image is linux/arm64/v8, not one of the policy's platforms linux/amd64"
    assert (planned["amd"].platforms, planned["amd"].platform_skip) == (["linux/amd64"], "")
    assert (planned["arm"].platforms, planned["arm"].platform_skip, planned["arm"].bytes) == ([], reason, 0)
    outcomes = {t.tag: t for t in result.tags}
    assert (outcomes["arm"].status, outcomes["arm"].reason) == ("skipped", reason)
    assert outcomes["amd"].status == "copied"
    assert inspect_raw_digest(dst.ref(REPO, "amd")) == amd64.digest
    async with adapters(src, dst) as (source, target):
        assert await target.client.head_manifest(REPO, "arm") is None
        # Verification does not expect the image the platforms leave behind.
        found = [RepositoryTags(repository=REPO, tags=["amd", "arm"])]
        report = await verify_policy(source, target, policy("keep"), found=found)
        assert report.ok and report.checked_tags == 2, report.problems


CONFIG = """\
version: 1
registries:
  - {{name: src, type: docker-registry, url: "{src}"}}
  - {{name: dst, type: docker-registry, url: "{dst}"}}
policies:
  - name: amd64-only
    src_registry: src
    dest_registry: dst
    platforms: [linux/x86_64]
    platform_index: rewrite
    referrers: false
"""


def test_dry_run_shows_the_platforms_a_run_would_move(make_registry, make_corpus, tmp_path, monkeypatch):
    src, dst = make_registry("anonymous"), make_registry("anonymous")
    corpus = make_corpus(src)
    corpus.push(REPO, ["1.0"], ImageKind.DOCKER_LIST, platforms=FOUR)
    corpus.push(REPO, ["arm"], ImageKind.OCI, arch="arm64", variant="v8")
    monkeypatch.setenv("REGFLOW_HOME", str(tmp_path / "home"))
    with Store() as store:  # in process: the one CLI call is the dry run
        store.apply(parse_config(yaml.safe_load(CONFIG.format(src=src.url, dst=dst.url))))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")} | {"COLUMNS": "250"}

    command = [sys.executable, "-m", "regflow_cli.main", "replicate", "amd64-only", "--dry-run"]
    result = subprocess.run(command, env=env, text=True, capture_output=True, timeout=120)

    assert result.returncode == 0, result.stderr
    rows = {cells[3]: cells for line in result.stdout.splitlines()
            if len(cells := [c.strip() for c in line.split("│")]) > 6 and cells[1] == REPO}
    assert rows["1.0"][6] == "linux/amd64"
    assert rows["arm"][6] == "none: image is linux/arm64/v8, not one of the policy's platforms linux/amd64"
    assert dst.count_requests("PUT") == 0  # a dry run changes nothing
