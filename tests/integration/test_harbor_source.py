"""A Harbor-source policy with a label filter and a cosign signature tag replicates the artifact
and its signature to a distribution target (fake Harbor API + real registry).

The source is a real CNCF registry (htpasswd, robot-style user ``robot$ci``) behind the tests'
loopback proxy; the proxy answers Harbor's ``/api/v2.0`` itself with swagger-shaped JSON built
from what was really pushed, and forwards ``/v2/`` to the registry. The run is the real one:
``regflow apply`` then ``regflow replicate`` against a real Prefect server.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import pytest

from adapters.oci import OCI_MANIFEST
from tests.support.corpus import ImageKind, sha256_digest
from tests.support.endpoints import client_for
from tests.support.fake_harbor import API, artifact_json, project_json, repository_json
from tests.support.faultproxy import FaultProxy, respond
from tests.support.prefect_server import PrefectServer
from tests.support.skopeo import inspect_raw_digest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROBOT, ROBOT_SECRET = "robot$ci", "robot-Secret-42"
# The CLI as users run it, with the harbor type registered first: the lead wires ADAPTERS;
# until then this is what monkeypatch.setitem would be in-process.
BOOTSTRAP = (
    "import sys, adapters; from adapters.harbor import HarborAdapter; "
    "adapters.ADAPTERS.setdefault('harbor', HarborAdapter); "
    "from regflow_cli.main import main; main(sys.argv[1:])"
)
CONFIG = """\
version: 1
registries:
  - name: harbor
    type: harbor
    url: "{harbor}"
    credential: {{type: basic, access_key: "{robot}", access_secret: "${{HARBOR_PASSWORD}}"}}
  - {{name: dst, type: docker-registry, url: "{dst}"}}
policies:
  - name: prod-only
    src_registry: harbor
    dest_registry: dst
    filters:
      - {{type: label, value: prod}}
      - {{type: tag, value: "*.0"}}
"""
COSIGN_SIMPLESIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"


def regflow(server: PrefectServer, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = server.env() | {"REGFLOW_HOME": str(home), "HARBOR_PASSWORD": ROBOT_SECRET}
    return subprocess.run([sys.executable, "-c", BOOTSTRAP, *args], env=env, text=True,
                          capture_output=True, timeout=300)


def push_signature(corpus, repository: str, subject: str) -> str:
    """A cosign-style signature of ``subject`` under cosign's tag: an OCI manifest whose one
    small layer is the simple-signing payload. Returns the manifest's digest."""
    payload = json.dumps({"critical": {"identity": {"docker-reference": repository},
                                       "image": {"docker-manifest-digest": subject},
                                       "type": "cosign container image signature"},
                          "optional": None}).encode()
    config = json.dumps({"architecture": "", "os": "", "rootfs": {"type": "layers", "diff_ids": []},
                         "config": {}}).encode()
    corpus.push_blob(repository, payload)
    corpus.push_blob(repository, config)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "size": len(config),
                   "digest": sha256_digest(config)},
        "layers": [{"mediaType": COSIGN_SIMPLESIGNING, "size": len(payload),
                    "digest": sha256_digest(payload),
                    "annotations": {"dev.cosignproject.cosign/signature": "MEUCIQDfake"}}],
    }).encode()
    tag = f"sha256-{subject.removeprefix('sha256:')}.sig"
    return corpus.push_manifest(repository, tag, manifest, OCI_MANIFEST)


def serve_harbor_api(proxy: FaultProxy, answers: dict[str, object]) -> None:
    for path, body in answers.items():
        headers = {"Content-Type": "application/json"}
        if isinstance(body, list):
            headers["X-Total-Count"] = str(len(body))
        proxy.rule("GET", path, respond(200, headers, json.dumps(body)), nth=None)


def basic_user(header: str | None) -> str | None:
    if not header or not header.startswith("Basic "):
        return None
    return base64.b64decode(header[6:]).decode().partition(":")[0]


async def test_label_filter_and_cosign_signature_from_harbor(prefect_server, make_registry, make_corpus,
                                                             tmp_path):
    src = make_registry("basic", users={ROBOT: ROBOT_SECRET})
    dst = make_registry("anonymous")
    corpus = make_corpus(src)
    one = corpus.push("library/app", ["1.0"], ImageKind.OCI).digest
    two = corpus.push("library/app", ["2.0"], ImageKind.DOCKER).digest
    other = corpus.push("library/other", ["1.0"], ImageKind.OCI).digest
    sig_one = push_signature(corpus, "library/app", one)
    sig_two = push_signature(corpus, "library/app", two)

    proxy = FaultProxy(src).start()
    try:
        proxy.rule("GET", f"{API}/ping", respond(200, {"Content-Type": "text/plain"}, "Pong"), nth=None)
        serve_harbor_api(proxy, {
            f"{API}/projects": [project_json("library", public=True)],
            f"{API}/projects/library/repositories": [repository_json("library/app"),
                                                     repository_json("library/other")],
            f"{API}/projects/library/repositories/app/artifacts": [
                artifact_json(one, tags=["1.0"], labels=["prod"],
                              accessories=[("signature.cosign", sig_one)]),
                artifact_json(two, tags=["2.0"], accessories=[("signature.cosign", sig_two)]),
            ],
            f"{API}/projects/library/repositories/other/artifacts": [artifact_json(other, tags=["1.0"])],
        })
        config = tmp_path / "regflow.yaml"
        config.write_text(CONFIG.format(harbor=proxy.url, robot=ROBOT, dst=dst.url))
        home = tmp_path / "home"

        applied = regflow(prefect_server, home, "apply", "-f", str(config))
        assert applied.returncode == 0, applied.stderr
        pinged = regflow(prefect_server, home, "registry", "ping", "harbor")
        assert pinged.returncode == 0 and "harbor: healthy" in pinged.stdout, pinged.stdout + pinged.stderr

        ran = regflow(prefect_server, home, "replicate", "prod-only", "--json")
        assert ran.returncode == 0, ran.stdout + ran.stderr
        execution = json.loads(ran.stdout)
        assert execution["status"] == "Succeeded", execution

        listed = proxy.requests("GET", f"{API}/projects/library/repositories/app/artifacts")
        assert listed and "with_label=true" in listed[0].query and "with_accessory=true" in listed[0].query
        assert {basic_user(r.request_header("Authorization")) for r in listed} == {ROBOT}
    finally:
        proxy.close()

    sig_tag = f"sha256-{one.removeprefix('sha256:')}.sig"
    assert inspect_raw_digest(dst.ref("library/app", "1.0")) == one
    assert inspect_raw_digest(dst.ref("library/app", sig_tag)) == sig_one
    async with client_for(dst) as target:
        assert sorted(await target.list_tags("library/app")) == sorted(["1.0", sig_tag])
        assert await target.head_manifest("library/app", "2.0") is None
        assert await target.head_manifest("library/app", f"sha256-{two.removeprefix('sha256:')}.sig") is None
        assert await target.head_manifest("library/other", "1.0") is None
