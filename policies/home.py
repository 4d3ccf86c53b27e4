"""Where regflow keeps its state on this machine: the database and the secret key."""

from __future__ import annotations

import os
from pathlib import Path

HOME_ENV = "REGFLOW_HOME"
DATABASE_URL_ENV = "REGFLOW_DATABASE_URL"


def regflow_home() -> Path:
    """``$REGFLOW_HOME`` or ``~/.regflow``, created private to the user on first use."""
    raw = os.environ.get(HOME_ENV)
    home = Path(raw).expanduser() if raw else Path.home() / ".regflow"
    # 0700 because the secret key file lives here; an existing directory is left as the user set it.
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    return home


def database_url() -> str:
    """``$REGFLOW_DATABASE_URL``, else a SQLite file in the regflow home."""
    url = os.environ.get(DATABASE_URL_ENV)
    if url:
        return url
    return f"sqlite:///{regflow_home() / 'regflow.db'}"
