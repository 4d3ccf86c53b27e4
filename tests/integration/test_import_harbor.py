"""Issue 19, acceptance of `regflow import harbor`: a fake Harbor serving recorded-shape
registries and replication policies on loopback; the real console script imports them, `apply
-f` takes the file, and `policy show` matches the fake's policies field by field (those two in
process, with typer's runner). The command's refusals (existing file, no password, wrong
password) and its dry-run table run in process too."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from policies.models import normalize_cron
from regflow_cli.main import app
from tests.support.fake_harbor import (
    FakeHarbor,
    filter_json,
    local_registry_json,
    registry_json,
    replication_policy_json,
    serve_on_loopback,
    trigger_json,
)

pytestmark = [pytest.mark.integration]

PASSWORD = "Harbor-Admin-7731"
HUB = registry_json(3, "hub", "docker-hub", "https://hub.docker.com", access_key="hubber", secret=True)
MIRROR = registry_json(4, "mirror", "docker-registry", "https://mirror.example.com", access_key="robot",
                       secret=True)
DC2 = registry_json(5, "dc2", "harbor", "https://harbor2.example.com", insecure=True)
ODD = registry_json(6, "odd", "acme-cr", "https://cr.acme.example")
LOCAL = local_registry_json()
MAPPED = [
    replication_policy_json(1, "push-apps", src=LOCAL, dest=MIRROR, description="every app, to the mirror",
                            dest_namespace="apps", dest_namespace_replace_count=1, replicate_deletion=True,
                            filters=[filter_json("name", "team/**"), filter_json("tag", "*-rc*", "excludes")],
                            trigger=trigger_json("event_based")),
    replication_policy_json(2, "pull-dc2", src=DC2, dest=None, override=False, enabled=False, speed=1024,
                            copy_by_chunk=True, single_active_replication=True,
                            filters=[filter_json("label", ["prod", "signed"]),
                                     filter_json("resource", "image")],
                            trigger=trigger_json("scheduled", "0 0 3 * * *")),
    replication_policy_json(3, "hub-nginx", src=HUB, dest=LOCAL, dest_namespace="hub",
                            dest_namespace_replace_count=None, speed=None, copy_by_chunk=None,
                            filters=[filter_json("name", "library/nginx")]),
]
UNMAPPABLE = replication_policy_json(4, "by-digest", src=LOCAL, dest=MIRROR,
                                     filters=[filter_json("digest", "sha256:*")])


@pytest.fixture
def harbor() -> Iterator[FakeHarbor]:
    # Pages of two: the import must follow Harbor's Link headers.
    fake = FakeHarbor(users={"admin": PASSWORD}, max_page_size=2)
    fake.registries = [HUB, MIRROR, DC2, ODD]
    fake.replication_policies = [*MAPPED, UNMAPPABLE]
    with serve_on_loopback(fake):
        yield fake


def regflow(home: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "REGFLOW_", "HARBOR_"))}
    return subprocess.run([sys.executable, "-m", "regflow_cli.main", *args], text=True, capture_output=True,
                          env=base | (env or {}) | {"REGFLOW_HOME": str(home)}, timeout=120)


def expected(harbor: dict[str, Any], names: dict[int, str]) -> dict[str, Any]:
    """What regflow must hold for a Harbor policy, spelled out from Harbor's documented meaning."""
    trigger = harbor["trigger"]
    cron = trigger["trigger_settings"]["cron"]
    filters = []
    for f in harbor.get("filters", []):
        value = ",".join(f["value"]) if f["type"] == "label" else f["value"]
        filters.append({"type": f["type"], "value": value, "decoration": f.get("decoration") or "matches"})
    return {
        "name": harbor["name"], "description": harbor.get("description", ""),
        "src_registry": names[(harbor.get("src_registry") or {}).get("id", 0)],
        "dest_registry": names[(harbor.get("dest_registry") or {}).get("id", 0)],
        "dest_namespace": harbor.get("dest_namespace", ""),
        "dest_namespace_replace_count": -1 if harbor.get("dest_namespace_replace_count") is None
        else harbor["dest_namespace_replace_count"],
        "filters": filters,
        "trigger": {"type": trigger["type"], "trigger_settings": {
            "cron": normalize_cron(cron) if trigger["type"] == "scheduled" else None,
            "interval_seconds": None}},
        "replicate_deletion": harbor.get("replicate_deletion", False),
        "override": harbor.get("override", False), "enabled": harbor.get("enabled", False),
        "speed": harbor["speed"] if harbor.get("speed") else -1,
        "copy_by_chunk": bool(harbor.get("copy_by_chunk")),
        "single_active_replication": bool(harbor.get("single_active_replication")),
    }


