"""Chunked upload sessions left open by an interrupted attempt, so that the next attempt — a
task retry in the same run, or the next run after the process died — continues the upload
from the registry's Range instead of from byte zero.

Kept in memory, and in a small JSON file under REGFLOW_HOME when one is given. A location is
not a credential (registries sign their own upload state into it), but it is only useful to
this machine's next run, so it stays local.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

# Registries purge abandoned uploads (distribution: after 7 days by default); a session older
# than a day is more likely gone than not, and restarting costs one failed status request.
MAX_SESSION_AGE_SECONDS = 24 * 3600


class UploadSessions:
    def __init__(self, path: Path | None = None, scope: str = "") -> None:
        self.path = path
        self.scope = scope  # the target registry's host: one file serves every target
        self._memory: dict[str, str] = {}
        self._loaded = False

    def get(self, repository: str, digest: str) -> str | None:
        self._load()
        return self._memory.get(f"{repository}@{digest}")

    def put(self, repository: str, digest: str, location: str) -> None:
        self._load()
        self._memory[f"{repository}@{digest}"] = location
        self._save()

    def drop(self, repository: str, digest: str) -> None:
        self._load()
        if self._memory.pop(f"{repository}@{digest}", None) is not None:
            self._save()

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        entries = self._read().get(self.scope)
        entries = entries if isinstance(entries, dict) else {}
        now = time.time()
        self._memory = {key: e["location"] for key, e in entries.items()
                        if isinstance(e, dict) and now - float(e.get("saved_at", 0)) < MAX_SESSION_AGE_SECONDS
                        and isinstance(e.get("location"), str)}

    def _read(self) -> dict[str, Any]:
        if self.path is None or not self.path.exists():
            return {}
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}  # a damaged file only costs a restart of the uploads it named
        return data if isinstance(data, dict) else {}

    def _save(self) -> None:
        if self.path is None:
            return
        data = self._read()
        now = time.time()
        data[self.scope] = {k: {"location": v, "saved_at": now} for k, v in self._memory.items()}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".uploads-")
        with os.fdopen(fd, "w") as out:
            json.dump(data, out)
        os.replace(tmp, self.path)  # atomic: a reader never sees half a file
