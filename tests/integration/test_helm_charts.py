"""Helm charts end to end (issue #5 item 6): an OCI chart pushed as ``helm push`` does, and
ChartMuseum charts (one signed, with its .prov), replicated by the real flow into a real OCI
registry; then pulled the way Helm pulls (manifest with Helm's Accept list, every blob by
digest) and read by skopeo. A second run copies nothing: the same charts make the same digests.

The ChartMuseum is tests/support/fake_chartmuseum.py on loopback; the registries are real, so is
Prefect (the session's server). Until the lead wires "chartmuseum" into ADAPTERS, the CLI runs
with the adapter registered the way a plugin would register it.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from adapters.oci import DOCKER_MANIFEST_LIST, DOCKER_MANIFEST_V2, OCI_INDEX, OCI_MANIFEST
from adapters.oci.mediatypes import HELM_CHART_CONTENT, HELM_CHART_PROVENANCE, HELM_CONFIG
from tests.support.corpus import RegistryClient
from tests.support.fake_chartmuseum import FakeChartMuseum, chart_tgz, chart_yaml_of, provenance
from tests.support.prefect_server import PrefectServer
from tests.support.registry import RegistryProcess
from tests.support.skopeo import inspect_raw

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# What Helm (oras-go) accepts when it resolves a chart reference.
HELM_ACCEPT = ", ".join([DOCKER_MANIFEST_V2, DOCKER_MANIFEST_LIST, OCI_MANIFEST, OCI_INDEX,
                         "application/vnd.oci.artifact.manifest.v1+json"])
MUSEUM_USER, MUSEUM_PASSWORD = "reader", "museum-password"
CLI = ("import sys, adapters; from adapters.chartmuseum import ChartMuseumAdapter; "
       "adapters.ADAPTERS.setdefault('chartmuseum', ChartMuseumAdapter); "
       "from regflow_cli.main import main; main(sys.argv[1:])")
CONFIG = """\
version: 1
registries:
  - {{name: src, type: docker-registry, url: "{src}"}}
  - {{name: dst, type: docker-registry, url: "{dst}"}}
  - name: museum
    type: chartmuseum
    url: "{museum}"
    credential: {{type: basic, access_key: {user}, access_secret: "{password}"}}
policies:
  - name: oci-charts
    src_registry: src
    dest_registry: dst
    dest_namespace: oci
    filters: [{{type: name, value: "charts/**"}}]
  - name: museum-charts
    src_registry: museum
    dest_registry: dst
    dest_namespace: museum
