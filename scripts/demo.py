"""The demo: two real registries on loopback, a seeded source, one policy, two executions.

    bash scripts/demo        (installs everything first, then runs this)

Everything lives under ./.regflow-demo (REGFLOW_HOME) and is stopped at the end: registries by
their PIDs, which this script started.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

from flows import prefect_server
from tests.support.corpus import CorpusBuilder, ImageKind
from tests.support.registry import RegistryProcess
from tests.support.skopeo import inspect_raw_digest

HOME = Path(__file__).resolve().parent.parent / ".regflow-demo"
# The installed console script, as a user runs it.
_SCRIPT = Path(sys.executable).with_name("regflow")
REGFLOW = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "regflow_cli.main"]

CONFIG = """\
version: 1
registries:
  - name: source
    type: docker-registry
    url: {src}
    credential: {{type: basic, access_key: {user}, access_secret: "${{DEMO_SOURCE_PASSWORD}}"}}
  - name: mirror
    type: docker-registry
    url: {dst}
policies:
  - name: mirror-team-a
    description: every team-a image tagged 1.x, under mirror/
    src_registry: source
    dest_registry: mirror
    dest_namespace: mirror
    dest_namespace_replace_count: 1
    filters:
      - {{type: name, value: "team-a/**"}}
      - {{type: tag, value: "1.*"}}
    trigger: {{type: manual}}
"""


def regflow(*args: str, env: dict[str, str]) -> int:
    print(f"\n$ regflow {' '.join(args)}", flush=True)
    return subprocess.run([*REGFLOW, *args], env=env).returncode


def main() -> int:
    HOME.mkdir(exist_ok=True)
    password = secrets.token_urlsafe(12)
    env = {k: v for k, v in os.environ.items() if not k.startswith("REGFLOW_")}
    env.update(REGFLOW_HOME=str(HOME), DEMO_SOURCE_PASSWORD=password)
    with RegistryProcess("basic", users={"demo": password}, log_level="error") as src, \
            RegistryProcess("anonymous", log_level="error") as dst:
        print(f"source registry {src.url} (basic auth), mirror registry {dst.url}")
        corpus = CorpusBuilder(src, auth=src.httpx_auth(), seed=7)
        pushed = [corpus.push("team-a/web", ["1.0", "1.1"], ImageKind.DOCKER),
                  corpus.push("team-a/web", ["2.0"], ImageKind.DOCKER, created=1),
                  corpus.push("team-a/tools/cli", ["1.4"], ImageKind.OCI_INDEX),
                  corpus.push("team-b/api", ["1.0"], ImageKind.OCI)]
        print("seeded:", ", ".join(f"{p.repository}:{p.tag}" for p in pushed))
        config = HOME / "demo.yaml"
        config.write_text(CONFIG.format(src=src.url, dst=dst.url, user="demo"))

        codes = [regflow("apply", "-f", str(config), env=env),
                 regflow("replicate", "mirror-team-a", "--dry-run", env=env),
                 regflow("replicate", "mirror-team-a", env=env),
                 regflow("replicate", "mirror-team-a", env=env),
                 regflow("executions", "mirror-team-a", env=env)]
        expected = {("mirror/web", "1.0"): pushed[0].digest, ("mirror/web", "1.1"): pushed[0].digest,
                    ("mirror/tools/cli", "1.4"): pushed[2].digest}
        print("\nverifying with skopeo inspect --raw:")
        ok = True
        for (repo, tag), digest in expected.items():
            got = inspect_raw_digest(dst.ref(repo, tag))
            ok &= got == digest
            print(f"  {repo}:{tag} {'ok' if got == digest else 'MISMATCH'} {got}")
    # The regflow calls above shared one local Prefect server; the demo started it, so it ends
    # it instead of leaving it for its idle time.
    if (info := prefect_server.read_info(HOME / "prefect")) is not None:
        prefect_server.stop(info)
    print(f"\nstate kept in {HOME} (REGFLOW_HOME); registries and the local Prefect server stopped.")
    return 0 if ok and not any(codes) else 1


if __name__ == "__main__":
    sys.exit(main())
