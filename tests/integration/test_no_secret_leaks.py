"""No registry password leaks (security acceptance), whatever happens to a replication.

Through the real CLI, with Prefect and the root Python logger at DEBUG: a replication that
succeeds (an ``${ENV}`` secret on a plain source, a literal secret on an HTTPS target, so HTTP/2
and its header encoder run too), one whose basic-auth target refuses a wrong literal password,
and one whose token service refuses a wrong ``${ENV}`` password; each with ``--json`` and
without, plus the listings, pings and a dry run. Then none of the passwords, nor their
``user:password`` Basic form, may appear in any output, any file under REGFLOW_HOME (the store's
and the embedded Prefect's databases, logs), nor in the repr/str of the objects that hold them
or of the errors raised. Every check first shows that it could fail: the secret was really used,
and the scanner finds it where it is planted.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import secrets
import subprocess
import sys
import time
import traceback
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from adapters.distribution.client import DistributionClient
from adapters.errors import AuthenticationError, ReplicationError
from policies.store import Store, public_view
from tests.support.corpus import CorpusBuilder, ImageKind
from tests.support.registry import RegistryProcess
from tests.support.skopeo import inspect_raw_digest
from tests.support.token_service import TokenService

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# Distinctive, and free of characters YAML or a URL would change.
SRC_PASSWORD = f"SrcEnvPw{secrets.token_hex(10)}"           # real, via ${SRC_PASSWORD}
DST_PASSWORD = f"DstLiteralPw{secrets.token_hex(10)}"       # real, literal in the config
WRONG_BASIC = f"WrongBasicLiteralPw{secrets.token_hex(10)}"  # wrong, literal
WRONG_TOKEN = f"WrongTokenEnvPw{secrets.token_hex(10)}"      # wrong, via ${TOKEN_PASSWORD}
BAD_BASIC_REAL = f"BadBasicRealPw{secrets.token_hex(10)}"    # never given to regflow
TOKEN_REAL = f"TokenRealPw{secrets.token_hex(10)}"           # never given to regflow
USER = "regflow"

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
    ca_certificate: {dst_ca}
    credential: {{type: basic, access_key: {user}, access_secret: "{dst_password}"}}
  - name: bad-basic
    type: docker-registry
    url: {bad_basic}
    insecure: true
    credential: {{type: basic, access_key: {user}, access_secret: "{wrong_basic}"}}
  - name: bad-token
    type: docker-registry
    url: {bad_token}
    credential: {{type: basic, access_key: {user}, access_secret: "${{TOKEN_PASSWORD}}"}}
policies:
  - name: mirror-ok
    src_registry: src
    dest_registry: dst
    dest_namespace: mirror
    filters: [{{type: name, value: "team/**"}}]
    trigger: {{type: manual}}
  - name: mirror-bad-basic
    src_registry: src
    dest_registry: bad-basic
    dest_namespace: mirror
    filters: [{{type: name, value: "team/**"}}]
    trigger: {{type: manual}}
  - name: mirror-bad-token
    src_registry: src
    dest_registry: bad-token
    dest_namespace: mirror
    filters: [{{type: name, value: "team/**"}}]
    trigger: {{type: manual}}
"""


def basic_form(password: str) -> str:
    """The base64 of ``user:password`` as in a Basic header, without padding (so it is also
    found when the encoder's padding differs)."""
    return base64.b64encode(f"{USER}:{password}".encode()).decode().rstrip("=")


USED = {"SRC_PASSWORD": SRC_PASSWORD, "DST_PASSWORD": DST_PASSWORD, "WRONG_BASIC": WRONG_BASIC,
        "WRONG_TOKEN": WRONG_TOKEN}
NEEDLES: dict[str, str] = {
    **USED,
    "BAD_BASIC_REAL": BAD_BASIC_REAL,
    "TOKEN_REAL": TOKEN_REAL,
    **{f"basic({k})": basic_form(v) for k, v in USED.items()},
}
# Rich wraps long table cells: a secret cut by a line break and a border is still a leak.
_SQUASH = str.maketrans("", "", " \t\r\n│┃|")


def leaks(data: str | bytes) -> list[str]:
    """Names of the needles found in ``data`` (also with whitespace and table borders removed)."""
    # UTF-8 with replacement keeps every ASCII byte as it is, binary files (SQLite) included.
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    squashed = text.translate(_SQUASH)
    return [name for name, needle in NEEDLES.items() if needle in text or needle in squashed]


