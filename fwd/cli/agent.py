"""``fwd agent``: run the agent on this node (or, with --cleanup, remove what it pinned)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from fwd.api.client import SOCKET_ENV, default_socket
from fwd.cli.options import bounded_int_arg
from fwd.cli.output import Failed
from fwd.core import abi
from fwd.api.direct import add_tls_options
from fwd.errors import FwdError
from fwd.settings import Settings


LOG_LEVELS = ("debug", "info", "warning", "error")


def _failsafe_list(text: str) -> str:
    from fwd.policy.failsafe import FailsafeError, parse

    try:
        parse(text)
    except FailsafeError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


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
    except Failed as exc:
        print(f"fwd: {exc}", file=sys.stderr)
        return 2
    settings = Settings(
        socket_path=args.socket,
        state_dir=args.state_dir,
        bpffs_dir=args.bpffs,
        pin=not args.no_pin,
        include=tuple(args.include) if args.include else Settings().include,
        exclude=tuple(args.exclude),
        detach_on_exit=args.detach_on_exit,
        force_dry_run=args.dry_run,
        listen=args.listen,
        mgmt_prefixes=tuple(args.mgmt_prefix),
        mgmt_services=tuple(args.mgmt_service) or Settings().mgmt_services,
        failsafe=Settings().failsafe if args.failsafe is None else tuple(args.failsafe),
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
    etcd_only = [f for f, v in (("--node", args.node), ("--label", args.label),
                                ("--etcd-cert", args.etcd_cert), ("--etcd-admin-cert", args.etcd_admin_cert)) if v]  # fmt: skip
    if not args.etcd:
        if etcd_only:
            raise Failed(f"{etcd_only[0]} needs --etcd (cluster mode)")
        return {}
    from fwd.api.direct import EtcdAccess
    from fwd.cluster.credentials import TlsFiles, load
    from fwd.cluster.layout import check_node_name
    from fwd.cluster.selector import parse_labels

    try:
        EtcdAccess.from_args(args).credentials()  # the transport rule, and the files load
        labels = parse_labels(args.label)
        if args.node:
            check_node_name(args.node)
    except FwdError as exc:
        raise Failed(str(exc)) from None
    admin = TlsFiles(args.etcd_ca, args.etcd_admin_cert, args.etcd_admin_key)
    if admin.cert or admin.key:
        try:
            if args.etcd_insecure:
                raise Failed("--etcd-admin-cert: needs https:// etcd URLs")
            load(admin)
        except FwdError as exc:
            raise Failed(f"--etcd-admin-cert/--etcd-admin-key: {exc}") from None
    return {
        "etcd_endpoints": tuple(u.strip() for u in args.etcd.split(",") if u.strip()),
        "node_name": args.node,
        "node_labels": tuple(sorted(labels.items())),
        "etcd_prefix": args.etcd_prefix,
        "lease_ttl": args.lease_ttl,
        "etcd_ca": args.etcd_ca,
        "etcd_cert": args.etcd_cert,
        "etcd_key": args.etcd_key,
        "etcd_insecure": args.etcd_insecure,
        "etcd_admin_cert": args.etcd_admin_cert,
        "etcd_admin_key": args.etcd_admin_key,
    }


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


# The kernel's limits (bpf/fwd.h: its fixed-point token bucket must not overflow).
_event_rate = bounded_int_arg(0, abi.EVENT_MAX_RATE)


_event_burst = bounded_int_arg(1, abi.EVENT_MAX_BURST)


def register(sub: Any) -> None:
    """Add ``fwd agent`` to the parser."""
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
        "--no-pin",
        action="store_true",
        help="pin nothing (no bpffs needed): enforcement ends when the agent stops and a "
        "restarted agent re-attaches instead of adopting; by default a bpffs is mounted at "
        "/sys/fs/bpf if none is there, and a pin failure stops the agent",
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
        "--failsafe",
        action="append",
        type=_failsafe_list,
        metavar="LIST",
        help="traffic no policy can drop, as Calico's failsafe ports: PROTO/PORT (to this "
        "node) or PROTO/sport:PORT@ADDRESS (replies from a server), comma-separated; the "
        "etcd endpoints' replies and the --listen port are added; '' turns the failsafe off "
        "(then a policy that could drop tcp/22 needs 'fwd policy apply --force') "
        "(default: tcp/22)",
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
        help="cluster mode: take the policy from etcd at these endpoints (https://HOST:PORT) "
        "and report status there; without it the agent runs in local mode (SQLite)",
    )
    add_tls_options(agent, agent=True)
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
