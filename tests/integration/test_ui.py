"""Acceptance test of the Prefect UI that `regflow serve` brings up: with no PREFECT_API_URL it
starts regflow's local Prefect server, which refuses requests without its auth string; a
headless Chromium logs in with that string and must find there the policy's deployment, a
completed execution of it, and the execution's table artifact naming the repository it copied.
Screenshots of each page land in ``test-artifacts/ui/``.

Chromium and chromedriver are Debian's (``scripts/setup`` installs them); Selenium is given
both paths, so selenium-manager never looks anything up or downloads anything.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from uuid import UUID

import httpx
import pytest
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey
from prefect.exceptions import ObjectNotFound
from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

from flows.prefect_server import AUTH_FILE
from tests.support.corpus import ImageKind
from tests.support.registry import free_port
from tests.support.residents import alive
from tests.support.waiting import until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO_ROOT / "test-artifacts" / "ui"
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--no-first-run", "--window-size=1600,1000")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

POLICY = "ui-mirror"
REPOSITORY = "uitest/webapp-3f9c"
ARTIFACT_KEY = f"replication-{POLICY}"
CONFIG = """\
version: 1
registries:
  - {{name: src, type: docker-registry, url: "{src}"}}
  - {{name: dst, type: docker-registry, url: "{dst}"}}
policies:
  - name: {policy}
    src_registry: src
    dest_registry: dst
    filters: [{{type: name, value: "uitest/**"}}]
    trigger: {{type: manual}}
"""

# A fresh server migrates its database in 12-17 s; the first serve also imports prefect.
SERVER_UP_SECONDS = 150
RUN_SECONDS = 180
PAGE_SECONDS = 60
STOP_SECONDS = 60
# serve's server leaves once serve has ended: the watcher notices within 2 s, then gives the
# server up to 20 s to stop.
SERVER_GONE_SECONDS = 40

T = TypeVar("T")


@dataclass
class Served:
    proc: subprocess.Popen[bytes]
    prefect_port: int
    webhook_port: int
    log_path: Path
    home: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.prefect_port}"

    @property
    def api_url(self) -> str:
        return f"{self.url}/api"

    @property
    def auth(self) -> str:
        return (self.home / "prefect" / AUTH_FILE).read_text().strip()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        """SIGTERM the serve process group, SIGKILL it after STOP_SECONDS; its exit code."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_SECONDS)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return self.proc.returncode


def port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def wait_port_closed(port: int, seconds: float = 15) -> bool:
    deadline = time.monotonic() + seconds
    while port_open(port):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True