def debug_logging_config(path: Path) -> Path:
    """Prefect's own logging config with the root logger at DEBUG (httpx, httpcore, h2, hpack and
    every other library log to the console handler). Only the embedded server's database chatter
    (one aiosqlite line per SQL operation, no parameters) is held at INFO: at DEBUG it slows the
    server's start-up past its timeout on a busy machine."""
    import prefect.logging

    config = yaml.safe_load((Path(prefect.logging.__file__).parent / "logging.yml").read_text())
    config["root"]["level"] = "DEBUG"
    for quiet in ("aiosqlite", "sqlalchemy", "alembic", "graphviz"):
        config["loggers"][quiet] = {"level": "INFO"}
    path.write_text(yaml.safe_dump(config))
    return path


@dataclass
class Run:
    args: tuple[str, ...]
    result: subprocess.CompletedProcess[str]
    seconds: float

    @property
    def text(self) -> str:
        return self.result.stdout + "\n" + self.result.stderr


@dataclass
class World:
    home: Path
    src: RegistryProcess
    dst: RegistryProcess
    bad_basic: RegistryProcess
    bad_token: RegistryProcess
    token_service: TokenService
    pushed_digest: str
    logging_config: Path
    runs: dict[str, Run] = field(default_factory=dict)

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "REGFLOW_"))}
        env.update(
            REGFLOW_HOME=str(self.home), SRC_PASSWORD=SRC_PASSWORD, TOKEN_PASSWORD=WRONG_TOKEN,
            # Python logging at DEBUG everywhere: Prefect's loggers, the server's, and the root
            # logger (httpx, httpcore, h2, hpack) whose records go to the console handler.
            PREFECT_LOGGING_LEVEL="DEBUG", PREFECT_LOGGING_SETTINGS_PATH=str(self.logging_config),
            PREFECT_SERVER_LOGGING_LEVEL="DEBUG", PREFECT_LOGGING_LOG_PRINTS="true",
            # Each command starts its own embedded server: give it time on a loaded machine.
            PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120",
        )
        return env

    def regflow(self, key: str, *args: str) -> Run:
        started = time.monotonic()
        result = subprocess.run([sys.executable, "-m", "regflow_cli.main", *args], env=self.env(),
                                text=True, capture_output=True, timeout=600)
        run = self.runs[key] = Run(args, result, time.monotonic() - started)
        # Kept beside the home (not in it) for whoever reads a failure.
        out = self.home.parent / "outputs" / f"{key.replace(' ', '_')}.txt"
        out.parent.mkdir(exist_ok=True)
        out.write_text(f"$ regflow {' '.join(args)}\nexit {result.returncode} in {run.seconds:.1f}s\n"
                       f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}")
        return run


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, testbed_binaries: None) -> Iterator[World]:
    base = tmp_path_factory.mktemp("no-leaks")
    svc = TokenService(users={USER: TOKEN_REAL}).start()
    regs = [
        RegistryProcess("basic", users={USER: SRC_PASSWORD}),
        RegistryProcess("basic", users={USER: DST_PASSWORD}, tls=True),
        RegistryProcess("basic", users={USER: BAD_BASIC_REAL}, tls=True),
        RegistryProcess("token", users=svc.users, token_auth=svc.auth_config),
    ]
    try:
        for reg in regs:
            reg.start()
        src, dst, bad_basic, bad_token = regs
        with CorpusBuilder(src, auth=src.httpx_auth()) as corpus:
            pushed = corpus.push("team/app", ["1.0"], ImageKind.OCI, layers=2)
        config = base / "regflow.yaml"  # the user's own file, outside REGFLOW_HOME
        config.write_text(CONFIG.format(
            src=src.url, dst=dst.url, dst_ca=dst.ca_path, bad_basic=bad_basic.url, bad_token=bad_token.url,
            user=USER, dst_password=DST_PASSWORD, wrong_basic=WRONG_BASIC))
        w = World(home=base / "home", src=src, dst=dst, bad_basic=bad_basic, bad_token=bad_token,
                  token_service=svc, pushed_digest=pushed.digest,
                  logging_config=debug_logging_config(base / "logging.yml"))

        w.regflow("apply", "apply", "-f", str(config))

        def copies() -> None:
            # The first call that needs Prefect starts the embedded server (a new database: the
            # longest wait of the module); the other lane uses that time.
            w.regflow("ok json", "replicate", "mirror-ok", "--json")  # copies
            w.regflow("ok human", "replicate", "mirror-ok")           # identical by now
            w.regflow("bad-token json", "replicate", "mirror-bad-token", "--json")

        def the_rest() -> None:
            for name in ("src", "dst", "bad-basic", "bad-token"):  # no Prefect from here ...
                w.regflow(f"ping {name}", "registry", "ping", name)
            w.regflow("dry-run bad-basic", "replicate", "mirror-bad-basic", "--dry-run", "--json")
            w.regflow("dry-run bad-token", "replicate", "mirror-bad-token", "--dry-run")
            w.regflow("registry list json", "registry", "list", "--json")
            w.regflow("registry list", "registry", "list")
            w.regflow("policy show", "policy", "show", "mirror-ok")  # ... to here
            w.regflow("bad-basic json", "replicate", "mirror-bad-basic", "--json")
            w.regflow("bad-basic human", "replicate", "mirror-bad-basic")
            w.regflow("bad-token human", "replicate", "mirror-bad-token")

        # Two lanes of calls at once, as a user's cron jobs and shell may run them: each call is
        # a process of its own, so the scans below see the same outputs and files as one by one.
        with ThreadPoolExecutor(max_workers=2) as lanes:
            for lane in [lanes.submit(copies), lanes.submit(the_rest)]:
                lane.result()
        w.regflow("executions json", "executions", "--json")  # every execution above listed
        w.regflow("executions human", "executions")
        yield w
    finally:
        for reg in regs:
            reg.close()
        svc.close()


