"""regflow's default Prefect: with no PREFECT_API_URL, an embedded server whose SQLite database
lives under REGFLOW_HOME, so executions outlive the process that ran them. The server is a
resident one, kept between calls (deployments/resident.py), unless
REGFLOW_EMBEDDED_IDLE_SECONDS=0 asks for Prefect's throwaway server per process.

Call ``configure()`` before anything imports prefect: Prefect reads its settings once (a warm
process that imported it earlier has them read again).
"""

from __future__ import annotations

import os
import sys

from deployments import resident
from deployments.processes import SERVER_TUNING
from policies.home import regflow_home


def prepare_environment() -> bool:
    """Prefect's settings for regflow's home, unless the user chose a server; no server is
    contacted. True when embedded."""
    if os.environ.get("PREFECT_API_URL"):
        return False
    home = regflow_home() / "prefect"
    home.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PREFECT_HOME", str(home))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    # A first start migrates a new database: 15-20 s on a quiet 2-core machine, more when busy,
    # and Prefect's own 20 s default then fails the run before it begins.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    for key, value in SERVER_TUNING.items():
        os.environ.setdefault(key, value)
    return True


def configure() -> bool:
    """Point Prefect at regflow's home unless the user chose a server. True when embedded."""
    embedded = prepare_environment()
    if embedded:
        try:
            url = resident.api_url(regflow_home() / "prefect", dict(os.environ))
        except RuntimeError as exc:
            # Still runnable: Prefect's own throwaway server takes over, slower but whole.
            print(f"regflow: {exc}; using a temporary Prefect server for this call", file=sys.stderr)
            url = None
        if url is not None:
            os.environ["PREFECT_API_URL"] = url
    if "prefect.context" in sys.modules:
        # A warm process's fork (regflow_cli/warm.py): Prefect was imported before this call's
        # environment, working directory (prefect.toml) and server were known.
        from prefect.context import refresh_global_settings_context
        refresh_global_settings_context()
    return embedded
