"""`regflow verify` and a policy's `verify: true` against real registries (harbor #22644: an
execution that "succeeded" while the target had lost blobs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from adapters.oci import Digest
from tasks.blobs import BlobCopier
from tasks.models import TagPlan, TransferSpec
from tasks.transfer import transfer_repository
from tests.support.corpus import ImageKind, remove_blob_data
from tests.support.endpoints import client_for
from tests.support.registry import RegistryProcess

pytestmark = pytest.mark.integration

CONFIG = """\
version: 1
registries:
  - {{name: src, type: docker-registry, url: "{src}"}}
  - name: dst
    type: docker-registry
    url: {dst}
    credential: {{type: basic, access_key: {dst_user}, access_secret: "{dst_password}"}}
policies:
  - name: mirror
    src_registry: src
    dest_registry: dst
    dest_namespace: mirror
    dest_namespace_replace_count: 1
    filters: [{{type: name, value: "team-a/**"}}, {{type: tag, value: "1.*"}}]
  - name: checked
    src_registry: src
    dest_registry: dst
    dest_namespace: checked
    dest_namespace_replace_count: 1
    filters: [{{type: name, value: "team-a/**"}}]
    verify: true
"""


# The embedded Prefect server's first start (migrations) can take longer than Prefect's 20 s
# default on a loaded 2-core machine; the product's timeout is not what these tests are about.
EPHEMERAL_STARTUP_SECONDS = "120"


def regflow(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "REGFLOW_"))}
    env |= {"REGFLOW_HOME": str(home),
            "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": EPHEMERAL_STARTUP_SECONDS}
    return subprocess.run([sys.executable, "-m", "regflow_cli.main", *args], env=env, text=True,
                          capture_output=True, timeout=300)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # One home for the module: the embedded Prefect database is created once.
    return tmp_path_factory.mktemp("regflow-verify-home")


def apply(home: Path, src: RegistryProcess, dst: RegistryProcess) -> None:
    path = home.parent / f"{home.name}.yaml"
    path.write_text(CONFIG.format(src=src.url, dst=dst.url, dst_user=dst.username, dst_password=dst.password))
    applied = regflow(home, "apply", "-f", str(path))
    assert applied.returncode == 0, applied.stderr


async def copy(src: RegistryProcess, dst: RegistryProcess, source_repo: str, target_repo: str,
               tags: list[str]) -> None:
    async with client_for(src) as source, client_for(dst) as target:
        spec = TransferSpec(source_repository=source_repo, target_repository=target_repo,
                            tags=[TagPlan(tag=t) for t in tags])
        result = await transfer_repository(source, target, spec, BlobCopier(source, target))
    assert result.status == "Succeeded", result.error


async def lose_blob(dst: RegistryProcess, repository: str, digest: str) -> None:
    """The blob's bytes vanish from the target's storage, as in harbor #22644."""
    remove_blob_data(dst, digest)
    async with client_for(dst) as target:
        still_cached = await target.blob_exists(repository, Digest(digest)) is not None
    if still_cached:  # the registry's in-memory blob descriptor cache still answers for it
        dst.restart()
    async with client_for(dst) as target:
        assert await target.blob_exists(repository, Digest(digest)) is None


def verify_json(home: Path, policy: str) -> tuple[int, dict[str, object]]:
    result = regflow(home, "verify", policy, "--json")
    assert result.returncode in (0, 1), result.stderr
    return result.returncode, json.loads(result.stdout)


