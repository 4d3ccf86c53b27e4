"""Issue 18, item 4: ``regflow copy`` across registries, OCI layouts and archives, and the
``oci-layout`` registry type as a policy's target and source. Registries, skopeo (the witness of
what each place really holds) and Prefect are real; the CLI runs as a subprocess."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tasks.copy_image import PlatformChoice
from tests.support.corpus import MT_OCI_INDEX, MT_OCI_MANIFEST, CorpusBuilder, ImageKind, PushedTag
from tests.support.prefect_server import PrefectServer
from tests.support.registry import RegistryProcess
from tests.support.skopeo import inspect_raw, inspect_raw_digest, skopeo_copy

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# Until main.py registers the command, the subprocess adds it to the app itself; once it does,
# this is the console script unchanged.
_ENTRY = """\
from regflow_cli.main import app, main
from regflow_cli.copy import copy_command
if "copy" not in {c.name for c in app.registered_commands}:
    app.command(name="copy")(copy_command)
main()
"""

STORE_CONFIG = """\
version: 1
registries:
  - name: src
    type: docker-registry
    url: {src}
    credential: {{type: basic, access_key: {user}, access_secret: "${{SRC_PASSWORD}}"}}
"""

MIRROR_CONFIG = """\
version: 1
registries:
  - {{name: origin, type: docker-registry, url: "{src}"}}
  - {{name: carried, type: oci-layout, url: "{layouts}"}}
  - {{name: site, type: docker-registry, url: "{dst}"}}
policies:
  - name: to-directory
    src_registry: origin
    dest_registry: carried
    filters: [{{type: name, value: "team/**"}}]
  - name: from-directory
    src_registry: carried
    dest_registry: site
    verify: true
