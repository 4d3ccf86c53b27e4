"""The ``regflow`` command's entry point. A repeated call such as ``replicate`` goes to a warm
process (regflow_cli/warm.py) when one can take it; anything else, or a call no warm process
can take, runs here. Only the standard library is imported before that choice.
"""

from __future__ import annotations

import sys

from regflow_cli import warm


def main() -> None:
    if warm.wanted(sys.argv):
        try:
            sys.exit(warm.run(sys.argv))
        except warm.Unavailable as exc:
            print(f"regflow: {exc}; running this call in its own process", file=sys.stderr)
    from regflow_cli.main import main as run_here
    run_here()


if __name__ == "__main__":
    main()
