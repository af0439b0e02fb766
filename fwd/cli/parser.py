"""The ``fwd`` command: run the agent, or talk to a running one over its API.

A thin client: every command except ``agent`` is one or a few gRPC calls on
the agent's unix socket, printed as a plain-text table or as JSON. Exit codes:
0 success, 1 an error (printed as ``fwd: <status>: <message>``), 2 bad usage.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TextIO

import anyio
import betterproto2
from grpclib import GRPCError
from grpclib.exceptions import StreamTerminatedError

from fwd.api.client import SOCKET_ENV, AgentUnreachable, Client, default_socket
from fwd.api.convert import policy_from_proto
from fwd.api.gen.fwd import v1 as pb
from fwd.cli import cluster as cli_cluster, rules as cli_rules
from fwd.api.tls import client_context
from fwd.core import abi
from fwd.errors import PolicyError
from fwd.settings import Settings
from fwd.policy.files import dump_policy_yaml, load_policy_file
from fwd.policy.model import policy_to_dict

LOG_LEVELS = ("debug", "info", "warning", "error")

COMMANDS_EPILOG = """\
commands:
  fwd agent [--socket PATH] [--state-dir DIR] [--bpffs DIR] [--include GLOB]...
            [--exclude GLOB]... [--dry-run] [--detach-on-exit] [--metrics ADDR] [--log-level LEVEL]
            [--etcd URL[,URL...] [--node NAME] [--label K=V]... [--etcd-prefix P] [--lease-ttl S]]
  fwd policy get [-o yaml|json]
  fwd policy apply FILE [--expect-revision N] [--force] [--dry-run] [--confirm-within D]
                        [--name N] [--selector S] [--priority P]     (cluster mode)
  fwd policy confirm [REV]
  fwd policy rollback REV [--expect-revision N]
  fwd policy history [-o table|json]
  fwd policy diff FILE
  fwd rules list | add RULE [--position N|--before ID|--after ID] | delete ID
  fwd sets list | show SET | add SET ELEMENT... | remove SET ELEMENT...
  fwd events [--follow] [--action A] [--rule ID] [--iface I] [--prefix CIDR] [-o json]
  fwd interfaces [-o table|json]
  fwd stats [-o table|json]
  fwd cluster status [--selector S] [-o table|json]
  fwd cluster wait --revision R [--selector S] [--timeout SECONDS]
  fwd cluster label NODE KEY=VALUE... [--remove KEY]...
  fwd cluster policies [-o table|json] | delete NAME [--expect-revision N]

Client commands take --socket PATH (default: $FWD_SOCKET or /run/fwd/fwd.sock)
and --timeout SECONDS. 'fwd COMMAND --help' describes each command.

