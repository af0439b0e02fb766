"""``fwd policy ...``: get, apply, confirm, roll back, history and diff of the whole policy."""

from __future__ import annotations

import argparse
import dataclasses
import time
from typing import Any, TextIO

from fwd.api.client import Client
from fwd.api.convert import policy_from_proto
from fwd.cli.options import DEFAULT_TIMEOUT, duration_arg, revision_arg
from fwd.cli.output import Failed, dumps, enum_name, format_table, message_to_json, summary
from fwd.api.direct import etcd_parent
from fwd.errors import PolicyError
from fwd.policy.files import FORMATS, dump_policy_yaml, load_policy_file
from fwd.policy.model import Policy, policy_to_dict
from fwd.policy.model import rule_to_dict as model_rule_to_dict


async def _policy_get(client: Client, args: argparse.Namespace, out: TextIO) -> None:
    response = await client.get_policy()
    policy = policy_from_proto(response.policy)
    if args.output == "json":
        doc: dict[str, Any] = {"revision": response.revision, "policy": policy_to_dict(policy)}
        if response.adoption is not None:  # what the agent took over when it started
            doc["adoption"] = message_to_json(response.adoption)
        out.write(dumps(doc))
    else:
        # The revision as a comment keeps the output a valid policy file.
        out.write(f"# revision: {response.revision}\n{dump_policy_yaml(policy)}")


def load_policy(args: argparse.Namespace) -> None:
    """Validate the file before connecting: a broken file needs no agent to be reported."""
    try:
        args.policy = load_policy_file(
            args.file, getattr(args, "format", None),
            allow_empty=getattr(args, "allow_empty", True),
        )
    except PolicyError as exc:
        text = str(exc)
        raise Failed(text if args.file in text else f"{args.file}: {text}") from None


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
    reply = await client.apply_policy_reply(
        args.policy, args.expect_revision, force=args.force, **cluster
    )
    revision = reply.revision
    if reply.unchanged:
        out.write(f"unchanged: revision {revision} already enforces this policy\n")
    elif any(v is not None for v in cluster.values()):
        out.write(
            f"wrote policy {args.name or 'default'} at etcd revision {revision} "
            f"(fwd cluster wait --revision {revision})\n"
        )
    else:
        out.write(f"applied revision {revision}\n")


def _format_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", choices=FORMATS, default=None,
                   help="the file's format when its name does not say it, or for stdin "
                   "(default there: json)")


def apply_deadline(args: argparse.Namespace) -> float:
    """How long ``fwd policy apply`` waits without --timeout: long enough for the agent
    to validate, compile and write a policy of this size on a busy node (100,000 rules
    take ~2-25 s end to end here), so a big apply ends in its result, not a false failure."""
    policy = args.policy
    elements = sum(len(s) for s in policy.sets)
    return DEFAULT_TIMEOUT + 20.0 + len(policy.rules) / 1000 + elements / 20000


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
            "default_action": enum_name(r.default_action),
            "dry_run": r.dry_run,
        }
        for r in await client.list_history()
    ]
    if args.output == "json":
        out.write(dumps(rows))
    else:
        headers = ["REVISION", "APPLIED_AT", "RULES", "DEFAULT", "DRY_RUN"]
        out.write(format_table(headers, [list(r.values()) for r in rows]))


def diff_changes(running: Policy, wanted: Policy) -> list[dict[str, Any]]:
    """What a new policy adds, removes, changes or moves (rules by id, sets by name,
    and the policy's own settings), as plain data (``policy diff -o json``)."""
    old = {r.id: (i, model_rule_to_dict(r)) for i, r in enumerate(running.rules)}
    new = {r.id: (i, model_rule_to_dict(r)) for i, r in enumerate(wanted.rules)}
    out: list[dict[str, Any]] = []
    for field in ("default_action", "dry_run", "log_default"):
        a, b = getattr(running, field), getattr(wanted, field)
        if a != b:
            out.append({"change": "changed", "field": field,
                        "from": getattr(a, "value", a), "to": getattr(b, "value", b)})
    for rid, (i, d) in new.items():
        if rid not in old:
            out.append({"change": "added", "rule": rid, "position": i, "to": d})
        elif old[rid][1] != d:
            out.append({"change": "changed", "rule": rid, "from": old[rid][1], "to": d})
        elif old[rid][0] != i:
            out.append({"change": "moved", "rule": rid, "from": old[rid][0], "to": i})
    out += [{"change": "removed", "rule": rid, "from": old[rid][1]} for rid in old
            if rid not in new]
    old_sets = {s.name: s for s in running.sets}
    for s in wanted.sets:
        if s.name not in old_sets:
            out.append({"change": "added", "set": s.name, "to": len(s)})
        elif old_sets[s.name] != s:
            out.append({"change": "changed", "set": s.name, "from": len(old_sets[s.name]),
                        "to": len(s)})
    out += [{"change": "removed", "set": n, "from": len(old_sets[n])} for n in old_sets
            if wanted.set_named(n) is None]
    return out


