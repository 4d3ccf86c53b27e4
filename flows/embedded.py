"""regflow's default Prefect: with no PREFECT_API_URL, an embedded server whose SQLite database
lives under REGFLOW_HOME, so executions outlive the process that ran them.

Call ``configure()`` before anything imports prefect: Prefect reads its settings once.
"""

from __future__ import annotations

import os

from policies.home import regflow_home

# The task-run recorder's defaults cost the server ~40 ms CPU per task run on the reference
# machine; these batch sizes brought it to ~10 ms (measured, see DESIGN.md).
SERVER_TUNING = {
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE": "200",
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_READ_BATCH_SIZE": "100",
    "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_BATCH_SIZE": "200",
    "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_READ_BATCH_SIZE": "100",
}


def configure() -> bool:
    """Point Prefect at regflow's home unless the user chose a server. True when embedded."""
    if os.environ.get("PREFECT_API_URL"):
        return False
    home = regflow_home() / "prefect"
    home.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PREFECT_HOME", str(home))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    for key, value in SERVER_TUNING.items():
        os.environ.setdefault(key, value)
    return True
