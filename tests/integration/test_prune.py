"""Mirror prune against real CNCF registries (deletion enabled, by digest only): within its
limit and scope, through the task-level functions the flow calls; and the delete rows of
``regflow replicate --dry-run`` (one CLI call)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import yaml

from adapters.native import NativeAdapter
from adapters.oci import Digest
from policies.models import Filter, Policy, parse_config
from policies.store import Store
from tasks.discover import discover
from tasks.prune import PruneReport, prune_after_run
from tests.support.corpus import CorpusBuilder, ImageKind
from tests.support.endpoints import endpoint_for
from tests.support.registry import RegistryProcess

pytestmark = pytest.mark.integration

# The name filter is a glob, so the prune walks the target's catalog for repositories gone from
# the source; the mapping is the identity, which it can undo.
FILTERS = [Filter(type="name", value="app*"), Filter(type="tag", value="[0-9]*")]


@asynccontextmanager
async def adapters(src: RegistryProcess,
                   dst: RegistryProcess) -> AsyncIterator[tuple[NativeAdapter, NativeAdapter]]:
    source, target = NativeAdapter(endpoint_for(src)), NativeAdapter(endpoint_for(dst))
    try:
        yield source, target
    finally:
        await source.aclose()
        await target.aclose()


async def run_prune(src: RegistryProcess, dst: RegistryProcess, policy: Policy, *,
                    force: bool = False) -> PruneReport:
    async with adapters(src, dst) as (source, target):
        found = await discover(source, policy)
        return await prune_after_run(source, target, policy, found, force=force)


def mirror(src: CorpusBuilder, dst: CorpusBuilder) -> Digest:
    """Source: app 1.0 and 2.0. Target: those, app 0.9 (gone from the source) with a cosign
    signature, app dev (outside the tag filter), app-gone 1.0 (a repository gone from the
    source) and other 0.9 (outside the name filter). Returns 0.9's digest."""
    for tag in ("1.0", "2.0"):
        image = src.factory.image(ImageKind.OCI, f"app:{tag}")
        src.push_image("app", image, [tag])
        dst.push_image("app", image, [tag])
    gone = dst.push("app", ["0.9"], ImageKind.DOCKER).digest
    dst.push("app", [f"sha256-{gone.removeprefix('sha256:')}.sig"], ImageKind.OCI, name="signature of 0.9")
    dst.push("app", ["dev"], ImageKind.OCI)
    dst.push("app-gone", ["1.0"], ImageKind.OCI)
    dst.push("other", ["0.9"], ImageKind.OCI)
    return Digest(gone)


async def test_prune_deletes_what_the_source_lost_in_its_scope_and_nothing_else(make_registry, make_corpus):
    src, dst = make_registry("anonymous"), make_registry("anonymous")
    target = make_corpus(dst)
    gone = mirror(make_corpus(src), target)
    policy = Policy(name="p", src_registry="src", dest_registry="dst", filters=FILTERS, prune=True)

    report = await run_prune(src, dst, policy)

    assert report.problem == ""
    outcomes = {(r.target_repository, t.tag): t.status for r in report.results for t in r.tags}
    signature = f"sha256-{gone.hex}.sig"
    assert outcomes == {("app", "0.9"): "deleted", ("app", signature): "deleted",
                        ("app-gone", "1.0"): "deleted"}
    assert target.client.tags("app") == ["1.0", "2.0", "dev"]
    assert target.client.tags("app-gone") == []
    assert target.client.tags("other") == ["0.9"]


async def test_over_the_limit_nothing_is_deleted_until_forced(make_registry, make_corpus):
    src, dst = make_registry("anonymous"), make_registry("anonymous")
    target = make_corpus(dst)
    mirror(make_corpus(src), target)
    policy = Policy(name="p", src_registry="src", dest_registry="dst", filters=FILTERS, prune=True,
                    prune_limit=2)

    refused = await run_prune(src, dst, policy)

    assert refused.problem == ("prune refused: 3 tags to delete, more than prune_limit 2; nothing deleted "
                               "(regflow replicate --force, or the run parameter force_prune, deletes them)")
    assert refused.results == []
    assert len(target.client.tags("app")) == 5 and target.client.tags("app-gone") == ["1.0"]

    forced = await run_prune(src, dst, policy, force=True)
    assert forced.problem == "" and sum(r.count("deleted") for r in forced.results) == 3
    assert target.client.tags("app") == ["1.0", "2.0", "dev"]


CONFIG = """\
version: 1
registries:
  - {{name: src, type: docker-registry, url: "{src}"}}
  - {{name: dst, type: docker-registry, url: "{dst}"}}
policies:
  - name: mirror
    src_registry: src
    dest_registry: dst
    filters: [{{type: name, value: "app*"}}, {{type: tag, value: "[0-9]*"}}]
    prune: true
    prune_limit: 1
"""


def test_dry_run_shows_the_delete_rows_and_the_limit(make_registry, make_corpus, tmp_path, monkeypatch):
    src, dst = make_registry("anonymous"), make_registry("anonymous")
    target = make_corpus(dst)
    mirror(make_corpus(src), target)
    home = tmp_path / "home"
    monkeypatch.setenv("REGFLOW_HOME", str(home))
    with Store() as store:  # in process: the one CLI call is the dry run
        store.apply(parse_config(yaml.safe_load(CONFIG.format(src=src.url, dst=dst.url))))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}

    result = subprocess.run([sys.executable, "-m", "regflow_cli.main", "replicate", "mirror", "--dry-run"],
                            env=env, text=True, capture_output=True, timeout=120)

    assert result.returncode == 0, result.stderr
    deletes = sorted(line.split("│")[3].strip() for line in result.stdout.splitlines() if "delete (" in line)
    # The signature's tag as the table shortens it (tests/integration/test_version_selection.py).
    short = target.client.manifest_digest("app", "0.9")[7:19]
    assert deletes == sorted(["0.9", "1.0", f"sha256-{short}….sig"])
    assert ("prune: the limit would stop it, 3 tags to delete are more than prune_limit 1: nothing would "
            "be deleted (--force deletes them)") in result.stdout
    assert len(target.client.tags("app")) == 5  # a dry run changes nothing
