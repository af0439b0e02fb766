"""``fwd``'s exit status: what a script may conclude from it.

| code | meaning |
| --- | --- |
| 0 | done |
| 1 | refused or failed: nothing changed (the message says why) |
| 2 | bad usage (the command line itself) |
| 3 | the agent could not be reached (nothing was sent, or a read got no answer) |
| 4 | outcome unknown: a change was sent and no answer came (the message names the
|   | revision enforced before it: a newer one in ``fwd policy history`` means it applied) |
"""

from __future__ import annotations

import argparse

OK = 0
FAILED = 1
USAGE = 2
UNREACHABLE = 3
UNKNOWN = 4


class OutcomeUnknown(Exception):
    """A change was sent and no answer came; the message says what to check."""


def unknown_message(args: argparse.Namespace, why: str) -> str:
    """The exit-4 message: what was sent, and which revision tells whether it applied."""
    what = getattr(args, "write", "the change")
    before = getattr(args, "revision_before", None)
    if before is None:
        check = "'fwd policy history' shows whether it was applied"
    else:
        check = (
            f"revision {before} was enforced before it: if 'fwd policy history' lists "
            f"revision {before + 1} or later, it was applied (a big policy may still be "
            "compiling)"
        )
    return f"OUTCOME UNKNOWN: {what} was sent but {why}; {check}"
