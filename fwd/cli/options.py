"""Argument types and the client options every client command takes."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable

from fwd.api.client import SOCKET_ENV, default_socket


DEFAULT_TIMEOUT = 10.0


def bounded_int_arg(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if not low <= n <= high:
            raise argparse.ArgumentTypeError(f"must be {low:,}..{high:,}, got {n:,}")
        return n

    return parse


def positive_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be positive, not {text}")
    return value


def revision_arg(text: str) -> int:
    if not (text.isascii() and text.isdigit()):
        raise argparse.ArgumentTypeError(
            f"a revision is a number (see 'fwd policy history'), not {text!r}"
        )
    return int(text)


def duration_arg(text: str) -> int:
    """Seconds from "90", "90s", "10m" or "1h"."""
    units = {"s": 1, "m": 60, "h": 3600}
    number, unit = (text[:-1], text[-1]) if text and text[-1] in units else (text, "s")
    if not number.isdigit() or int(number) == 0:
        raise argparse.ArgumentTypeError(f"expected a duration like 60s, 10m or 1h, not {text!r}")
    return int(number) * units[unit]


def client_options(
    common: argparse._ActionsContainer | None = None, *, suppress: bool = False
) -> argparse._ActionsContainer:
    """The options every client command takes. They are accepted before the command
    (``fwd --socket S policy get``, holding the defaults) and after it (``suppress``:
    given there they override, absent they leave the value from before the command)."""
    common = common or argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--socket",
        default=argparse.SUPPRESS if suppress else default_socket(),
        metavar="PATH",
        help=f"the agent's API socket (default: ${SOCKET_ENV} or {default_socket()})",
    )
    common.add_argument(
        "--server",
        default=argparse.SUPPRESS if suppress else os.environ.get("FWD_SERVER", ""),
        metavar="HOST:PORT",
        help="talk to an agent's TCP listener instead of the socket (mutual TLS; "
        "default: $FWD_SERVER)",
    )
    empty = argparse.SUPPRESS if suppress else ""
    common.add_argument("--tls-ca", default=empty, metavar="FILE", help="CA that signed the agent")
    common.add_argument("--tls-cert", default=empty, metavar="FILE", help="client certificate")
    common.add_argument("--tls-key", default=empty, metavar="FILE", help="client key")
    common.add_argument(
        "--timeout",
        type=positive_arg,
        default=argparse.SUPPRESS if suppress else None,
        metavar="SECONDS",
        help=f"give up on each call after this long (default: {DEFAULT_TIMEOUT:g}; "
        "a policy apply waits longer, by the policy's size)",
    )
    return common


def fresh_common() -> argparse.ArgumentParser:
    """A new copy of the client options for a subcommand that redefines one of them."""
    common = client_options(suppress=True)
    assert isinstance(common, argparse.ArgumentParser)
    return common


def change_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--expect-revision", type=revision_arg, metavar="N",
                   help="fail unless revision N is the one enforced now")
    p.add_argument("--force", action="store_true",
                   help="even if the result could drop the management traffic")
