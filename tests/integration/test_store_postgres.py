"""policies.store against a real, throwaway PostgreSQL server (initdb into a temp directory).

Skipped when no PostgreSQL server binaries are installed (Debian package `postgresql`). The server
is stopped by its own PID at teardown and its directory removed.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg
import pytest
from pydantic import SecretStr

from adapters.errors import ConfigError
from policies.models import parse_config
from policies.store import ApplyReport, Store, UploadSession

pytestmark = pytest.mark.integration

SECRET = "pg-literal-Secret-99"
# postgres refuses to run as root; these users exist on Debian (the first with the package).
UNPRIVILEGED_USERS = ("postgres", "nobody")


def _bin_dir() -> Path | None:
    candidates = [shutil.which("initdb"), "/usr/local/bin/initdb",
                  *sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            # Resolved: /usr/local/bin/initdb is often a link into the versioned directory.
            directory = Path(candidate).resolve().parent
            if (directory / "postgres").is_file():
                return directory
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Postgres:
    """One server: ``initdb``, then ``postgres`` in the foreground, run as ``user`` when root."""

    def __init__(self, bin_dir: Path, base: Path, user: pwd.struct_passwd | None) -> None:
        self.bin_dir = bin_dir
        self.base = base
        self.data = base / "data"
        self.log = base / "postgres.log"
        self.user = user
        self.port = _free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def _command(self, *args: str) -> list[str]:
        if self.user is None:
            return list(args)
        # setpriv execs in place (runuser forks), so the PID we hold is the server's own.
        return ["setpriv", f"--reuid={self.user.pw_uid}", f"--regid={self.user.pw_gid}", "--clear-groups",
                "--", *args]

    def start(self) -> None:
        env = {**os.environ, "LC_ALL": "C", "LANG": "C"}
        init = subprocess.run(
            self._command(str(self.bin_dir / "initdb"), "-D", str(self.data), "-U", "regflow",
                          "-A", "trust", "-E", "UTF8", "--no-instructions"),
            capture_output=True, env=env, cwd=self.base, check=False, timeout=120,
        )
        if init.returncode != 0:
            pytest.fail(f"initdb failed: {init.stdout.decode()}{init.stderr.decode()}", pytrace=False)
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                self._command(str(self.bin_dir / "postgres"), "-D", str(self.data), "-k", str(self.base),
                              "-p", str(self.port), "-h", "127.0.0.1", "-F"),
                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.base,
            )
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                pytest.fail(f"postgres exited early:\n{self.log.read_text()[-3000:]}", pytrace=False)
            try:
                psycopg.connect(host="127.0.0.1", port=self.port, user="regflow", dbname="postgres").close()
                return
            except psycopg.OperationalError:
                time.sleep(0.1)
        pytest.fail(f"postgres did not accept connections:\n{self.log.read_text()[-3000:]}", pytrace=False)

    def url(self, scheme: str = "postgresql+psycopg") -> str:
        return f"{scheme}://regflow@127.0.0.1:{self.port}/postgres"

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        with psycopg.connect(host="127.0.0.1", port=self.port, user="regflow", dbname="postgres") as conn:
            return conn.execute(sql).fetchall()

    def drop_tables(self) -> None:
        with psycopg.connect(host="127.0.0.1", port=self.port, user="regflow", dbname="postgres") as conn:
            conn.execute("DROP TABLE IF EXISTS registries, policies, upload_sessions, api_ids, api_run_ids")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.kill(self.process.pid, signal.SIGINT)  # "fast" shutdown: disconnects clients
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)


@pytest.fixture(scope="module")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Postgres]:
    bin_dir = _bin_dir()
    if bin_dir is None:
        pytest.skip("no PostgreSQL server binaries (initdb, postgres): "
                    "install the Debian package `postgresql`")
    user = None
    if os.geteuid() == 0:
        user = next((pwd.getpwnam(n) for n in UNPRIVILEGED_USERS if _user_exists(n)), None)
        if user is None or shutil.which("setpriv") is None:
            pytest.skip("running as root needs setpriv (util-linux) and a 'postgres' or 'nobody' user")
        # Not under tmp_path: pytest's base directory is private to root, so the server's user
        # could not reach it.
        base = Path(tempfile.mkdtemp(prefix="regflow-pg-"))
        os.chown(base, user.pw_uid, user.pw_gid)
    else:
        base = tmp_path_factory.mktemp("pg")
    server = Postgres(bin_dir, base, user)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        if user is not None:
            shutil.rmtree(base, ignore_errors=True)


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


@pytest.fixture
def store(postgres: Postgres, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Store]:
    monkeypatch.setenv("REGFLOW_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("REGFLOW_SECRET_KEY", raising=False)
    monkeypatch.setenv("REGFLOW_DATABASE_URL", postgres.url())
    store = Store()
    try:
        yield store
    finally:
        store.close()
        postgres.drop_tables()


def config_data() -> dict[str, Any]:
    return {
        "version": 1,
        "registries": [
            {"name": "src", "type": "docker-registry", "url": "https://src.example",
             "credential": {"access_key": "puller", "access_secret": SECRET}},
            {"name": "dst", "type": "docker-registry", "url": "http://127.0.0.1:5001", "insecure": True},
        ],
        "policies": [{"name": "mirror-team-a", "src_registry": "src", "dest_registry": "dst",
                      "dest_namespace": "mirror"}],
    }


ALL = ["registry src", "registry dst", "policy mirror-team-a"]


def test_apply_and_read_back(store: Store, postgres: Postgres) -> None:
    assert store.apply(parse_config(config_data())) == ApplyReport(created=ALL)
    assert store.apply(parse_config(config_data())) == ApplyReport(unchanged=ALL)
    assert [r.name for r in store.registries()] == ["dst", "src"]
    assert store.policy("mirror-team-a").dest_namespace == "mirror"
    endpoint = store.endpoint("src")
    assert (endpoint.username, endpoint.password) == ("puller", SecretStr(SECRET))
    assert store.endpoint("dst").insecure is True
    specs = postgres.query("SELECT spec FROM registries")
    assert specs and all(SECRET not in spec for (spec,) in specs)
    assert any("enc:v1:" in spec for (spec,) in specs)


def test_update_prune_and_refusals(store: Store, postgres: Postgres) -> None:
    store.apply(parse_config(config_data()))
    data = config_data()
    data["registries"][1]["url"] = "http://127.0.0.1:5002"
    assert store.apply(parse_config(data)).updated == ["registry dst"]

    before = postgres.query("SELECT name, spec, created_at, updated_at FROM registries ORDER BY name")
    bad = config_data()
    bad["registries"][1]["type"] = "no-such-type"
    with pytest.raises(ConfigError, match="not supported") as info:
        store.apply(parse_config(bad))
    assert info.value.field == "registries[1].type"
    assert postgres.query("SELECT name, spec, created_at, updated_at FROM registries ORDER BY name") == before

    with pytest.raises(ConfigError, match="used by policy 'mirror-team-a'"):
        store.delete_registry("dst")
    data["policies"] = []
    data["registries"] = data["registries"][:1]
    assert store.apply(parse_config(data), prune=True).deleted == ["policy mirror-team-a", "registry dst"]
    assert [r.name for r in store.registries()] == ["src"]


def test_plain_postgresql_url_uses_psycopg(postgres: Postgres, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REGFLOW_HOME", str(tmp_path / "home"))
    with Store(postgres.url("postgresql")) as store:
        try:
            assert store.apply(parse_config(config_data())).created == ALL
        finally:
            postgres.drop_tables()


def test_upload_session_rows(store: Store, postgres: Postgres) -> None:
    """A session row written, updated in place (one upsert), read by another worker's store,
    deleted; rows of other targets and repositories untouched throughout."""
    target, digest = "http://127.0.0.1:5001", "sha256:" + "cd" * 32
    store.save_upload_session(target, "app", digest, UploadSession(location="/u/1?_state=a", offset=64))
    store.save_upload_session(target, "other", digest, UploadSession(location="/u/2", offset=1))
    store.save_upload_session(target, "app", digest, UploadSession(location="/u/1?_state=b", offset=128))
    with Store() as elsewhere:
        assert elsewhere.upload_session(target, "app", digest) == UploadSession(location="/u/1?_state=b",
                                                                                offset=128)
        assert elsewhere.upload_session("https://else.example", "app", digest) is None
    assert postgres.query('SELECT repository, "offset" FROM upload_sessions ORDER BY repository') == [
        ("app", 128), ("other", 1)]
    store.drop_upload_session(target, "app", digest)
    assert store.upload_session(target, "app", digest) is None
    assert store.upload_session(target, "other", digest) == UploadSession(location="/u/2", offset=1)
    postgres.query("UPDATE upload_sessions SET updated_at = now() - interval '2 days' RETURNING 1")
    assert store.upload_session(target, "other", digest) is None  # stale: no longer offered
    assert store.expire_upload_sessions() == 1
    assert postgres.query("SELECT count(*) FROM upload_sessions") == [(0,)]


def test_runs_starting_at_once_on_a_new_store_all_get_its_tables(store: Store, postgres: Postgres) -> None:
    """Each first use creates the missing tables; runs starting together must not fail on the
    one that loses that race (nor on an older store that lacks the upload_sessions table)."""
    def first_use(i: int) -> None:
        with Store() as own:
            own.save_upload_session("http://t", f"repo-{i}", "sha256:00",
                                    UploadSession(location="/", offset=i))

    with ThreadPoolExecutor(6) as pool:
        list(pool.map(first_use, range(6)))
    assert postgres.query("SELECT count(*) FROM upload_sessions") == [(6,)]