@pytest.fixture
def served(make_registry, make_corpus, tmp_path: Path) -> Iterator[Served]:  # type: ignore[no-untyped-def]
    """`regflow serve` with no PREFECT_API_URL (its own local Prefect server), one manual policy
    applied beforehand, and one image in the source registry."""
    src = make_registry("anonymous")
    dst = make_registry("anonymous")
    make_corpus(src).push(REPOSITORY, ["1.0"], ImageKind.OCI)
    config = tmp_path / "regflow.yaml"
    config.write_text(CONFIG.format(src=src.url, dst=dst.url, policy=POLICY))

    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(REGFLOW_HOME=str(tmp_path / "home"), PREFECT_HOME=str(tmp_path / "prefect-client"))
    cli = [sys.executable, "-m", "regflow_cli.main"]
    subprocess.run([*cli, "apply", "-f", str(config)], env=env, check=True, capture_output=True)

    prefect_port, webhook_port = free_port(), free_port()
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [*cli, "serve", "--prefect-port", str(prefect_port), "--webhook-port", str(webhook_port)],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=REPO_ROOT)
    service = Served(proc, prefect_port, webhook_port, log_path, tmp_path / "home")
    try:
        yield service
    finally:
        service.stop()
        server_log = tmp_path / "home" / "prefect" / "resident.log"
        print("--- serve log ---\n" + service.log()[-4000:])
        if server_log.exists():
            print("--- prefect server log ---\n" + server_log.read_text(errors="replace")[-3000:])
        assert wait_port_closed(prefect_port, SERVER_GONE_SECONDS), \
            f"the Prefect server on :{prefect_port} outlived serve"


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    """Headless Debian Chromium with a fresh profile, driven through Debian's chromedriver."""
    for binary in (CHROMIUM, CHROMEDRIVER):
        if not binary.is_file():
            pytest.fail(f"missing {binary}: install the Debian packages `chromium chromium-driver` "
                        "(scripts/setup does)", pytrace=False)
    options = Options()
    options.binary_location = str(CHROMIUM)
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    profile = tmp_path / "chromium-profile"
    profile.mkdir()
    options.add_argument(f"--user-data-dir={profile}")
    service = Service(executable_path=str(CHROMEDRIVER), log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(PAGE_SECONDS)
    try:
        yield driver
    finally:
        driver.quit()


@dataclass
class Execution:
    deployment_id: UUID
    flow_run_id: UUID
    flow_run_name: str
    artifact_id: UUID


def test_prefect_ui_shows_deployment_run_and_artifact(served: Served, browser: WebDriver) -> None:
    started = time.monotonic()
    execution = asyncio.run(_run_policy_through_api(served))
    api_done = time.monotonic()
    watcher = _watcher_pid(served)

    # serve's server answers only with its auth string, which lives 0600 in REGFLOW_HOME.
    auth_file = served.home / "prefect" / AUTH_FILE
    assert auth_file.stat().st_mode & 0o077 == 0
    query = f"{served.api_url}/block_documents/filter"
    assert httpx.post(query, json={"include_secrets": True}, timeout=10).status_code == 401
    wrong = {"Authorization": "Basic " + base64.b64encode(b"regflow:not-it").decode()}
    assert httpx.post(query, json={}, headers=wrong, timeout=10).status_code == 401
    right = {"Authorization": "Basic " + base64.b64encode(served.auth.encode()).decode()}
    assert httpx.post(query, json={}, headers=right, timeout=10).status_code == 200

    shutil.rmtree(SCREENSHOTS, ignore_errors=True)
    SCREENSHOTS.mkdir(parents=True)
    ui = UI(browser, served.url)

    # The UI asks for the auth string first.
    ui.open("/deployments")
    ui.log_in(served.auth)

    # The policy is listed as a deployment (linked to its page) of the `replicate` flow.
    ui.open("/deployments")
    ui.wait_for_element(By.XPATH, f"//a[@href='/deployments/deployment/{execution.deployment_id}']"
                                  f"[normalize-space(.)='{POLICY}']", "the policy's deployment")
    ui.wait_for_element(By.XPATH, "//*[contains(@class, 'deployment-list__deployment')]"
                                  "//a[contains(@href, '/flows/flow/')][normalize-space(.)='replicate']",
                        "the deployment's flow")
    ui.screenshot("1-deployments")

    # Its execution, started through the API, is headed by its name and a Completed badge.
    ui.open(f"/runs/flow-run/{execution.flow_run_id}")
    heading = "//header[contains(@class, 'page-heading')]"
    ui.wait_for_element(By.XPATH, f"{heading}//*[contains(@class, 'p-bread-crumbs__crumb')]"
                                  f"[normalize-space(.)='{execution.flow_run_name}']", "the run's name")
    ui.wait_for_element(By.XPATH, f"{heading}//*[contains(@class, 'state-badge')]"
                                  "[normalize-space(.)='Completed']", "the run's Completed state badge")
    ui.screenshot("2-flow-run")

    # Its Artifacts tab holds a card for the table artifact, which leads to the artifact's page.
    ui.click(By.XPATH, "//*[@role='tablist']//*[normalize-space(.)='Artifacts']", "the Artifacts tab")
    card = ui.wait_for_element(
        By.XPATH, f"//a[@href='/artifacts/artifact/{execution.artifact_id}']"
                  f"[.//*[contains(@class, 'artifact-card__title')][normalize-space(.)='{ARTIFACT_KEY}']]"
                  "[.//*[contains(@class, 'artifact-card__subheader')][normalize-space(.)='table']]",
        "the table artifact's card")
    ui.screenshot("3-flow-run-artifacts")
    card.click()

    # The artifact's page renders the table: the copied repository in the `repository` column.
    ui.wait_for_element(
        By.XPATH, "//table[.//th[1][normalize-space(.)='repository']]"
                  f"//tbody/tr/td[1][normalize-space(.)='{REPOSITORY}']",
        "the repository in the artifact's table")
    assert browser.current_url == f"{served.url}/artifacts/artifact/{execution.artifact_id}"
    ui.screenshot("4-artifact")

    for name in ("0-login", "1-deployments", "2-flow-run", "3-flow-run-artifacts", "4-artifact"):
        png = SCREENSHOTS / f"{name}.png"
        assert png.is_file() and png.stat().st_size > 10_000, png
        assert png.read_bytes()[:8] == PNG_SIGNATURE, png
    ui_done = time.monotonic()

    # Stopping serve stops the Prefect server it started, and the webhook receiver.
    assert served.stop() == 0, served.log()[-4000:]
    assert wait_port_closed(served.prefect_port, SERVER_GONE_SECONDS), \
        "the Prefect server outlived `regflow serve`"
    assert wait_port_closed(served.webhook_port), "the webhook receiver outlived `regflow serve`"
    deadline = time.monotonic() + SERVER_GONE_SECONDS
    while alive(watcher) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not alive(watcher), "the server's watcher outlived `regflow serve`"
    assert not (served.home / "prefect" / "resident.json").exists()
    print(f"serve up + run completed {api_done - started:.1f}s, browser {ui_done - api_done:.1f}s, "
          f"shutdown {time.monotonic() - ui_done:.1f}s")


async def _run_policy_through_api(served: Served) -> Execution:
    """Wait for serve's server and the policy's deployment, run the deployment through the API
    and wait until the run is Completed; the run's table artifact must name the repository."""

    async def healthy() -> bool:
        if served.proc.poll() is not None:
            raise AssertionError(f"serve exited {served.proc.returncode}:\n{served.log()[-4000:]}")
        try:
            async with httpx.AsyncClient() as http:
                return (await http.get(f"{served.api_url}/health", timeout=2)).status_code == 200
        except httpx.HTTPError:
            return False

    await until(healthy, SERVER_UP_SECONDS, f"the Prefect server on :{served.prefect_port}")
    async with PrefectClient(api=served.api_url, auth_string=served.auth) as client:

        async def deployment() -> Any:
            try:
                return await client.read_deployment_by_name(f"replicate/{POLICY}")
            except ObjectNotFound:
                return None

        found = await until(deployment, SERVER_UP_SECONDS, f"deployment replicate/{POLICY}")
        assert found.work_pool_name == "regflow"
        flow_run = await client.create_flow_run_from_deployment(found.id)

        async def finished() -> Any:
            run = await client.read_flow_run(flow_run.id)
            return run if run.state is not None and run.state.is_final() else None

        run = await until(finished, RUN_SECONDS, "the flow run to finish")
        assert run.state.is_completed(), f"flow run ended {run.state.name}: {run.state.message}"

        artifacts = await client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run.id]),
            key=ArtifactFilterKey(any_=[ARTIFACT_KEY])))
        assert [a.type for a in artifacts] == ["table"], artifacts
        assert REPOSITORY in str(artifacts[0].data)
        return Execution(found.id, run.id, run.name, artifacts[0].id)


