"""CLI commands of cluster mode: ``fwd cluster status | wait | label | policies | delete | init``.

Thin clients of fwd.v1.ClusterService: on an agent running with ``--etcd`` (it
reads and writes etcd for the caller, as its admin identity if it has one), or,
with ``--etcd URL`` and the caller's own certificate, served in this process
straight over etcd (fwd/api/direct.py). ``init`` sets up etcd's users and roles.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any, TextIO

from fwd.api.client import Client
from fwd.api.direct import etcd_parent, register_init
from fwd.api.convert import policy_from_proto
from fwd.api.gen.fwd import v1 as pb
from fwd.cli.options import fresh_common, revision_arg
from fwd.cli.output import format_table
from fwd.policy.model import policy_to_dict

# ``fwd cluster wait`` asks the agent to wait this much longer than the client's
# own --timeout would allow: the call's deadline is the wait's timeout plus this.
WAIT_SLACK = 5.0


def _labels_text(labels: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items())) or "-"


def node_to_json(n: pb.NodeStatus) -> dict[str, Any]:
    return {
        "node": n.node,
        "labels": dict(sorted(n.labels.items())),
        "live": n.live,
        "synced_revision": n.synced_revision,
        "lag": n.lag,
        "policy_hash": n.policy_hash,
        "policies": [[p.name, p.mod_revision] for p in n.policies],
        "applied_revision": n.applied_revision,
        "interfaces": [{"name": i.name, "mode": i.mode} for i in n.interfaces],
        "last_error": n.last_error,
        "version": n.version,
        "updated_unix_ms": n.updated_unix_ms,
    }


async def _status(client: Client, args: argparse.Namespace, out: TextIO) -> None:
    stub = pb.ClusterServiceStub(client.channel, timeout=client.timeout)
    reply = await client._call(stub.status(pb.ClusterStatusRequest(selector=args.selector)))
    nodes = [node_to_json(n) for n in reply.nodes]
    if args.output == "json":
        out.write(json.dumps({"revision": reply.revision, "policy_revision": reply.policy_revision,
                              "nodes": nodes}, indent=2, sort_keys=True) + "\n")  # fmt: skip
        return
    rows = [
        [
            n["node"],
            "live" if n["live"] else "silent",
            _labels_text(n["labels"]),
            n["synced_revision"] if n["live"] else "-",
            n["lag"] if n["live"] else "-",
            n["policy_hash"][:12] or "-",
            ",".join(f"{i['name']}:{i['mode']}" for i in n["interfaces"]) or "-",
            n["last_error"] or "-",
        ]
        for n in nodes
    ]
    headers = ["NODE", "STATE", "LABELS", "SYNCED", "LAG", "POLICY", "INTERFACES", "ERROR"]
    out.write(f"# etcd revision {reply.revision}; LAG counts from {reply.policy_revision}, "
              "the newest change under labels/ and policies/\n")
    out.write(format_table(headers, rows))


async def _wait(client: Client, args: argparse.Namespace, out: TextIO) -> None:
    # The agent enforces the wait's timeout; the call itself may take that long.
    stub = pb.ClusterServiceStub(client.channel, timeout=args.timeout + WAIT_SLACK)
    request = pb.ClusterWaitRequest(
        revision=args.revision, selector=args.selector, timeout_seconds=args.timeout
    )
    started = time.monotonic()
    reply = await client._call(stub.wait(request))
    took = time.monotonic() - started
    silent = f"; silent, not waited for: {', '.join(reply.silent)}" if reply.silent else ""
    out.write(
        f"{len(reply.nodes)} live nodes synced revision {args.revision} "
        f"({took:.2f}s){': ' + ', '.join(reply.nodes) if reply.nodes else ''}{silent}\n"
    )


def _label_item(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, not {text!r}")
    return key, value


async def _label(client: Client, args: argparse.Namespace, out: TextIO) -> None:
    stub = pb.ClusterServiceStub(client.channel, timeout=client.timeout)
    request = pb.LabelRequest(node=args.node, set=dict(args.labels), remove=args.remove)
    reply = await client._call(stub.label(request))
    what = f"revision {reply.revision}" if reply.revision else "unchanged"
    out.write(f"{args.node}: {_labels_text(dict(reply.labels))} ({what})\n")


async def _policies(client: Client, args: argparse.Namespace, out: TextIO) -> None:
    stub = pb.ClusterServiceStub(client.channel, timeout=client.timeout)
    reply = await client._call(stub.list_policies(pb.ListPoliciesRequest()))
    if args.output == "json":
        data = [
            {"name": p.name, "selector": p.selector, "priority": p.priority,
             "mod_revision": p.mod_revision, "policy": policy_to_dict(policy_from_proto(p.policy))}
            for p in reply.policies
        ]  # fmt: skip
        out.write(json.dumps({"revision": reply.revision, "policies": data}, indent=2,
                             sort_keys=True) + "\n")  # fmt: skip
        return
    rows = [
        [p.priority, p.name, p.selector or "(every node)", p.mod_revision,
         len(p.policy.rules) if p.policy else 0]
        for p in reply.policies
    ]  # fmt: skip
    out.write(f"# etcd revision {reply.revision}; merge order\n")
    out.write(format_table(["PRIORITY", "NAME", "SELECTOR", "MOD_REVISION", "RULES"], rows))


async def _delete(client: Client, args: argparse.Namespace, out: TextIO) -> None:
    stub = pb.ClusterServiceStub(client.channel, timeout=client.timeout)
    request = pb.DeletePolicyRequest(name=args.name, expect_revision=args.expect_revision)
    reply = await client._call(stub.delete_policy(request))
    out.write(f"deleted policy {args.name} at revision {reply.revision}\n")


def _seconds(text: str) -> float:
    value = float(text.rstrip("s"))
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError(f"must be in (0, 3600] seconds, not {text}")
    return value


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``fwd cluster ...`` to the parser (``fresh_common`` makes a new copy of the
    client options, for a command that redefines one of them)."""
    cluster = sub.add_parser(
        "cluster", help="cluster mode: nodes, labels, policies in etcd",
        description="Talk to any agent running with --etcd (it reads and writes etcd for you), "
        "or to etcd itself with --etcd URL and your own certificate (--etcd-ca/--etcd-cert/--etcd-key).",
    )  # fmt: skip
    csub = cluster.add_subparsers(dest="cluster_command", metavar="COMMAND", required=True)
    etcd = etcd_parent()

    status = csub.add_parser(
        "status", parents=[common, etcd], help="every node: what it enforces, lag, live or silent",
        description="Every node known to etcd: labels, the etcd revision it has synced and "
        "its lag behind the cluster, the hash of the policy it enforces, attach modes, its "
        "last error, and whether its lease is alive (live) or expired (silent).",
    )  # fmt: skip
    status.add_argument("--selector", default="", metavar="S", help="only nodes matching S")
    status.add_argument("-o", "--output", choices=("table", "json"), default="table")
    status.set_defaults(client=_status)

    # wait's --timeout (how long to wait) replaces the per-call one; the call's own
    # deadline is that plus WAIT_SLACK. "resolve" edits the parent's actions in
    # place, hence a fresh copy of the client options, not the shared one.
    wait = csub.add_parser(
        "wait", parents=[fresh_common(), etcd], conflict_handler="resolve", help="wait until the selected nodes enforce a revision",
        description="Return once every live node matching the selector has synced etcd "
        "revision R (as printed by 'fwd policy apply'); fail naming the nodes still behind "
        "after --timeout.",
    )  # fmt: skip
    wait.add_argument("--revision", type=revision_arg, required=True, metavar="R")
    wait.add_argument("--selector", default="", metavar="S", help="only nodes matching S")
    wait.add_argument("--timeout", type=_seconds, default=30.0,
                      metavar="SECONDS", help="give up after this long (default: %(default)s)")
    wait.set_defaults(client=_wait)

    label = csub.add_parser(
        "label", parents=[common, etcd], help="set or remove labels of a node",
        description="Change NODE's labels in etcd (compare-and-swap); agents whose labels "
        "change re-select their policies at once.",
    )  # fmt: skip
    label.add_argument("node", metavar="NODE")
    label.add_argument("labels", nargs="*", type=_label_item, metavar="KEY=VALUE")
    label.add_argument("--remove", action="append", default=[], metavar="KEY",
                       help="remove label KEY; repeatable")  # fmt: skip
    label.set_defaults(client=_label, write="the label change")

    policies = csub.add_parser(
        "policies", parents=[common, etcd], help="the policies stored in etcd, in merge order",
    )  # fmt: skip
    policies.add_argument("-o", "--output", choices=("table", "json"), default="table")
    policies.set_defaults(client=_policies)

    delete = csub.add_parser(
        "delete", parents=[common, etcd], help="delete a policy from etcd",
    )  # fmt: skip
    delete.add_argument("name", metavar="NAME")
    delete.add_argument("--expect-revision", type=revision_arg, metavar="N",
                        help="only if N is the policy's mod revision")  # fmt: skip
    delete.set_defaults(client=_delete, write="the delete")

    register_init(csub)
