"""Signatures and referrers of a copied tag travel from a plain distribution source (Debian's
distribution 2.8, which has no referrers API: the fallback tag schemas carry them) to a target
without the API either, whatever the tag filter says; a resync with nothing new moves nothing.

Plan and transfer are driven directly (no Prefect flow): discover → make_plan → transfer.
"""

from __future__ import annotations

import json

import pytest

from adapters import create_adapter
from policies.models import Policy
from tasks.blobs import BlobCopier
from tasks.discover import discover
from tasks.plan import make_plan
from tasks.transfer import transfer_repository
from tests.support.corpus import MT_OCI_INDEX, MT_OCI_MANIFEST, ImageKind, sha256_digest
from tests.support.endpoints import client_for, endpoint_for
from tests.support.registry import RegistryProcess

pytestmark = pytest.mark.integration

COSIGN_SIMPLESIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
SBOM_TYPE = "application/spdx+json"
EMPTY = b"{}"
EMPTY_TYPE = "application/vnd.oci.empty.v1+json"


def hex_of(digest: str) -> str:
    return digest.removeprefix("sha256:")


def push_signature(corpus, repository: str, subject: str) -> str:
    """A cosign-style signature of ``subject`` under cosign's ``sha256-<hex>.sig`` tag."""
    payload = json.dumps({"critical": {"image": {"docker-manifest-digest": subject},
                                       "type": "cosign container image signature"}}).encode()
    config = json.dumps({"architecture": "", "os": "", "rootfs": {"type": "layers", "diff_ids": []}}).encode()
    corpus.push_blob(repository, payload)
    corpus.push_blob(repository, config)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": MT_OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "size": len(config),
                   "digest": sha256_digest(config)},
        "layers": [{"mediaType": COSIGN_SIMPLESIGNING, "size": len(payload), "digest": sha256_digest(payload),
                    "annotations": {"dev.cosignproject.cosign/signature": "MEUCIQDfake"}}],
    }).encode()
    return corpus.push_manifest(repository, f"sha256-{hex_of(subject)}.sig", manifest, MT_OCI_MANIFEST)


def push_artifact(corpus, repository: str, subject: str, subject_size: int, name: str) -> dict:
    """An OCI 1.1 artifact whose ``subject`` is ``subject``, pushed by digest alone; its
    descriptor as a referrers index lists it."""
    document = json.dumps({"spdxVersion": "SPDX-2.3", "name": name}).encode()
    corpus.push_blob(repository, document)
    corpus.push_blob(repository, EMPTY)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": MT_OCI_MANIFEST, "artifactType": SBOM_TYPE,
        "config": {"mediaType": EMPTY_TYPE, "size": len(EMPTY), "digest": sha256_digest(EMPTY)},
        "layers": [{"mediaType": SBOM_TYPE, "size": len(document), "digest": sha256_digest(document)}],
        "subject": {"mediaType": MT_OCI_MANIFEST, "size": subject_size, "digest": subject},
        "annotations": {"org.example.name": name},
    }).encode()
    digest = corpus.push_manifest(repository, sha256_digest(manifest), manifest, MT_OCI_MANIFEST)
    return {"mediaType": MT_OCI_MANIFEST, "digest": digest, "size": len(manifest),
            "artifactType": SBOM_TYPE, "annotations": {"org.example.name": name}}


def push_fallback_index(corpus, repository: str, subject: str, descriptors: list[dict]) -> None:
    """The ``sha256-<hex>`` index a client writes on a registry without the referrers API."""
    index = json.dumps({"schemaVersion": 2, "mediaType": MT_OCI_INDEX, "manifests": descriptors}).encode()
    corpus.push_manifest(repository, f"sha256-{hex_of(subject)}", index, MT_OCI_INDEX)


async def replicate(src: RegistryProcess, dst: RegistryProcess, policy: Policy):
    source = create_adapter("docker-registry", endpoint_for(src))
    target = create_adapter("docker-registry", endpoint_for(dst))
    try:
        found = await discover(source, policy)
        plan = await make_plan(source, target, policy, found)
        results = [await transfer_repository(source.client, target.client, spec,
                                             BlobCopier(source.client, target.client))
                   for spec in plan.specs(policy)]
        return plan, results, source.client.referrers_api, target.client.referrers_api
    finally:
        await source.aclose()
        await target.aclose()


