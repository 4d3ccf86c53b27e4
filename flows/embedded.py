"""regflow's default Prefect: with no PREFECT_API_URL, the local server under REGFLOW_HOME
(flows/prefect_server.py), shared by every CLI call and `regflow serve`, so executions outlive
the process that ran them and every process sees the same history.

Call ``configure()`` before anything imports prefect: Prefect reads its settings once.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from flows import prefect_server
from policies.home import regflow_home


def prefect_home() -> Path:
    return regflow_home() / "prefect"


def prepare_environment() -> bool:
    """Prefect's settings for regflow's home, unless the user chose a server; no server is
    contacted. True when embedded."""
    if os.environ.get("PREFECT_API_URL"):
        return False
    home = prefect_server.private_dir(prefect_home())
    os.environ.setdefault("PREFECT_HOME", str(home))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    # A first start migrates a new database: 15-20 s on a quiet 2-core machine, more when busy,
    # and Prefect's own 20 s default then fails the run before it begins.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    for key, value in prefect_server.SERVER_TUNING.items():
        os.environ.setdefault(key, value)
    # Prefect's own throwaway server (idle 0, or no resident could start) requires it too.
    auth = prefect_server.auth_string(home)
    os.environ[prefect_server.SERVER_AUTH_ENV] = auth
    os.environ[prefect_server.CLIENT_AUTH_ENV] = auth
    return True


def configure() -> bool:
    """Point Prefect at regflow's home unless the user chose a server: the running local server,
    or one started for this call (kept for the next ones). True when embedded."""
    if not prepare_environment():
        return False
    idle = prefect_server.idle_seconds()
    try:
        # With residents off, a running one (`regflow serve`'s) is still used, never started.
        url = prefect_server.resident_url(prefect_home(), dict(os.environ), start=idle > 0)
    except RuntimeError as exc:
        # Still runnable: Prefect's own throwaway server takes over, slower but whole.
        print(f"regflow: {exc.args[0].splitlines()[0]}; using a temporary Prefect server for this call",
              file=sys.stderr)
        url = None
    if url is not None:
        os.environ["PREFECT_API_URL"] = url
    return True


def configure_for_serve(port: int) -> str:
    """`regflow serve` without PREFECT_API_URL: the running local server, else one started on
    ``port`` that stays while serve (or a call using it) runs. Its base URL (the UI)."""
    prepare_environment()
    url = prefect_server.resident_url(prefect_home(), dict(os.environ), port=port, idle=0.0)
    assert url is not None  # start=True: a URL or an error
    os.environ["PREFECT_API_URL"] = url
    return url.removesuffix("/api")
