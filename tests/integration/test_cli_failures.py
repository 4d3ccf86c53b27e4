"""Issue 16 item 6: an expected failure is one line and exit 1 or 2 in every command, --dry-run
included; the traceback only with --debug. The registries are real ports with nothing behind
them (refused), a real registry that refuses the credentials, and a real TLS registry with a
certificate nobody trusts; Prefect is the session's real server."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.prefect_server import PrefectServer
from tests.support.registry import RegistryProcess, free_port

pytestmark = [pytest.mark.integration]

CONFIG = """\
version: 1
registries:
  - {{name: gone, type: docker-registry, url: "http://127.0.0.1:{gone}"}}
  - name: refusing
    type: docker-registry
    url: {refusing}
    credential: {{type: basic, access_key: nobody, access_secret: wrong}}
  - {{name: untrusted, type: docker-registry, url: {untrusted}}}
policies:
  - {{name: from-gone, src_registry: gone, dest_registry: refusing, dest_namespace: x}}
  - {{name: from-refusing, src_registry: refusing, dest_registry: gone, dest_namespace: y}}
  - {{name: from-untrusted, src_registry: untrusted, dest_registry: gone, dest_namespace: z}}
"""


def regflow(home: Path, *args: str, api_url: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "REGFLOW_"))}
    env["REGFLOW_HOME"] = str(home)
    if api_url is not None:
        env["PREFECT_API_URL"] = api_url
    return subprocess.run([sys.executable, "-m", "regflow_cli.main", *args], env=env, capture_output=True,
                          text=True, timeout=300)


def assert_one_line(result: subprocess.CompletedProcess[str], code: int, *needles: str) -> None:
    assert result.returncode == code, (result.returncode, result.stderr[-3000:])
    assert "Traceback" not in result.stderr + result.stdout, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr[-3000:]
    for needle in needles:
        assert needle in errors[0], errors[0]


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory, testbed_binaries: None) -> Iterator[Path]:
    home = tmp_path_factory.mktemp("cli-failures")
    with RegistryProcess("basic") as refusing, RegistryProcess("anonymous", tls=True) as untrusted:
        config = home / "regflow.yaml"
        config.write_text(CONFIG.format(gone=free_port(), refusing=refusing.url, untrusted=untrusted.url))
        applied = regflow(home, "apply", "-f", str(config))
        assert applied.returncode == 0, applied.stderr
        yield home


@pytest.mark.parametrize(("args", "code", "needles"), [
    (("replicate", "from-gone", "--dry-run"), 1, ("ConnectError",)),
    (("replicate", "from-untrusted", "--dry-run"), 1, ("CERTIFICATE_VERIFY_FAILED",)),
    (("registry", "ping", "gone"), 1, ("gone",)),
    (("verify", "from-gone"), 1, ()),
    (("policy", "show", "no-such-policy"), 2, ("no-such-policy",)),
    (("apply", "-f", "/nonexistent/regflow.yaml"), 2, ("/nonexistent/regflow.yaml",)),
], ids=["dry-run-refused", "dry-run-tls", "ping", "verify", "unknown-policy", "missing-file"])
def test_expected_failures_are_one_line(home: Path, args: tuple[str, ...], code: int,
                                        needles: tuple[str, ...]) -> None:
    assert_one_line(regflow(home, *args), code, *needles)


def test_a_refused_login_in_a_dry_run_is_one_line(home: Path) -> None:
    assert_one_line(regflow(home, "replicate", "from-refusing", "--dry-run"), 1, "401")


def test_replicate_against_an_unreachable_registry_is_one_line(
        home: Path, prefect_server: PrefectServer) -> None:
    result = regflow(home, "replicate", "from-gone", api_url=prefect_server.api_url)
    assert_one_line(result, 1, "ConnectError")
    # Prefect's own log line of the failure stays (it is the run's log), without its traceback.
    assert "Encountered exception during execution" in result.stderr


def test_an_unreachable_prefect_server_is_one_line(home: Path) -> None:
    nobody = f"http://127.0.0.1:{free_port()}/api"
    assert_one_line(regflow(home, "executions", "from-gone", api_url=nobody), 1)


def test_debug_shows_the_traceback(home: Path) -> None:
    result = regflow(home, "--debug", "replicate", "from-gone", "--dry-run")
    assert result.returncode != 0
    assert "Traceback" in result.stderr