exit status: 0 success, 1 error (printed as 'fwd: STATUS: message'), 2 bad usage.
"""


class _Failed(Exception):
    """A command failed; the message is printed after "fwd: "."""


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Columns padded to their widest cell; numbers right-aligned, text left-aligned."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    numeric = [
        bool(rows) and all(isinstance(row[i], int) for row in rows) for i in range(len(headers))
    ]
    widths = [max(len(line[i]) for line in cells) for i in range(len(headers))]
    lines = []
    for line in cells:
        parts = [
            c.rjust(w) if num else c.ljust(w)
            for c, w, num in zip(line, widths, numeric, strict=True)
        ]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines) + "\n"


def _dumps(data: Any) -> str:
    return json.dumps(data, sort_keys=True, indent=2) + "\n"


def _enum_name(value: Any) -> str:
    """An enum member as lower-case text ("native"); an unknown value as its number."""
    name = getattr(value, "name", None)
    if not name or name.startswith("~"):
        return str(int(value))
    return str(name).lower()


def interface_to_json(iface: pb.Interface) -> dict[str, Any]:
    return {
        "name": iface.name,
        "ifindex": iface.ifindex,
        "state": _enum_name(iface.state),
        "mode": _enum_name(iface.mode),
        "prog_id": iface.prog_id,
        "link_id": iface.link_id,
        "error": iface.error,
        "adopted": iface.adopted,
    }


def rule_stats_to_json(stats: pb.RuleStats) -> dict[str, Any]:
    return {
        "rule_id": stats.rule_id,
        "action": _enum_name(stats.action),
        "packets": stats.packets,
        "bytes": stats.bytes,
        "would_drop_packets": stats.would_drop_packets,
        "would_drop_bytes": stats.would_drop_bytes,
    }


# --- client commands ---------------------------------------------------------


async def _policy_get(client: Client, args: argparse.Namespace, out: TextIO) -> None:
    response = await client.get_policy()
    policy = policy_from_proto(response.policy)
    if args.output == "json":
        doc: dict[str, Any] = {"revision": response.revision, "policy": policy_to_dict(policy)}
        if response.adoption is not None:  # what the agent took over when it started
            doc["adoption"] = response.adoption.to_dict()
        out.write(_dumps(doc))
    else:
        # The revision as a comment keeps the output a valid policy file.
        out.write(f"# revision: {response.revision}\n{dump_policy_yaml(policy)}")


def _load_policy(args: argparse.Namespace) -> None:
    """Validate the file before connecting: a broken file needs no agent to be reported."""
    try:
        args.policy = load_policy_file(args.file)
    except PolicyError as exc:
        text = str(exc)
        raise _Failed(text if args.file in text else f"{args.file}: {text}") from None


async def _policy_apply(client: Client, args: argparse.Namespace, out: TextIO) -> None:
    if args.dry_run:
        args.policy = dataclasses.replace(args.policy, dry_run=True)
    if args.confirm_within:
        reply = await client.apply_policy_confirmed(
            args.policy, args.confirm_within, args.expect_revision, force=args.force
        )
        when = time.strftime("%H:%M:%S", time.localtime(reply.confirm_deadline_unix_ms / 1000))
        out.write(
            f"applied revision {reply.revision}; it rolls back at {when} unless "
            f"'fwd policy confirm {reply.revision}'\n"
        )
        return
    cluster = {"name": args.name, "selector": args.selector, "priority": args.priority}
    revision = await client.apply_policy(
        args.policy, args.expect_revision, force=args.force, **cluster
    )
    if any(v is not None for v in cluster.values()):
        out.write(
            f"wrote policy {args.name or 'default'} at etcd revision {revision} "
            f"(fwd cluster wait --revision {revision})\n"
        )
    else:
        out.write(f"applied revision {revision}\n")


async def _policy_confirm(client: Client, args: argparse.Namespace, out: TextIO) -> None:
    out.write(f"confirmed revision {await client.confirm_policy(args.revision)}\n")


async def _policy_rollback(client: Client, args: argparse.Namespace, out: TextIO) -> None:
    revision = await client.rollback_policy(args.revision, args.expect_revision)
    out.write(f"applied revision {revision} (the policy of revision {args.revision})\n")


async def _policy_history(client: Client, args: argparse.Namespace, out: TextIO) -> None:
    rows = [
        {
            "revision": r.revision,
            "applied_at": time.strftime(
                "%Y-%m-%dT%H:%M:%SZ", time.gmtime(r.applied_at_unix_ms / 1000)
            ),
            "rules": r.rules,
            "default_action": _enum_name(r.default_action),
            "dry_run": r.dry_run,
        }
        for r in await client.list_history()
    ]
    if args.output == "json":
        out.write(_dumps(rows))
    else:
        headers = ["REVISION", "APPLIED_AT", "RULES", "DEFAULT", "DRY_RUN"]
        out.write(format_table(headers, [list(r.values()) for r in rows]))


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


def _event_line(e: pb.Event, output: str) -> str:
    if output == "json":
        return json.dumps(
            e.to_dict(casing=betterproto2.Casing.SNAKE, include_default_values=True),
            sort_keys=True,
        )
    verdict = "DROP" if e.dropped else ("WOULD-DROP" if e.would_drop else _enum_name(e.action))
    when = time.strftime("%H:%M:%S", time.localtime(e.time_unix_ns / 1e9))
    rule = e.rule_id or ("(default)" if e.default_action else "(malformed)")
    src = f"{e.src}:{e.src_port}" if e.src else "?"
    dst = f"{e.dst}:{e.dst_port}" if e.dst else "?"
    return f"{when} {e.interface or e.ifindex} {verdict} {rule} proto {e.protocol} {src} > {dst} len {e.length}"


def _duration(text: str) -> int:
    """Seconds from "90", "90s", "10m" or "1h"."""
    units = {"s": 1, "m": 60, "h": 3600}
    number, unit = (text[:-1], text[-1]) if text and text[-1] in units else (text, "s")
    if not number.isdigit() or int(number) == 0:
        raise argparse.ArgumentTypeError(f"expected a duration like 60s, 10m or 1h, not {text!r}")
    return int(number) * units[unit]


async def _interfaces(client: Client, args: argparse.Namespace, out: TextIO) -> None:
    interfaces = [interface_to_json(i) for i in await client.list_interfaces()]
    if args.output == "json":
        out.write(_dumps(interfaces))
        return
    keys = ("name", "ifindex", "state", "mode", "prog_id", "link_id", "error")
    headers = ("NAME", "IFINDEX", "STATE", "MODE", "PROG", "LINK", "ERROR")
    out.write(format_table(headers, [[i[k] for k in keys] for i in interfaces]))


async def _stats(client: Client, args: argparse.Namespace, out: TextIO) -> None:
    stats = [rule_stats_to_json(s) for s in await client.list_rule_stats()]
    if args.output == "json":
        out.write(_dumps(stats))
        return
    keys = ("rule_id", "action", "packets", "bytes", "would_drop_packets", "would_drop_bytes")
    headers = ("RULE", "ACTION", "PACKETS", "BYTES", "WOULD_DROP_PACKETS", "WOULD_DROP_BYTES")
    out.write(format_table(headers, [[s[k] for k in keys] for s in stats]))


Command = Callable[[Client, argparse.Namespace, TextIO], Awaitable[None]]


def _run_client(command: Command, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    async def go() -> None:
        ssl_ctx = None
        if args.server:
            if not args.tls_ca:
                raise _Failed("--server needs --tls-ca (and --tls-cert/--tls-key for mTLS)")
            ssl_ctx = client_context(args.tls_ca, args.tls_cert or None, args.tls_key or None)
        async with Client(
            args.socket, timeout=args.timeout, server=args.server, ssl=ssl_ctx
        ) as client:
            await command(client, args, out)

    try:
        prepare = getattr(args, "prepare", None)
        if prepare is not None:
            prepare(args)
        anyio.run(go)
    except GRPCError as exc:
        err.write(f"fwd: {exc.status.name}: {exc.message or ''}\n")
        return 1
    except (AgentUnreachable, _Failed, PolicyError) as exc:
        err.write(f"fwd: {exc}\n")
        return 1
    except TimeoutError:  # grpclib raises asyncio.TimeoutError, the same class since 3.11
        err.write(f"fwd: DEADLINE_EXCEEDED: no answer from the agent within {args.timeout:g}s\n")
        return 1
    except (ConnectionError, StreamTerminatedError) as exc:
        # The agent went away mid-call (restart, shutdown).
        err.write(f"fwd: UNAVAILABLE: connection to {args.server or args.socket} failed: {exc}\n")
        return 1
    return 0


# --- agent -------------------------------------------------------------------


def _agent(args: argparse.Namespace) -> int:
    if args.cleanup:
        from fwd.kernel.cleanup import cleanup
        from fwd.errors import FwdError

        try:
            removed = cleanup(args.bpffs)
        except FwdError as exc:
            print(f"fwd: {exc}", file=sys.stderr)
            return 1
        for what in removed:
            print(f"removed {what}")
        print(f"fwd: nothing of fwd's is left under {args.bpffs}")
        return 0
    from fwd import agent  # lazily: it pulls in libbpf and netlink

    try:
        cluster = _cluster_settings(args)
    except _Failed as exc:
        print(f"fwd: {exc}", file=sys.stderr)
        return 2
    settings = Settings(
        socket_path=args.socket,
        state_dir=args.state_dir,
        bpffs_dir=args.bpffs,
        include=tuple(args.include) if args.include else Settings().include,
        exclude=tuple(args.exclude),
        detach_on_exit=args.detach_on_exit,
        force_dry_run=args.dry_run,
        listen=args.listen,
        mgmt_prefixes=tuple(args.mgmt_prefix),
        mgmt_services=tuple(args.mgmt_service) or Settings().mgmt_services,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_client_ca=args.tls_client_ca,
        metrics_addr=args.metrics,
        event_rate=args.event_rate,
        event_burst=args.event_burst,
        **cluster,
    )
    return agent.run(settings, log_level=args.log_level)


def _cluster_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The cluster-mode fields of Settings from ``fwd agent --etcd ...`` (validated here,
    so a typo stops the agent before it loads anything)."""
    if not args.etcd:
        if args.node or args.label:
            raise _Failed("--node and --label need --etcd (cluster mode)")
        return {}
    from fwd.cluster.etcd import EtcdError, parse_urls
    from fwd.cluster.layout import check_node_name
    from fwd.cluster.selector import parse_labels

    try:
        parse_urls(args.etcd)
        labels = parse_labels(args.label)
        if args.node:
            check_node_name(args.node)
    except (EtcdError, PolicyError) as exc:
        raise _Failed(str(exc)) from None
    return {
        "etcd_endpoints": tuple(u.strip() for u in args.etcd.split(",") if u.strip()),
        "node_name": args.node,
        "node_labels": tuple(sorted(labels.items())),
        "etcd_prefix": args.etcd_prefix,
        "lease_ttl": args.lease_ttl,
    }


