"""``fwd events``, ``fwd interfaces``, ``fwd stats``: what the agent sees and counts."""

from __future__ import annotations

import argparse
import json
import math
import time
from typing import Any, TextIO

import anyio

from fwd.api.client import Client
from fwd.api.gen.fwd import v1 as pb
from fwd.cli.options import bounded_int_arg, positive_arg
from fwd.cli.output import (
    dumps,
    dumps_rows,
    enum_name,
    format_table,
    interface_to_json,
    message_to_json,
    rule_stats_to_json,
)


async def _events(client: Client, args: argparse.Namespace, out: TextIO) -> None:
    actions = {"allow": pb.Action.ALLOW, "drop": pb.Action.DROP}
    request = pb.SubscribeRequest(
        actions=[actions[a] for a in args.action],
        rule_ids=args.rule,
        interfaces=args.iface,
        prefixes=args.prefix,
    )
    seen = 0
    with anyio.move_on_after(args.duration or math.inf):
        async for batch in client.events(request):
            if batch.lost:
                msg = f"{batch.lost} events lost (this subscriber fell behind)"
                if args.output == "json":
                    out.write(json.dumps({"lost": batch.lost}) + "\n")
                else:
                    out.write(f"# {msg}\n")
            for event in batch.events:
                out.write(_event_line(event, args.output) + "\n")
                seen += 1
                if args.count and seen >= args.count:
                    out.flush()
                    return
            out.flush()


def _endpoint(address: str, port: int) -> str:
    if not address:
        return "?"
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def _event_line(e: pb.Event, output: str) -> str:
    if output == "json":
        return json.dumps(message_to_json(e), sort_keys=True)
    # One case for every verdict word, and IPv6 addresses bracketed before a port
    # ([2001:db8::1]:53), as ss, curl and URLs write them.
    verdict = "drop" if e.dropped else ("would-drop" if e.would_drop else enum_name(e.action))
    when = time.strftime("%H:%M:%S", time.localtime(e.time_unix_ns / 1e9))
    rule = e.rule_id or ("(default)" if e.default_action else "(malformed)")
    src = _endpoint(e.src, e.src_port)
    dst = _endpoint(e.dst, e.dst_port)
    return f"{when} {e.interface or e.ifindex} {verdict} {rule} proto {e.protocol} {src} > {dst} len {e.length}"


async def _interfaces(client: Client, args: argparse.Namespace, out: TextIO) -> None:
    interfaces = [interface_to_json(i) for i in await client.list_interfaces()]
    if args.output == "json":
        out.write(dumps(interfaces))
        return
    keys = ("name", "ifindex", "state", "mode", "prog_id", "link_id", "error")
    headers = ("NAME", "IFINDEX", "STATE", "MODE", "PROG", "LINK", "ERROR")
    out.write(format_table(headers, [[i[k] for k in keys] for i in interfaces]))


async def _stats(client: Client, args: argparse.Namespace, out: TextIO) -> None:
    stats = [rule_stats_to_json(s) for s in await client.rule_stats_rows()]
    if args.output == "json":
        out.write(dumps_rows(stats))
        return
    keys = ("rule_id", "action", "packets", "bytes", "would_drop_packets", "would_drop_bytes")
    headers = ("RULE", "ACTION", "PACKETS", "BYTES", "WOULD_DROP_PACKETS", "WOULD_DROP_BYTES")
    out.write(format_table(headers, [[s[k] for k in keys] for s in stats]))


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``fwd events``, ``fwd interfaces`` and ``fwd stats``."""
    events = sub.add_parser(
        "events",
        parents=[common],
        help="stream drop events (logged rules, would-drops)",
        description="Stream events from the agent until interrupted (or --count/--duration). "
        "Filters combine: every given one must match.",
    )
    events.add_argument("--follow", "-f", action="store_true",
                        help="keep streaming (the default; accepted for familiarity)")
    events.add_argument("--action", action="append", default=[], choices=("allow", "drop"))
    events.add_argument("--rule", action="append", default=[], metavar="ID")
    events.add_argument("--iface", action="append", default=[], metavar="NAME")
    events.add_argument("--prefix", action="append", default=[], metavar="CIDR",
                        help="source or destination inside CIDR")
    events.add_argument("--count", type=bounded_int_arg(1, 2**63 - 1), default=0, metavar="N",
                        help="stop after N events (N >= 1)")
    events.add_argument("--duration", type=positive_arg, default=0.0, metavar="SECONDS",
                        help="stop after SECONDS")
    events.add_argument("-o", "--output", choices=("text", "json"), default="text")
    events.set_defaults(client=_events)

    ifaces = sub.add_parser(
        "interfaces",
        parents=[common],
        help="list interfaces with attach mode, program id and state",
        description="List the interfaces the agent knows: XDP attach mode, program and "
        "link ids, and whether each is attached, excluded or failed.",
    )
    ifaces.add_argument(
        "-o",
        "--output",
        choices=("table", "json"),
        default="table",
        help="output format (default: %(default)s)",
    )
    ifaces.set_defaults(client=_interfaces)

    stats = sub.add_parser(
        "stats",
        parents=[common],
        help="per-rule packet and byte counters",
        description="Per-rule counters (packets, bytes, and would-drop counts in dry-run), "
        "fetched page by page.",
    )
    stats.add_argument(
        "-o",
        "--output",
        choices=("table", "json"),
        default="table",
        help="output format (default: %(default)s)",
    )
    stats.set_defaults(client=_stats)
