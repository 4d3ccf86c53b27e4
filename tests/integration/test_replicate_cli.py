"""Issue 3 end to end: apply a config, replicate through the real flow on the embedded Prefect,
read executions back from a fresh process. Registries are real; so is Prefect."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.corpus import ImageKind
from tests.support.registry import RegistryProcess
from tests.support.skopeo import inspect_raw_digest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CONFIG = """\
version: 1
registries:
  - name: src
    type: docker-registry
    url: {src}
    credential: {{type: basic, access_key: {user}, access_secret: "${{SRC_PASSWORD}}"}}
  - name: dst
    type: docker-registry
    url: {dst}
    credential: {{type: basic, access_key: {dst_user}, access_secret: "{dst_password}"}}
policies:
  - name: mirror-team-a
    src_registry: src
    dest_registry: dst
    dest_namespace: mirror
    dest_namespace_replace_count: 1
    filters:
      - {{type: name, value: "team-a/**"}}
      - {{type: tag, value: "1.*", decoration: matches}}
    trigger: {{type: manual}}
    override: true
"""


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # One home for the module: the embedded Prefect database is created once.
    return tmp_path_factory.mktemp("regflow-home")


@pytest.fixture(scope="module")
def registries(testbed_binaries: None) -> Iterator[tuple[RegistryProcess, RegistryProcess]]:
    with RegistryProcess("basic") as src, RegistryProcess("basic") as dst:
        yield src, dst


def regflow(home: Path, *args: str, src: RegistryProcess | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "REGFLOW_"))}
    env["REGFLOW_HOME"] = str(home)
    if src is not None and src.password:
        env["SRC_PASSWORD"] = src.password
    return subprocess.run([sys.executable, "-m", "regflow_cli.main", *args], env=env, text=True,
                          capture_output=True, timeout=300)


def write_config(home: Path, src: RegistryProcess, dst: RegistryProcess) -> Path:
    path = home.parent / f"{home.name}.yaml"  # the user's own file lives outside REGFLOW_HOME
    path.write_text(CONFIG.format(src=src.url, dst=dst.url, user=src.username, dst_user=dst.username,
                                  dst_password=dst.password))
    return path


def test_apply_replicate_resync_outage_and_history(home, registries, make_corpus):
    src, dst = registries
    corpus = make_corpus(src)
    app = {t: corpus.push("team-a/app", [t], ImageKind.OCI_INDEX if t == "1.1" else ImageKind.DOCKER,
                          created=i) for i, t in enumerate(["1.0", "1.1", "2.0"])}
    tool = corpus.push("team-a/sub/tool", ["1.0"], ImageKind.OCI)
    corpus.push("team-b/other", ["1.0"], ImageKind.OCI)

    config = write_config(home, src, dst)
    applied = regflow(home, "apply", "-f", str(config), src=src)
    assert applied.returncode == 0, applied.stderr
    assert "created   registry src" in applied.stdout and "created   policy mirror-team-a" in applied.stdout
    again = regflow(home, "apply", "-f", str(config), src=src)
    assert "created" not in again.stdout and "unchanged policy mirror-team-a" in again.stdout

    assert regflow(home, "registry", "ping", "src", src=src).returncode == 0
    assert regflow(home, "registry", "ping", "src").returncode == 2  # ${SRC_PASSWORD} unset: bad input

    first = regflow(home, "replicate", "mirror-team-a", "--json", src=src)
    assert first.returncode == 0, first.stderr
    run1 = json.loads(first.stdout)
    assert run1["status"] == "Succeeded"
    assert (run1["total"], run1["succeed"], run1["failed"]) == (2, 2, 0)
    by_target = {t["target"]: t for t in run1["tasks"]}
    assert set(by_target) == {"mirror/app", "mirror/sub/tool"}
    assert sorted(t["tag"] for t in by_target["mirror/app"]["tags"]) == ["1.0", "1.1"]
    assert by_target["mirror/app"]["copied"] == 2

    # Exactly the expected repositories and tags, byte for byte.
    client = corpus.client.__class__(dst.url, dst.httpx_auth())
    assert sorted(client.catalog()) == ["mirror/app", "mirror/sub/tool"]
    assert sorted(client.tags("mirror/app")) == ["1.0", "1.1"]
    for tag in ("1.0", "1.1"):
        assert inspect_raw_digest(dst.ref("mirror/app", tag), dst.creds) == app[tag].digest
    assert inspect_raw_digest(dst.ref("mirror/sub/tool", "1.0"), dst.creds) == tool.digest

    second = json.loads(regflow(home, "replicate", "mirror-team-a", "--json", src=src).stdout)
    assert second["status"] == "Succeeded"
    outcomes = [o for t in second["tasks"] for o in t["tags"]]
    assert len(outcomes) == 3
    assert all((o["status"], o["reason"]) == ("skipped", "identical on target") for o in outcomes)
    assert sum(t["copied"] for t in second["tasks"]) == 0

    # Outage of the target: Failed with the reason, counts right; after restart: Succeeded.
    corpus.push("team-a/app", ["1.2"], ImageKind.OCI, created=10)
    dst.stop()
    try:
        unreachable = regflow(home, "registry", "ping", "dst")
        assert unreachable.returncode == 1 and "unhealthy" in unreachable.stderr
        failed = regflow(home, "replicate", "mirror-team-a", "--json", src=src)
    finally:
        dst.start()
    assert failed.returncode == 1
    run3 = json.loads(failed.stdout)
    assert run3["status"] == "Failed"
    assert run3["failed"] >= 1 and run3["total"] == run3["succeed"] + run3["failed"] + run3["stopped"]
    assert "TransportError" in run3["message"] or "unreachable" in run3["message"] \
        or "Connect" in run3["message"], run3["message"]
    recovered = json.loads(regflow(home, "replicate", "mirror-team-a", "--json", src=src).stdout)
    assert recovered["status"] == "Succeeded"
    assert sorted(client.tags("mirror/app")) == ["1.0", "1.1", "1.2"]

    # History from a fresh process: every execution with its task runs.
    listed = regflow(home, "executions", "mirror-team-a", "--json")
    assert listed.returncode == 0, listed.stderr
    records = json.loads(listed.stdout)
    assert [r["state"] for r in records][:4] == ["Completed", "Failed", "Completed", "Completed"]
    newest_full = records[3]
    assert sorted(t["name"] for t in newest_full["tasks"]) == ["team-a/app", "team-a/sub/tool"]
    assert all(t["state"] == "Completed" for t in newest_full["tasks"])
    assert all(r["policy"] == "mirror-team-a" and r["trigger"] == "manual" for r in records)
    # The newest run returned before the server recorded its task runs; the listing waited.
    transferred = sorted(t["source"] for t in recovered["tasks"] if t["copied"])
    assert transferred and sorted(t["name"] for t in records[0]["tasks"]) == transferred

    # No secret in anything a user or an attacker could read.
    secrets = [src.password, dst.password]
    texts = [applied.stdout, applied.stderr, first.stdout, first.stderr, failed.stdout, failed.stderr,
             listed.stdout, regflow(home, "policy", "show", "mirror-team-a").stdout,
             regflow(home, "registry", "list", "--json").stdout]
    for secret in secrets:
        assert secret and all(secret not in t for t in texts)
        for path in home.rglob("*"):
            if path.is_file():
                assert secret.encode() not in path.read_bytes(), f"secret found in {path}"


@pytest.mark.parametrize(("edit", "field"), [
    (lambda c: c.replace("src_registry: src", "src_registry: nowhere"), "src_registry"),
    (lambda c: c.replace('value: "team-a/**"', 'value: "team-a/[**"'), "value"),
    (lambda c: c.replace("trigger: {type: manual}", "trigger: {type: scheduled, trigger_settings: "
                         "{cron: '99 * * * *'}}"), "cron"),
    (lambda c: c.replace("dest_namespace_replace_count: 1",
                         "dest_namespace_replace_count: 1\n    colour: red"),
     "colour"),
    (lambda c: c.replace("policies:", "policies: [oops"), "line"),
    (lambda c: c.replace("dest_registry: dst", "dest_registry: src").replace(
        "dest_namespace: mirror", "dest_namespace: ''").replace("dest_namespace_replace_count: 1",
                                                                "dest_namespace_replace_count: -1"),
     "dest"),
    (lambda c: c.replace('value: "team-a/**"', 'value: "team-a/app"').replace(
        "dest_namespace_replace_count: 1", "dest_namespace_replace_count: 3"), "dest_namespace"),
])
def test_bad_config_exits_2_naming_the_field_and_changes_nothing(tmp_path, edit, field):
    good = CONFIG.format(src="http://127.0.0.1:9", dst="http://127.0.0.1:10", user="u", dst_user="v",
                         dst_password="p")
    (tmp_path / "good.yaml").write_text(good)
    assert regflow(tmp_path, "apply", "-f", str(tmp_path / "good.yaml")).returncode == 0
    before = regflow(tmp_path, "policy", "show", "mirror-team-a").stdout

    (tmp_path / "bad.yaml").write_text(edit(good))
    result = regflow(tmp_path, "apply", "-f", str(tmp_path / "bad.yaml"))

    assert result.returncode == 2
    assert field in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert regflow(tmp_path, "policy", "show", "mirror-team-a").stdout == before