# --- argument parsing ----------------------------------------------------------


def _bounded_int(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if not low <= n <= high:
            raise argparse.ArgumentTypeError(f"must be {low:,}..{high:,}, got {n:,}")
        return n

    return parse


# The kernel's limits (bpf/fwd.h: its fixed-point token bucket must not overflow).
_event_rate = _bounded_int(0, abi.EVENT_MAX_RATE)
_event_burst = _bounded_int(1, abi.EVENT_MAX_BURST)


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, not {text}")
    return value


def _revision(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, not {text}")
    return value


def _lease_ttl(text: str) -> int:
    value = int(text)
    if not 2 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"must be 2-3600 seconds, not {text}")
    return value


def _metrics_addr(text: str) -> str:
    from fwd.metrics.addr import parse_addr

    if text:
        try:
            parse_addr(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _client_options(
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
        type=_positive,
        default=argparse.SUPPRESS if suppress else 10.0,
        metavar="SECONDS",
        help="give up on each call after this long (default: 10)",
    )
    return common


def _fresh_common() -> argparse.ArgumentParser:
    """A new copy of the client options for a subcommand that redefines one of them."""
    common = _client_options(suppress=True)
    assert isinstance(common, argparse.ArgumentParser)
    return common


def build_parser() -> argparse.ArgumentParser:
    """The whole command line; ``fwd --help`` lists every command."""
    parser = argparse.ArgumentParser(
        prog="fwd",
        description="An API-first XDP firewall. 'fwd agent' runs the agent on this node; "
        "the other commands talk to a running agent over its gRPC unix socket.",
        epilog=COMMANDS_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _client_options(parser.add_argument_group("client options (also after the command)"))
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    common = _fresh_common()
    defaults = Settings()

    agent = sub.add_parser(
        "agent",
        help="run the agent (needs root: loads BPF, attaches XDP)",
        description="Run the agent in the foreground until SIGTERM or SIGINT.",
    )
    agent.add_argument(
        "--socket",
        default=argparse.SUPPRESS,  # the value given before the command, or its default
        metavar="PATH",
        help=f"serve the API on this unix socket (default: ${SOCKET_ENV} or {default_socket()})",
    )
    agent.add_argument(
        "--state-dir",
        default=defaults.state_dir,
        metavar="DIR",
        help="desired state (policies, revisions) lives here (default: %(default)s)",
    )
    agent.add_argument(
        "--bpffs",
        default=defaults.bpffs_dir,
        metavar="DIR",
        help="pin programs, links and maps here (default: %(default)s)",
    )
    agent.add_argument(
        "--include",
        action="append",
        default=[],
        metavar="GLOB",
        help="manage interfaces whose name matches GLOB; repeatable (default: '*')",
    )
    agent.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="GLOB",
        help="never manage interfaces matching GLOB, even if included; repeatable",
    )
    agent.add_argument(
        "--mgmt-prefix",
        action="append",
        default=[],
        metavar="CIDR",
        help="operators connect from here: no policy may drop their traffic to the "
        "management services unless applied with --force; repeatable",
    )
    agent.add_argument(
        "--mgmt-service",
        action="append",
        default=[],
        metavar="PROTO/PORT",
        help="a management service to protect, e.g. tcp/22 (default: tcp/22); repeatable",
    )
    agent.add_argument(
        "--listen",
        default="",
        metavar="HOST:PORT",
        help="also serve on TCP; requires --tls-cert, --tls-key and --tls-client-ca "
        "(mutual TLS: client certificates with OU=admin may write, others only read)",
    )
    agent.add_argument("--tls-cert", default="", metavar="FILE", help="agent certificate")
    agent.add_argument("--tls-key", default="", metavar="FILE", help="agent key")
    agent.add_argument(
        "--tls-client-ca", default="", metavar="FILE", help="CA that signs client certificates"
    )
    agent.add_argument(
        "--cleanup",
        action="store_true",
        help="do not run: detach every XDP link this agent pinned under --bpffs and remove "
        "its pins (other XDP programs and the state directory are left alone), then exit",
    )
    agent.add_argument(
        "--dry-run",
        action="store_true",
        help="enforce every policy in dry-run: nothing is dropped, would-be drops are "
        "counted and logged (a safe first run)",
    )
    agent.add_argument(
        "--detach-on-exit",
        action="store_true",
        help="on SIGTERM/SIGINT detach XDP and remove the pins; by default enforcement "
        "stays in place (pinned) and the next agent adopts it without a gap",
    )
    agent.add_argument(
        "--metrics",
        type=_metrics_addr,
        default=defaults.metrics_addr,
        metavar="ADDR",
        help="serve Prometheus metrics at http://ADDR/metrics; HOST:PORT, [IPV6]:PORT, "
        "or '' to disable (default: %(default)s)",
    )
    agent.add_argument(
        "--event-rate",
        type=_event_rate,
        default=defaults.event_rate,
        metavar="N",
        help="events the kernel emits per second per CPU at most; the rest are counted as "
        "suppressed (default: %(default)s)",
    )
    agent.add_argument(
        "--event-burst",
        type=_event_burst,
        default=defaults.event_burst,
        metavar="N",
        help="events a CPU may emit at once above --event-rate (default: %(default)s)",
    )
    agent.add_argument(
        "--etcd",
        default="",
        metavar="URL[,URL...]",
        help="cluster mode: take the policy from etcd at these endpoints (http://HOST:PORT) "
        "and report status there; without it the agent runs in local mode (SQLite)",
    )
    agent.add_argument(
        "--node", default="", metavar="NAME",
        help="this node's name in etcd (default: the host name)",
    )  # fmt: skip
    agent.add_argument(
        "--label", action="append", default=[], metavar="KEY=VALUE",
        help="a label of this node, written to etcd only if the node has no labels there "
        "yet (afterwards etcd is the truth: fwd cluster label); repeatable",
    )  # fmt: skip
    agent.add_argument(
        "--etcd-prefix", default=defaults.etcd_prefix, metavar="PREFIX",
        help="keys live under this prefix (default: %(default)s)",
    )  # fmt: skip
    agent.add_argument(
        "--lease-ttl", type=_lease_ttl, default=defaults.lease_ttl, metavar="SECONDS",
        help="the node shows as silent this long after it stops (default: %(default)s)",
    )  # fmt: skip
    agent.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        default="info",
        help="log verbosity (default: %(default)s)",
    )
    agent.set_defaults(handler=_agent)

    policy = sub.add_parser(
        "policy",
        help="get or apply the policy",
        description="Read or replace the policy the agent enforces.",
    )
    policy_sub = policy.add_subparsers(dest="policy_command", metavar="COMMAND", required=True)
    get = policy_sub.add_parser(
        "get",
        parents=[common],
        help="print the enforced policy and its revision",
        description="Print the enforced policy. YAML output is a valid policy file "
        "(the revision is a comment); JSON is {revision, policy}.",
    )
    get.add_argument(
        "-o",
        "--output",
        choices=("yaml", "json"),
        default="yaml",
        help="output format (default: %(default)s)",
    )
    get.set_defaults(client=_policy_get)
    apply = policy_sub.add_parser(
        "apply",
        parents=[common],
        help="validate a policy file and enforce it atomically",
        description="Validate FILE (YAML or JSON), then have the agent enforce it "
        "atomically. Prints the new revision.",
    )
    apply.add_argument("file", metavar="FILE", help="the policy file (YAML or JSON)")
    apply.add_argument(
        "--expect-revision",
        type=_revision,
        metavar="N",
        help="fail unless revision N is the one enforced now (from 'fwd policy get'), "
        "so concurrent writers cannot overwrite each other",
    )
    apply.add_argument(
        "--force",
        action="store_true",
        help="apply even if the policy could drop the agent's management traffic "
        "(see 'fwd agent --mgmt-prefix')",
    )
    apply.add_argument(
        "--dry-run",
        action="store_true",
        help="apply in dry-run: nothing is dropped, would-be drops are counted and logged",
    )
    apply.add_argument(
        "--confirm-within",
        type=_duration,
        metavar="DURATION",
        help="roll back to the previous revision unless 'fwd policy confirm' arrives "
        "within DURATION (60s, 10m, 1h); the deadline survives an agent restart",
    )
    apply.add_argument("--name", metavar="N",
                       help="cluster mode: the policy's name in etcd (default: default)")
    apply.add_argument("--selector", metavar="S",
                       help="cluster mode: the nodes it applies to, e.g. 'role=edge,zone!=b' "
                       "(default: every node)")
    apply.add_argument("--priority", type=int, metavar="P",
                       help="cluster mode: merge order, lower first (default: 100)")
    apply.set_defaults(client=_policy_apply, prepare=_load_policy)

    confirm = policy_sub.add_parser(
        "confirm",
        parents=[common],
        help="keep a revision applied with --confirm-within",
        description="Cancel the pending rollback of a revision applied with --confirm-within.",
    )
    confirm.add_argument("revision", nargs="?", type=_revision, metavar="REV",
                         help="the pending revision (default: whichever is pending)")
    confirm.set_defaults(client=_policy_confirm)

    rollback = policy_sub.add_parser(
        "rollback",
        parents=[common],
        help="enforce an earlier revision's policy again",
        description="Enforce the policy of revision REV again, as a new revision.",
    )
    rollback.add_argument("revision", type=_revision, metavar="REV")
    rollback.add_argument("--expect-revision", type=_revision, metavar="N",
                          help="fail unless revision N is the one enforced now")
    rollback.set_defaults(client=_policy_rollback)

    history = policy_sub.add_parser(
        "history",
        parents=[common],
        help="list applied revisions, newest first",
        description="The revision history: when each revision was applied and its shape.",
    )
    history.add_argument("-o", "--output", choices=("table", "json"), default="table")
    history.set_defaults(client=_policy_history)

    cli_rules.register(sub, policy_sub, common, _revision, _load_policy)
    cli_cluster.register(sub, common, _revision, _fresh_common)

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
    events.add_argument("--count", type=int, default=0, metavar="N", help="stop after N events")
    events.add_argument("--duration", type=_positive, default=0.0, metavar="SECONDS",
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
    return parser


def main(
    argv: Sequence[str] | None = None, *, out: TextIO | None = None, err: TextIO | None = None
) -> int:
    """Run ``fwd`` with ``argv`` (default: sys.argv[1:]); returns the exit status."""
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2), already printed
        return exc.code if isinstance(exc.code, int) else 2
    if getattr(args, "client", None) is not None:
        return _run_client(args.client, args, out, err)
    code: int = args.handler(args)
    return code