async def test_signature_and_oci_referrer_follow_the_selected_tag_only(make_registry, make_corpus):
    src, dst = make_registry("anonymous"), make_registry("anonymous")
    corpus = make_corpus(src)
    v1 = corpus.push("app", ["v1"], ImageKind.OCI)
    v2 = corpus.push("app", ["v2"], ImageKind.DOCKER)
    v1_size = len(v1.image.manifest.data)
    sig_v1 = push_signature(corpus, "app", v1.digest)
    push_signature(corpus, "app", v2.digest)
    sbom = push_artifact(corpus, "app", v1.digest, v1_size, "sbom")
    push_fallback_index(corpus, "app", v1.digest, [sbom])
    sig_sbom = push_signature(corpus, "app", sbom["digest"])  # a referrer of a referrer
    policy = Policy(name="p", src_registry="s", dest_registry="d",
                    filters=[{"type": "name", "value": "app"}, {"type": "tag", "value": "v1"}])
    v1_index, v1_sig = f"sha256-{hex_of(v1.digest)}", f"sha256-{hex_of(v1.digest)}.sig"
    sbom_sig = f"sha256-{hex_of(sbom['digest'])}.sig"

    plan, results, source_api, target_api = await replicate(src, dst, policy)

    assert (source_api, target_api) == (False, False)  # each asked, answered 404, remembered
    assert src.count_requests("GET", r"/v2/app/referrers/.*") == 1
    [repository] = plan.repositories
    assert {(t.tag, t.subject, t.action) for t in repository.tags} == {
        ("v1", None, "copy"), (v1_sig, v1.digest, "copy"), (sbom["digest"], v1.digest, "copy"),
        (sbom_sig, sbom["digest"], "copy")}
    [result] = results
    assert result.status == "Succeeded", result.error
    assert result.tags[0].tag == "v1"  # the subject goes first
    async with client_for(dst) as target:
        assert sorted(await target.list_tags("app")) == sorted(["v1", v1_sig, v1_index, sbom_sig])
        for ref, digest in (("v1", v1.digest), (v1_sig, sig_v1), (sbom["digest"], sbom["digest"]),
                            (sbom_sig, sig_sbom)):
            assert (await target.get_manifest("app", ref)).digest == digest
        index = await target.get_manifest("app", v1_index)
        assert json.loads(index.raw)["manifests"] == [sbom]

    # Nothing new: every tag and referrer is planned identical and nothing is pushed.
    mark = dst.log_mark()
    again, results, _, _ = await replicate(src, dst, policy)
    assert results == []
    assert sorted(t.action for t in again.repositories[0].tags) == ["identical"] * 4
    assert dst.count_requests("PUT", since=mark) == dst.count_requests("POST", since=mark) == 0

    # A new referrer of the unchanged image travels alone; the target's index keeps the old one.
    # An orphan signature (its subject nowhere) stays behind even under a "*" filter.
    vex = push_artifact(corpus, "app", v1.digest, v1_size, "vex")
    push_fallback_index(corpus, "app", v1.digest, [vex])  # the source's index lost the sbom
    orphan = f"sha256-{'0' * 64}.sig"
    corpus.push_manifest("app", orphan, *_manifest_of(corpus, "app", v1_sig))
    everything = Policy(name="p", src_registry="s", dest_registry="d",
                        filters=[{"type": "name", "value": "app"}, {"type": "tag", "value": "*"}])
    mark = dst.log_mark()
    _, [result], _, _ = await replicate(src, dst, everything)
    v2_sig = f"sha256-{hex_of(v2.digest)}.sig"
    assert sorted((t.tag, t.status) for t in result.tags) == sorted([
        ("v2", "copied"), (v2_sig, "copied"), (vex["digest"], "copied")])
    async with client_for(dst) as target:
        index = await target.get_manifest("app", v1_index)
        assert json.loads(index.raw)["manifests"] == [sbom, vex]
        assert await target.head_manifest("app", orphan) is None
        assert sorted(await target.list_tags("app")) == sorted(
            ["v1", "v2", v1_sig, v2_sig, v1_index, sbom_sig])
    # v2, its signature, the new referrer by digest, then v1's index with both entries.
    assert dst.count_requests("PUT", r"/v2/app/manifests/.*", since=mark) == 4


def _manifest_of(corpus, repository: str, ref: str) -> tuple[bytes, str]:
    response = corpus.client.get_manifest(repository, ref)
    return response.content, response.headers["Content-Type"]