# ------------------------------------------------------------------------ the secrets were used


def test_the_scanner_finds_what_it_looks_for():
    for name, needle in NEEDLES.items():
        assert leaks(f"before{needle}after") == [name]
        cut = len(needle) // 2
        assert name in leaks(f"│ {needle[:cut]} │\n│ {needle[cut:]} │".encode())  # wrapped in a table
    assert leaks("nothing here") == []


def test_each_password_was_really_used(world):
    runs = world.runs
    assert runs["apply"].result.returncode == 0, runs["apply"].text
    # The successful run copied, over both real passwords (source: ${ENV}, target: literal).
    ok = runs["ok json"].result
    assert ok.returncode == 0, runs["ok json"].text
    execution = json.loads(ok.stdout)
    assert execution["status"] == "Succeeded" and sum(t["copied"] for t in execution["tasks"]) == 1
    assert inspect_raw_digest(world.dst.ref("mirror/app", "1.0"), (USER, DST_PASSWORD)) == world.pushed_digest
    assert runs["ok human"].result.returncode == 0 and "Succeeded" in runs["ok human"].result.stdout
    for name in ("src", "dst"):
        assert runs[f"ping {name}"].result.returncode == 0, runs[f"ping {name}"].text

    # The wrong literal password reached the basic-auth target, which refused it.
    for key in ("bad-basic json", "bad-basic human", "ping bad-basic"):
        assert runs[key].result.returncode == 1, (key, runs[key].text)
    failed = json.loads(runs["bad-basic json"].result.stdout)
    assert failed["status"] == "Failed" and "401" in failed["message"], failed["message"]
    refused = [e for e in world.bad_basic.access_log() if e.status == 401 and e.path != "/v2/"]
    assert refused, "the bad-basic target never saw our (wrong) credentials"
    assert "authentication failure" in world.bad_basic.log_text()  # htpasswd: a password, not none

    # The wrong ${ENV} password reached the token service, which refused it.
    for key in ("bad-token json", "bad-token human", "ping bad-token"):
        assert runs[key].result.returncode == 1, (key, runs[key].text)
    failed = json.loads(runs["bad-token json"].result.stdout)
    assert failed["status"] == "Failed" and "token service refused" in failed["message"], failed["message"]
    tried = [r for r in world.token_service.requests if r.username == USER]
    assert tried and all(not r.authenticated and r.status == 401 for r in tried)

    # Python logging really was at DEBUG in the CLI, libraries included (so what they log was
    # exposed to the scan), and the HTTPS target was spoken to over HTTP/2.
    for key in ("ok json", "bad-basic human", "bad-token json"):
        stderr = runs[key].result.stderr
        assert " | DEBUG   | prefect" in stderr and " | DEBUG   | httpcore" in stderr, key
    assert " | DEBUG   | hpack" in runs["ok json"].result.stderr