async def test_verify_finds_a_lost_blob_and_a_moved_tag(home, make_registry, make_corpus):
    src, dst = make_registry("anonymous"), make_registry("basic")
    corpus = make_corpus(src)
    single = corpus.push("team-a/app", ["1.0"], ImageKind.DOCKER)
    multi = corpus.push("team-a/app", ["1.1"], ImageKind.OCI_INDEX)
    corpus.push("team-a/app", ["2.0"], ImageKind.OCI)  # not selected: the tag filter is 1.*
    corpus.push("team-b/other", ["1.0"], ImageKind.OCI)  # not selected: the name filter
    await copy(src, dst, "team-a/app", "mirror/app", ["1.0", "1.1"])
    apply(home, src, dst)

    code, report = verify_json(home, "mirror")
    assert code == 0 and report["ok"] is True and report["problems"] == []
    assert report["checked_tags"] == 2
    # Each blob asked once: the amd64 base layer is shared by 1.0 and 1.1's first child.
    assert report["checked_blobs"] == len(single.blobs | multi.blobs) < len(single.blobs) + len(multi.blobs)
    plain = regflow(home, "verify", "mirror")
    assert plain.returncode == 0 and "OK" in plain.stdout

    lost = multi.image.children[1].layers[-1].digest  # a layer of the arm64 child, of no other image
    await lose_blob(dst, "mirror/app", lost)
    code, report = verify_json(home, "mirror")
    assert code == 1 and report["ok"] is False
    problems = report["problems"]
    assert isinstance(problems, list) and len(problems) == 1
    assert {k: problems[0][k] for k in ("repository", "target", "tag", "kind", "digest")} == {
        "repository": "team-a/app", "target": "mirror/app", "tag": "1.1", "kind": "missing-blob",
        "digest": lost}
    assert multi.image.children[1].digest in problems[0]["detail"]  # the manifest that needs it
    table = regflow(home, "verify", "mirror")
    assert table.returncode == 1
    assert "missing-blob" in table.stdout and lost in table.stdout and "1 problem(s)" in table.stdout

    # The source tag 1.0 moves on; the target still has the old image.
    moved = corpus.push("team-a/app", ["1.0"], ImageKind.DOCKER, created=99)
    code, report = verify_json(home, "mirror")
    assert code == 1
    found = sorted((p["tag"], p["kind"]) for p in report["problems"])  # type: ignore[union-attr]
    assert found == [("1.0", "digest-differs"), ("1.1", "missing-blob")]
    differs = next(p for p in report["problems"] if p["kind"] == "digest-differs")  # type: ignore[union-attr]
    assert differs["digest"] == moved.digest
    assert moved.digest in differs["detail"] and single.digest in differs["detail"]


async def test_verify_names_tags_the_target_never_got_and_refuses_bad_input(home, make_registry,
                                                                          make_corpus):
    src, dst = make_registry("anonymous"), make_registry("basic")
    corpus = make_corpus(src)
    pushed = corpus.push("team-a/app", ["1.0", "1.5"], ImageKind.OCI)
    await copy(src, dst, "team-a/app", "mirror/app", ["1.0"])
    apply(home, src, dst)

    code, report = verify_json(home, "mirror")
    assert code == 1
    assert [(p["tag"], p["kind"], p["digest"]) for p in report["problems"]] == [  # type: ignore[union-attr]
        ("1.5", "missing-tag", pushed.digest)]

    unknown = regflow(home, "verify", "no-such-policy")
    assert unknown.returncode == 2 and "no-such-policy" in unknown.stderr

    dst.stop()
    try:
        down = regflow(home, "verify", "mirror")
    finally:
        dst.start()
    assert down.returncode == 1 and "could not finish" in down.stderr


@pytest.mark.slow
async def test_a_verifying_policy_fails_the_execution_when_the_target_lost_a_blob(home, make_registry,
                                                                                 make_corpus):
    src, dst = make_registry("anonymous"), make_registry("basic")
    corpus = make_corpus(src)
    app = corpus.push("team-a/app", ["1.0"], ImageKind.DOCKER)
    corpus.push("team-a/sub/tool", ["2.0"], ImageKind.OCI_INDEX)
    apply(home, src, dst)

    first = regflow(home, "replicate", "checked", "--json")
    assert first.returncode == 0, first.stderr
    run1 = json.loads(first.stdout)
    assert run1["status"] == "Succeeded"
    assert run1["verify"]["ok"] is True and run1["verify"]["checked_tags"] == 2
    assert "verified 2 tags" in run1["message"]

    lost = app.image.layers[-1].digest
    await lose_blob(dst, "checked/app", lost)
    # A second run finds every tag identical and copies nothing: only verification sees the loss.
    second = regflow(home, "replicate", "checked", "--json")
    assert second.returncode == 1, second.stderr
    run2 = json.loads(second.stdout)
    assert run2["status"] == "Failed"
    assert all(t["status"] == "Succeeded" and t["copied"] == 0 for t in run2["tasks"])
    assert run2["message"].startswith("verification found 1 problem(s)")
    assert lost in run2["message"] and "checked/app:1.0" in run2["message"]
    assert [(p["target"], p["tag"], p["kind"], p["digest"]) for p in run2["verify"]["problems"]] == [
        ("checked/app", "1.0", "missing-blob", lost)]