"""


def regflow(server: PrefectServer, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = server.env() | {"REGFLOW_HOME": str(home)}
    env = {k: v for k, v in env.items() if not k.startswith("REGFLOW_") or k == "REGFLOW_HOME"}
    return subprocess.run([sys.executable, "-c", CLI, *args], env=env, text=True, capture_output=True,
                          timeout=300, cwd=Path(__file__).resolve().parents[2])


def replicate(server: PrefectServer, home: Path, policy: str) -> dict[str, object]:
    done = regflow(server, home, "replicate", policy, "--json")
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-3000:])
    execution: dict[str, object] = json.loads(done.stdout)
    return execution


def helm_push(registry: RegistryProcess, repository: str, tgz: bytes, prov: bytes) -> bytes:
    """What ``helm push`` (with a .prov beside the package) puts in a registry; the manifest bytes."""
    meta = chart_yaml_of(tgz)
    config = json.dumps(meta, separators=(",", ":")).encode()
    with RegistryClient(registry.url) as client:
        layers = []
        for media_type, data in ((HELM_CHART_CONTENT, tgz), (HELM_CHART_PROVENANCE, prov)):
            layers.append({"mediaType": media_type, "digest": client.push_blob(repository, data),
                           "size": len(data)})
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": HELM_CONFIG, "digest": client.push_blob(repository, config),
                       "size": len(config)},
            "layers": layers,
            "annotations": {"org.opencontainers.image.created": "2024-05-06T07:08:09Z",
                            "org.opencontainers.image.title": meta["name"],
                            "org.opencontainers.image.version": meta["version"]},
        }, separators=(",", ":")).encode()
        client.push_manifest(repository, str(meta["version"]).replace("+", "_"), manifest, OCI_MANIFEST)
    return manifest


def helm_pull(registry: RegistryProcess, repository: str, tag: str) -> tuple[bytes, dict[str, bytes]]:
    """Pull as Helm does: resolve the tag with Helm's Accept list, then fetch config and layers
    by digest and check each against its descriptor. Returns the manifest bytes and the blobs by
    media type."""
    with RegistryClient(registry.url) as client:
        response = client.get_manifest(repository, tag, accept=HELM_ACCEPT)
        assert response.headers["Content-Type"] == OCI_MANIFEST
        raw = response.content
        manifest = json.loads(raw)
        assert manifest["mediaType"] == OCI_MANIFEST
        assert manifest["config"]["mediaType"] == HELM_CONFIG
        blobs = {}
        for descriptor in [manifest["config"], *manifest["layers"]]:
            data = client.get_blob(repository, descriptor["digest"])
            assert "sha256:" + hashlib.sha256(data).hexdigest() == descriptor["digest"]
            assert len(data) == descriptor["size"]
            blobs[descriptor["mediaType"]] = data
    return raw, blobs


def tags_of(execution: dict[str, object]) -> list[tuple[str, str, str, str]]:
    tasks = execution["tasks"]
    assert isinstance(tasks, list)
    return sorted((t["target"], o["tag"], o["status"], o["reason"]) for t in tasks for o in t["tags"])


def test_oci_and_chartmuseum_charts_replicate_to_an_oci_registry_and_pull_like_helm(
        prefect_server, make_registry, tmp_path):
    src, dst = make_registry("anonymous"), make_registry("anonymous")
    oci_chart = chart_tgz("web", "0.4.0", home="https://web.example")
    oci_prov = provenance(oci_chart, "web-0.4.0.tgz")
    oci_manifest = helm_push(src, "charts/web", oci_chart, oci_prov)

    museum = FakeChartMuseum(users={MUSEUM_USER: MUSEUM_PASSWORD})
    signed = chart_tgz("shop", "1.0.0", maintainers=[{"name": "Ann", "email": "ann@example.com"}])
    signed_prov = provenance(signed, "shop-1.0.0.tgz")
    museum.add(signed, signed_prov)
    # Incompressible filler: over 2 KiB, so served chunked like ChartMuseum does.
    unsigned = chart_tgz("shop", "1.1.0+build.7", files={"README.md": os.urandom(3000).hex().encode()})
    museum.add(unsigned)

    home = tmp_path / "home"
    with museum.serve():
        config = tmp_path / "regflow.yaml"
        config.write_text(CONFIG.format(src=src.url, dst=dst.url, museum=museum.url, user=MUSEUM_USER,
                                        password=MUSEUM_PASSWORD))
        applied = regflow(prefect_server, home, "apply", "-f", str(config))
        assert applied.returncode == 0, applied.stderr[-3000:]

        first_oci = replicate(prefect_server, home, "oci-charts")
        first_museum = replicate(prefect_server, home, "museum-charts")
        assert (first_oci["status"], first_museum["status"]) == ("Succeeded", "Succeeded")
        assert tags_of(first_oci) == [("oci/web", "0.4.0", "copied", "")]
        assert tags_of(first_museum) == [("museum/shop", "1.0.0", "copied", ""),
                                         ("museum/shop", "1.1.0_build.7", "copied", "")]

        # The OCI chart arrives byte for byte; Helm and skopeo read it like the source's.
        raw, blobs = helm_pull(dst, "oci/web", "0.4.0")
        assert raw == oci_manifest
        assert (blobs[HELM_CHART_CONTENT], blobs[HELM_CHART_PROVENANCE]) == (oci_chart, oci_prov)
        assert inspect_raw(dst.ref("oci/web", "0.4.0")) == oci_manifest

        # The ChartMuseum charts arrive as OCI charts, files unchanged, the .prov where there was one.
        raw, blobs = helm_pull(dst, "museum/shop", "1.0.0")
        assert (blobs[HELM_CHART_CONTENT], blobs[HELM_CHART_PROVENANCE]) == (signed, signed_prov)
        config_json = json.loads(blobs[HELM_CONFIG])
        assert (config_json["name"], config_json["version"]) == ("shop", "1.0.0")
        annotations = json.loads(raw)["annotations"]
        assert annotations["org.opencontainers.image.authors"] == "Ann (ann@example.com)"
        assert inspect_raw(dst.ref("museum/shop", "1.0.0")) == raw
        raw, blobs = helm_pull(dst, "museum/shop", "1.1.0_build.7")
        assert set(blobs) == {HELM_CONFIG, HELM_CHART_CONTENT} and blobs[HELM_CHART_CONTENT] == unsigned
        assert json.loads(blobs[HELM_CONFIG])["version"] == "1.1.0+build.7"
        assert inspect_raw(dst.ref("museum/shop", "1.1.0_build.7")) == raw

        # ChartMuseum saw our credentials on every request, and only its chart routes were read.
        assert all(s.authorization for s in museum.requests if s.target != "/health")
        files_before = [s for s in museum.requests if s.target.startswith("/charts/")]

        # Nothing changed: the same bytes give the same digests, and nothing is copied again.
        second_oci = replicate(prefect_server, home, "oci-charts")
        second_museum = replicate(prefect_server, home, "museum-charts")
    for second in (second_oci, second_museum):
        assert second["status"] == "Succeeded"
        assert {(status, reason) for _, _, status, reason in tags_of(second)} == {
            ("skipped", "identical on target")}
    assert len(tags_of(second_museum)) == 2
    # A resync asks ChartMuseum once per file to name each digest (a .tgz's headers give its size,
    # a chunked one is read through; a .prov is read or 404), and streams nothing.
    files_after = [s for s in museum.requests if s.target.startswith("/charts/")]
    assert len(files_after) - len(files_before) == 4  # two versions: .tgz and .prov each