def _diff_line(c: dict[str, Any]) -> str:
    kind = c["change"]
    if "field" in c:
        return f"~ {c['field']}: {c['from']} -> {c['to']}"
    if "set" in c:
        if kind == "added":
            return f"+ set {c['set']} ({c['to']} elements)"
        if kind == "changed":
            return f"~ set {c['set']}: {c['from']} -> {c['to']} elements"
        return f"- set {c['set']}"
    rid = c["rule"]
    if kind == "added":
        return f"+ {rid} (at {c['position']}): {summary(c['to'])} -> {c['to']['action']}"
    if kind == "changed":
        return f"~ {rid}: {summary(c['from'])} -> {summary(c['to'])}; {c['to']['action']}"
    if kind == "moved":
        return f"> {rid} moves {c['from']} -> {c['to']}"
    return f"- {rid}"


def diff_policies(running: Policy, wanted: Policy) -> list[str]:
    """Lines saying which rules a new policy adds, removes, changes or moves (by id)."""
    return [_diff_line(c) for c in diff_changes(running, wanted)]


async def _policy_diff(client: Client, args: argparse.Namespace, out: TextIO) -> None:
    running = await client.get_policy()
    changes = diff_changes(policy_from_proto(running.policy), args.policy)
    if args.output == "json":
        out.write(dumps({"revision": running.revision, "changes": changes}))
        return
    out.write(f"# against revision {running.revision}\n")
    out.write("".join(_diff_line(c) + "\n" for c in changes) if changes else "no changes\n")


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``fwd policy get | apply | confirm | rollback | history | diff``."""
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
        parents=[common, etcd_parent()],
        help="validate a policy file and enforce it atomically",
        description="Validate FILE (YAML or JSON), then have the agent enforce it "
        "atomically. Prints the new revision.",
    )
    apply.add_argument("file", metavar="FILE", help="the policy file: .json (strict JSON), "
                       ".yaml or .yml; '-' reads stdin (JSON unless --format yaml)")
    _format_option(apply)
    apply.add_argument(
        "--expect-revision",
        type=revision_arg,
        metavar="N",
        help="fail unless revision N is the one enforced now (from 'fwd policy get'), "
        "so concurrent writers cannot overwrite each other",
    )
    apply.add_argument(
        "--force",
        action="store_true",
        help="apply even if the lock-out check refuses it: a drop rule the failsafe "
        "overrules, or (failsafe off, or --mgmt-prefix) a policy that could drop the "
        "management traffic (see 'fwd agent --failsafe')",
    )
    apply.add_argument(
        "--dry-run",
        action="store_true",
        help="apply in dry-run: nothing is dropped, would-be drops are counted and logged",
    )
    apply.add_argument(
        "--allow-empty",
        action="store_true",
        help="apply a file that sets nothing (empty, /dev/null, only comments): it is "
        "enforced as allow-all, so without this it is refused",
    )
    apply.add_argument(
        "--confirm-within",
        type=duration_arg,
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
    apply.set_defaults(client=_policy_apply, prepare=load_policy, write="the apply",
                       deadline=apply_deadline)

    confirm = policy_sub.add_parser(
        "confirm",
        parents=[common],
        help="keep a revision applied with --confirm-within",
        description="Cancel the pending rollback of a revision applied with --confirm-within.",
    )
    confirm.add_argument("revision", nargs="?", type=revision_arg, metavar="REV",
                         help="the pending revision (default: whichever is pending)")
    confirm.set_defaults(client=_policy_confirm, write="the confirmation")

    rollback = policy_sub.add_parser(
        "rollback",
        parents=[common],
        help="enforce an earlier revision's policy again",
        description="Enforce the policy of revision REV again, as a new revision.",
    )
    rollback.add_argument("revision", type=revision_arg, metavar="REV")
    rollback.add_argument("--expect-revision", type=revision_arg, metavar="N",
                          help="fail unless revision N is the one enforced now")
    rollback.set_defaults(client=_policy_rollback, write="the rollback")

    history = policy_sub.add_parser(
        "history",
        parents=[common],
        help="list applied revisions, newest first",
        description="The revision history: when each revision was applied and its shape.",
    )
    history.add_argument("-o", "--output", choices=("table", "json"), default="table")
    history.set_defaults(client=_policy_history)

    diff = policy_sub.add_parser(
        "diff", parents=[common], help="show what applying FILE would change",
        description="Compare a policy file with the enforced policy, rule by rule (by id): "
        "+ added, - removed, ~ changed, > moved.",
    )
    diff.add_argument("file", metavar="FILE", help="as for 'fwd policy apply'")
    _format_option(diff)
    diff.add_argument("-o", "--output", choices=("text", "json"), default="text",
                      help="output format: +/-/~/> lines, or {revision, changes} "
                      "(default: %(default)s)")
    diff.set_defaults(client=_policy_diff, prepare=load_policy)