# ------------------------------------------------------------------------------ where they are not


def test_no_secret_in_any_cli_output(world):
    assert len(world.runs) >= 17
    for key, run in world.runs.items():
        assert run.text.strip(), f"{key}: no output at all"
        assert leaks(run.text) == [], f"`regflow {' '.join(run.args)}` printed {leaks(run.text)}"


def test_no_secret_in_any_file_under_regflow_home(world):
    files = [p for p in world.home.rglob("*") if p.is_file()]
    names = {p.name for p in files}
    assert "secret.key" in names
    store_db = [p for p in files if p.suffix == ".db" and "prefect" not in p.parts]
    prefect_db = [p for p in files if p.suffix == ".db" and "prefect" in p.relative_to(world.home).parts]
    assert store_db and prefect_db, sorted(str(p.relative_to(world.home)) for p in files)
    everything = {p: p.read_bytes() for p in files}
    # The scan reads real content: the store keeps the literal secrets sealed, the env ones as
    # references; Prefect's database holds these executions.
    store_bytes = b"".join(everything[p] for p in store_db)
    assert store_bytes.count(b"enc:v1:") >= 2 and b"${SRC_PASSWORD}" in store_bytes
    assert b"mirror-bad-token" in b"".join(v for p, v in everything.items() if "prefect" in str(p))
    for path, data in everything.items():
        assert leaks(data) == [], f"{path.relative_to(world.home)} holds {leaks(data)}"


def _texts(obj: object) -> list[str]:
    texts = [repr(obj), str(obj), format(obj, "")]
    if isinstance(obj, BaseException):
        texts += [repr(obj.args), repr(vars(obj)), "".join(traceback.format_exception(obj))]
    dump = getattr(obj, "model_dump_json", None)
    if callable(dump):
        texts.append(dump())
    return texts


async def test_no_secret_in_objects_errors_or_debug_logs(world, monkeypatch, caplog):
    monkeypatch.setenv("REGFLOW_HOME", str(world.home))
    monkeypatch.setenv("SRC_PASSWORD", SRC_PASSWORD)
    monkeypatch.setenv("TOKEN_PASSWORD", WRONG_TOKEN)
    caplog.set_level(logging.DEBUG)  # root: httpx, httpcore, h2, hpack
    checked: list[object] = []
    with Store() as store:
        registries = store.registries()
        assert [r.name for r in registries] == ["bad-basic", "bad-token", "dst", "src"]
        checked += [store, *registries]
        checked += [json.dumps(public_view(r)) for r in registries]
        checked += [json.dumps(store.public_view(store.registry(r.name))) for r in registries]
        endpoints = {r.name: store.endpoint(r.name) for r in registries}
    # The endpoints hold the real secrets: what follows would find them if anything showed them.
    expected = {"src": SRC_PASSWORD, "dst": DST_PASSWORD, "bad-basic": WRONG_BASIC, "bad-token": WRONG_TOKEN}
    for name, endpoint in endpoints.items():
        assert endpoint.password is not None and endpoint.password.get_secret_value() == expected[name]
        checked += [endpoint, endpoint.model_dump(), endpoint.password]

    errors: list[BaseException] = []
    for name, endpoint in endpoints.items():
        async with DistributionClient(endpoint) as client:
            checked += [client, client.auth]
            try:
                await client.check_credentials()
                tags = await client.list_tags("team/app" if name == "src" else "mirror/app")
                assert tags == ["1.0"]
                assert name in ("src", "dst")
            except ReplicationError as exc:
                assert name in ("bad-basic", "bad-token"), exc
                assert isinstance(exc, AuthenticationError), exc
                errors.append(exc)
            checked += [client, client.auth]  # after use: tokens and challenges cached
    assert len(errors) == 2
    checked += errors
    # Basic auth over HTTP/2 really went through the loggers checked below.
    assert any(r.name.startswith(("hpack", "h2", "httpcore.http2")) for r in caplog.records)

    for obj in checked:
        for text in _texts(obj):
            assert leaks(text) == [], f"{type(obj).__name__} shows {leaks(text)}: {text[:300]}"
    log_text = "\n".join(f"{r.name} {r.getMessage()}" for r in caplog.records)
    assert leaks(log_text) == [], f"DEBUG logs show {leaks(log_text)}"