def test_import_apply_show_round_trip(tmp_path: Path, harbor: FakeHarbor) -> None:
    home, config = tmp_path / "home", tmp_path / "harbor.yaml"
    imported = regflow(home, "import", "harbor", harbor.url, "--user", "admin", "-o", str(config),
                       env={"HARBOR_PASSWORD": PASSWORD})
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout == ""
    text = config.read_text()
    assert PASSWORD not in text + imported.stderr and "*****" not in text
    local = "127.0.0.1-" + harbor.host.rsplit(":", 1)[1]
    for variable in ("REGFLOW_HUB_ACCESS_SECRET", "REGFLOW_MIRROR_ACCESS_SECRET",
                     f"REGFLOW_{local.replace('.', '_').replace('-', '_').upper()}_ACCESS_SECRET"):
        assert f"set {variable}:" in imported.stderr and f"${{{variable}}}" in text
    assert "left out: registry 'odd' (id 6)" in imported.stderr
    assert "left out: policy 'by-digest' (id 4): filter kind 'digest' regflow lacks" in imported.stderr

    # One subprocess proves the console script; apply and show run in process (CI budget).
    runner = CliRunner()
    applied = runner.invoke(app, ["apply", "-f", str(config)], env={"REGFLOW_HOME": str(home)})
    assert applied.exit_code == 0, applied.stderr
    assert "created   policy push-apps" in applied.stdout

    names = {0: local, 3: "hub", 4: "mirror", 5: "dc2"}
    for harbor_policy in MAPPED:
        shown = runner.invoke(app, ["policy", "show", harbor_policy["name"]], env={"REGFLOW_HOME": str(home)})
        assert shown.exit_code == 0, shown.output
        view = json.loads(shown.stdout)
        want = expected(harbor_policy, names)
        assert {k: view[k] for k in want} == want
    listed = runner.invoke(app, ["policy", "list", "--json"], env={"REGFLOW_HOME": str(home)})
    assert sorted(p["name"] for p in json.loads(listed.stdout)) == sorted(p["name"] for p in MAPPED)
    local_view = json.loads(runner.invoke(app, ["registry", "show", local, "--json"],
                                          env={"REGFLOW_HOME": str(home)}).stdout)
    assert (local_view["type"], local_view["url"], local_view["credential"]["access_key"]) == \
        ("harbor", harbor.url, "admin")
    assert local_view["webhook"]["kind"] == "harbor"  # push-apps is event-based


def test_refusals_and_dry_run(tmp_path: Path, harbor: FakeHarbor) -> None:
    runner = CliRunner()
    home = {"REGFLOW_HOME": str(tmp_path / "home")}
    existing = tmp_path / "kept.yaml"
    existing.write_text("version: 1\n")
    args = ["import", "harbor", harbor.url, "--user", "admin"]
    logged_in = home | {"HARBOR_PASSWORD": PASSWORD}

    kept = runner.invoke(app, [*args, "-o", str(existing)], env=logged_in)
    assert kept.exit_code == 2 and "exists: --force overwrites it" in kept.stderr
    assert existing.read_text() == "version: 1\n" and harbor.requests == []

    no_ca = runner.invoke(app, [*args, "--ca-cert", str(tmp_path / "missing.pem")], env=logged_in)
    assert no_ca.exit_code == 2 and "--ca-cert" in no_ca.stderr and harbor.requests == []

    no_password = runner.invoke(app, args, env=home | {"HARBOR_PASSWORD": ""})
    assert no_password.exit_code == 2 and "set HARBOR_PASSWORD" in no_password.stderr
    assert harbor.requests == []

    wrong = runner.invoke(app, args, env=home | {"HARBOR_PASSWORD": "nope"})
    assert wrong.exit_code == 1 and wrong.stdout == ""
    assert wrong.stderr.count("\n") == 1 and "AuthenticationError" in wrong.stderr

    forced = runner.invoke(app, [*args, "-o", str(existing), "--force"], env=logged_in)
    assert forced.exit_code == 0, forced.stderr
    assert "push-apps" in existing.read_text()

    planned = tmp_path / "never.yaml"
    dry = runner.invoke(app, [*args, "--dry-run", "-o", str(planned)], env=logged_in)
    assert dry.exit_code == 0, dry.stderr
    assert not planned.exists()
    lines = dry.stdout.splitlines()
    assert any("by-digest" in line and "skipped" in line for line in lines), dry.stdout
    assert any("pull-dc2" in line and "trigger" in line and "changed" in line for line in lines), dry.stdout
    assert any("'odd'" in line and "acme-cr" in line for line in lines), dry.stdout
    as_json = runner.invoke(app, [*args, "--dry-run", "--json"], env=logged_in)
    notes = json.loads(as_json.stdout)["notes"]
    assert {n["harbor"]: n["outcome"] for n in notes if n["item"] == "policy"} == {
        "policy 'push-apps' (id 1)": "maps", "policy 'pull-dc2' (id 2)": "maps",
        "policy 'hub-nginx' (id 3)": "maps", "policy 'by-digest' (id 4)": "skipped"}