def _watcher_pid(served: Served) -> int:
    info = json.loads((served.home / "prefect" / "resident.json").read_text())
    assert info["api_url"] == served.api_url, info  # serve started the server on its port
    return int(info["pid"])


class UI:
    """The Prefect UI in the browser: a single-page app, so every check waits for the DOM."""

    def __init__(self, driver: WebDriver, base_url: str) -> None:
        self.driver = driver
        self.base_url = base_url

    def open(self, path: str) -> None:
        self.driver.get(self.base_url + path)

    def log_in(self, auth: str) -> None:
        """The login form of a server with an auth string: one password field (user:password)."""
        field = self.wait_for_element(By.CSS_SELECTOR, "input[type='password']", "the login form")
        self.screenshot("0-login")
        field.send_keys(auth, Keys.ENTER)
        self._wait(lambda d: not any(e.is_displayed() for e in
                                     d.find_elements(By.CSS_SELECTOR, "input[type='password']")),
                   "the UI past its login form")

    def _wait(self, condition: Callable[[WebDriver], T], what: str) -> T:
        try:
            return WebDriverWait(self.driver, PAGE_SECONDS, poll_frequency=0.25).until(condition)
        except TimeoutException:
            self.screenshot("failed")
            (SCREENSHOTS / "failed.html").write_text(self.driver.page_source)
            raise AssertionError(f"{self.driver.current_url}: no {what} after {PAGE_SECONDS}s "
                                 f"(see {SCREENSHOTS}/failed.png)") from None

    def wait_for_text(self, text: str, what: str) -> None:
        self._wait(lambda d: text in d.find_element(By.TAG_NAME, "body").text, what)

    def wait_for_element(self, by: str, selector: str, what: str) -> Any:
        return self._wait(lambda d: next((e for e in d.find_elements(by, selector) if e.is_displayed()),
                                         False), what)

    def click(self, by: str, selector: str, what: str) -> None:
        self.wait_for_element(by, selector, what).click()

    def screenshot(self, name: str) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        assert self.driver.save_screenshot(str(path)), path
        return path
