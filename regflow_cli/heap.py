"""The objects a CLI call builds before its work starts, and Python's cyclic garbage collector.

A command that runs an execution imports Prefect, pydantic's schemas and SQLAlchemy: several
hundred thousand objects that live as long as the process. With the default thresholds the
collector walks that growing heap again and again while it is built, then on every later full
pass and once more at exit (measured in docs/performance.md, issue 15). So the young generation
is collected less often while the command starts, and what start-up built is moved out of the
collector's sight (``gc.freeze``) once the command's modules are in: it is never garbage before
the process ends.
"""

from __future__ import annotations

import gc

# Allocations between two collections of the young generation while a command starts (Python's
# default is 700). Not off: a command that never reaches `started()` still collects its cycles,
# one pass per this many allocations, so its garbage stays bounded.
START_UP_THRESHOLD = 100_000

_defaults: tuple[int, int, int] | None = None


def starting() -> None:
    """Called first by the console script, before the command's imports."""
    global _defaults
    if _defaults is None:
        _defaults = gc.get_threshold()
        gc.set_threshold(START_UP_THRESHOLD, *_defaults[1:])


def started() -> None:
    """The command's modules are imported: keep them out of every later collection, and
    collect as usual from here on."""
    global _defaults
    if _defaults is not None:
        gc.freeze()
        gc.set_threshold(*_defaults)
        _defaults = None