"""


def regflow(home: Path, *args: str, password: str | None = None,
            api_url: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "REGFLOW_"))}
    env["REGFLOW_HOME"] = str(home)
    if password is not None:
        env["SRC_PASSWORD"] = password
    if api_url is not None:
        env["PREFECT_API_URL"] = api_url
    return subprocess.run([sys.executable, "-c", _ENTRY, *args], env=env, text=True, capture_output=True,
                          timeout=300)


def copied(result: subprocess.CompletedProcess[str]) -> dict[str, object]:
    assert result.returncode == 0, result.stderr[-3000:]
    answer: dict[str, object] = json.loads(result.stdout)
    return answer


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    return path


@pytest.fixture
def registries(testbed_binaries: None) -> Iterator[tuple[RegistryProcess, RegistryProcess]]:
    with RegistryProcess("basic") as src, RegistryProcess("anonymous") as dst:
        yield src, dst


def test_copy_registry_to_oci_to_archive_to_registry_keeps_every_digest(home, tmp_path, registries,
                                                                        make_corpus):
    src, dst = registries
    corpus = make_corpus(src)
    index = corpus.push("team/app", ["1.0"], ImageKind.OCI_INDEX)
    (home / "regflow.yaml").write_text(STORE_CONFIG.format(src=src.url, user=src.username))
    assert regflow(home, "apply", "-f", str(home / "regflow.yaml"), password=src.password).returncode == 0

    # Registry -> oci:DIR, with the source's credentials from the store (the registry is basic-auth).
    layout, archive = tmp_path / "carried", tmp_path / "carried.tar"
    first = copied(regflow(home, "copy", f"docker://{src.host}/team/app:1.0", f"oci:{layout}:1.0",
                           "--all-platforms", "--json", password=src.password))
    assert (first["status"], first["digest"]) == ("copied", index.digest)
    assert inspect_raw_digest(f"oci:{layout}:1.0") == index.digest
    for child in index.children:
        assert (layout / "blobs/sha256" / child.removeprefix("sha256:")).is_file()

    # oci:DIR -> oci-archive:FILE: skopeo reads the archive; nothing half-made is left beside it.
    second = copied(regflow(home, "copy", f"oci:{layout}:1.0", f"oci-archive:{archive}:1.0",
                            "--all-platforms", "--json"))
    assert (second["status"], second["digest"]) == ("copied", index.digest)
    assert inspect_raw_digest(f"oci-archive:{archive}:1.0") == index.digest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["carried", "carried.tar", "home"]

    # oci-archive:FILE -> a registry not in the store: anonymous, TLS off falls back to HTTP.
    target = f"docker://{dst.host}/mirror/app:1.0"
    third = copied(regflow(home, "copy", f"oci-archive:{archive}:1.0", target, "--all-platforms",
                           "--dest-tls-verify=false", "--json"))
    assert (third["status"], third["digest"]) == ("copied", index.digest)
    assert inspect_raw(dst.ref("mirror/app", "1.0")) == index.manifest
    for child in index.children:
        assert inspect_raw_digest(dst.ref("mirror/app", child)) == child

    # Again: identical on the target, nothing sent, still a success.
    again = copied(regflow(home, "copy", f"oci-archive:{archive}:1.0", target, "--all-platforms",
                           "--dest-tls-verify=false", "--json"))
    assert (again["status"], again["bytes"], again["reason"]) == ("skipped", 0, "identical on target")

    # No secret in anything printed or written outside the store's sealed copy.
    assert src.password and src.password not in json.dumps([first, second, third])
    assert all(src.password.encode() not in p.read_bytes() for p in layout.rglob("*") if p.is_file())


def test_copy_picks_one_platform_of_an_index_as_skopeo(home, tmp_path, registries, make_corpus):
    src, _ = registries
    index = make_corpus(src).push("team/multi", ["1.0"], ImageKind.OCI_INDEX)
    (home / "regflow.yaml").write_text(STORE_CONFIG.format(src=src.url, user=src.username))
    assert regflow(home, "apply", "-f", str(home / "regflow.yaml"), password=src.password).returncode == 0
    children = json.loads(index.manifest)["manifests"]
    by_arch = {c["platform"]["architecture"]: c["digest"] for c in children}
    source = f"docker://{src.host}/team/multi:1.0"

    arm = copied(regflow(home, "copy", source, f"oci:{tmp_path / 'arm'}:1.0", "--platform", "linux/arm64",
                         "--json", password=src.password))
    assert (arm["digest"], arm["platform"]) == (by_arch["arm64"], "linux/arm64")
    assert inspect_raw_digest(f"oci:{tmp_path / 'arm'}:1.0") == by_arch["arm64"]

    # No flag: this machine's platform, as skopeo without --all.
    here = PlatformChoice.of_this_machine()
    default = regflow(home, "copy", source, f"oci:{tmp_path / 'here'}", "--json", password=src.password)
    if here.architecture in by_arch:
        assert copied(default)["digest"] == by_arch[here.architecture]
        # Without a tag the image is the layout's one unnamed entry, which skopeo reads as such.
        assert inspect_raw_digest(f"oci:{tmp_path / 'here'}") == by_arch[here.architecture]
    else:
        assert default.returncode == 2 and "no image for" in default.stderr

    # A platform the index lacks: bad input, one line, nothing written.
    missing = regflow(home, "copy", source, f"oci:{tmp_path / 'none'}:1.0", "--platform", "linux/s390x",
                      password=src.password)
    assert missing.returncode == 2, missing.stderr
    assert "no image for linux/s390x" in missing.stderr and "linux/amd64" in missing.stderr
    assert not (tmp_path / "none").exists()


def test_a_layout_and_an_archive_skopeo_wrote_copy_on_unchanged(home, tmp_path, registries, make_corpus):
    src, dst = registries
    index = make_corpus(src).push("team/app", ["1.0"], ImageKind.OCI_INDEX)
    written = {"oci": f"oci:{tmp_path / 'by-skopeo'}:1.0",
               "archive": f"oci-archive:{tmp_path / 'by-skopeo.tar'}:1.0"}
    for place in written.values():
        skopeo_copy(src.ref("team/app", "1.0"), place, src_creds=src.creds)
    for name, place in written.items():
        result = copied(regflow(home, "copy", place, f"docker://{dst.host}/from-skopeo/{name}:1.0",
                                "--all-platforms", "--dest-tls-verify=false", "--json"))
        assert (result["status"], result["digest"]) == ("copied", index.digest)
        assert inspect_raw(dst.ref(f"from-skopeo/{name}", "1.0")) == index.manifest
        for child in index.children:
            assert inspect_raw_digest(dst.ref(f"from-skopeo/{name}", child)) == child


@pytest.mark.parametrize(("args", "needle"), [
    (("copy", "docker://127.0.0.1:9/a:1", "nowhere:/tmp/x"), "give a transport"),
    (("copy", "oci:", "oci:/tmp/x"), "needs a path"),
    (("copy", "docker://127.0.0.1:9/a:1", "oci:/tmp/x", "--all-platforms", "--platform", "linux/amd64"),
     "exclude each other"),
    (("copy", "docker://127.0.0.1:9/a:1", "oci:/tmp/x", "--platform", "linux"), "OS/ARCH"),
    (("copy", "docker://127.0.0.1:9/a:1", "oci:/tmp/x", "--src-tls-verify=maybe"), "true or false"),
    (("copy", "oci-archive:/nonexistent/a.tar", "oci:/tmp/x"), "is not a file"),
], ids=["transport", "no-path", "both-platform-flags", "platform-form", "tls-flag", "missing-archive"])
def test_bad_copy_arguments_exit_2_in_one_line(home, args, needle):
    result = regflow(home, *args)
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and needle in errors[0], result.stderr


def _push_referrer(corpus: CorpusBuilder, repository: str, subject: PushedTag) -> tuple[str, bytes]:
    """A signature-like OCI 1.1 artifact whose subject is ``subject``, under cosign's tag for it
    (distribution 2.8 has no referrers API: a tag is how it is found there)."""
    empty = corpus.push_blob(repository, b"{}")
    payload = corpus.push_blob(repository, b"signature of " + subject.digest.encode())
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": MT_OCI_MANIFEST, "artifactType": "application/vnd.example.sig",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty, "size": 2},
        "layers": [{"mediaType": "application/vnd.example.sig.v1", "digest": payload,
                    "size": len(b"signature of " + subject.digest.encode())}],
        "subject": {"mediaType": subject.media_type, "digest": subject.digest, "size": len(subject.manifest)},
    }, indent=2).encode()
    tag = subject.digest.replace(":", "-") + ".sig"
    corpus.push_manifest(repository, tag, manifest, MT_OCI_MANIFEST)
    return tag, manifest


def test_policies_mirror_registry_to_layout_and_back_byte_for_byte(home, tmp_path, make_registry, make_corpus,
                                                                  prefect_server: PrefectServer):
    origin, site = make_registry("anonymous"), make_registry("anonymous")
    corpus = make_corpus(origin)
    index = corpus.push("team/app", ["1.0"], ImageKind.OCI_INDEX)
    assert index.media_type == MT_OCI_INDEX
    single = corpus.push("team/tools/cli", ["2.0", "latest"], ImageKind.DOCKER)
    sig_tag, sig = _push_referrer(corpus, "team/app", index)
    corpus.push("other/skipped", ["1"], ImageKind.OCI)
    layouts = tmp_path / "air gap"  # a space: the URL is percent-encoded, the directory is not
    (home / "mirror.yaml").write_text(MIRROR_CONFIG.format(src=origin.url, dst=site.url,
                                                           layouts=layouts.as_uri()))
    applied = regflow(home, "apply", "-f", str(home / "mirror.yaml"))
    assert applied.returncode == 0, applied.stderr
    assert regflow(home, "registry", "ping", "carried").returncode == 0

    # Registry -> directory: one layout per repository, each readable by skopeo.
    out = regflow(home, "replicate", "to-directory", "--json", api_url=prefect_server.api_url)
    assert out.returncode == 0, out.stderr[-3000:]
    run = json.loads(out.stdout)
    assert (run["status"], run["total"]) == ("Succeeded", 2)
    assert sorted(p.parent.relative_to(layouts).as_posix() for p in layouts.rglob("oci-layout")) == \
        ["team/app", "team/tools/cli"]
    app_layout = layouts / "team/app"
    assert inspect_raw_digest(f"oci:{app_layout}:1.0") == index.digest
    assert inspect_raw(f"oci:{app_layout}:{sig_tag}") == sig
    # A Docker manifest stays a Docker manifest (skopeo's oci: would convert it, changing its
    # digest, and does not read an index entry of a Docker media type): byte for byte, as pulled.
    cli_layout = layouts / "team/tools/cli"
    entries = json.loads((cli_layout / "index.json").read_bytes())["manifests"]
    assert sorted(e["annotations"]["org.opencontainers.image.ref.name"] for e in entries) == ["2.0", "latest"]
    assert {(e["digest"], e["mediaType"]) for e in entries} == {(single.digest, single.media_type)}
    stored = cli_layout / "blobs/sha256" / single.digest.removeprefix("sha256:")
    assert stored.read_bytes() == single.manifest
    assert not list(layouts.rglob(".regflow-*")), "temporary files left in the layouts"

    # Again: every tag identical, nothing copied.
    again = json.loads(regflow(home, "replicate", "to-directory", "--json",
                               api_url=prefect_server.api_url).stdout)
    outcomes = [o for t in again["tasks"] for o in t["tags"]]
    assert again["status"] == "Succeeded" and len(outcomes) == 4
    assert all(o["status"] == "skipped" for o in outcomes)

    # Directory -> registry: the same bytes under the same tags, the referrer with them.
    back = regflow(home, "replicate", "from-directory", "--json", api_url=prefect_server.api_url)
    assert back.returncode == 0, back.stderr[-3000:]
    assert json.loads(back.stdout)["status"] == "Succeeded"
    assert inspect_raw(site.ref("team/app", "1.0")) == index.manifest
    for child in index.children:
        assert inspect_raw(site.ref("team/app", child)) == inspect_raw(origin.ref("team/app", child))
    assert inspect_raw(site.ref("team/app", sig_tag)) == sig
    assert sha256(sig) == inspect_raw_digest(site.ref("team/app", sig_tag))
    for tag in ("2.0", "latest"):
        assert inspect_raw(site.ref("team/tools/cli", tag)) == single.manifest
    checked = regflow(home, "verify", "from-directory", "--json")
    assert checked.returncode == 0, checked.stdout + checked.stderr[-2000:]
    assert json.loads(checked.stdout)["checked_tags"] == 4
