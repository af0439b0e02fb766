"""CLI commands for incremental changes: ``fwd rules ...``, ``fwd sets ...``, ``fwd policy diff``.

Kept apart from fwd/cli.py (the parser, output helpers and the other commands)
so each module stays small. Every command is a thin client of the gRPC API.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from typing import Any, TextIO

import yaml

from fwd.api.client import Client
from fwd.api.convert import policy_from_proto, rule_to_dict, rule_to_proto
from fwd.api.gen.fwd import v1 as pb
from fwd.errors import PolicyError
from fwd.policy.model import Policy, parse_rule, rule_to_dict as model_rule_to_dict

async def _rules_list(client: Client, args: argparse.Namespace, out: TextIO) -> None:
    stub = pb.RuleServiceStub(client.channel, timeout=client.timeout)
    rules: list[pb.Rule] = []
    token = ""
    while True:
        page = await client._call(
            stub.list_rules(pb.ListRulesRequest(page_size=1000, page_token=token))
        )
        rules.extend(page.rules)
        token = page.next_page_token
        if not token:
            break
    dicts = [rule_to_dict(r) for r in rules]
    if args.output == "json":
        out.write(json.dumps(dicts, indent=2, sort_keys=True) + "\n")
        return
    from fwd.cli import format_table

    rows = [[i, d["id"], d.get("action", ""), _summary(d)] for i, d in enumerate(dicts)]
    out.write(format_table(("POS", "RULE", "ACTION", "MATCH"), rows))


def _summary(rule: dict[str, Any]) -> str:
    parts = [f"{k}={v if not isinstance(v, list) else ','.join(map(str, v))}"
             for k, v in rule.items() if k not in ("id", "action")]
    return " ".join(parts) or "any"


def _parse_rule_arg(text: str) -> dict[str, Any]:
    """A rule as YAML/JSON text, or @FILE holding one."""
    if text.startswith("@"):
        try:
            with open(text[1:], encoding="utf-8") as f:
                text = f.read()
        except OSError as exc:
            raise PolicyError("rule", f"cannot read {text[1:]}: {exc.strerror}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PolicyError("rule", f"not YAML: {exc}") from None
    parse_rule(raw, "rule")  # validate here: a bad rule needs no agent to be reported
    assert isinstance(raw, dict)
    return raw


async def _rules_add(client: Client, args: argparse.Namespace, out: TextIO) -> None:
    rule = parse_rule(args.rule, "rule")
    stub = pb.RuleServiceStub(client.channel, timeout=client.timeout)
    request = pb.AddRuleRequest(
        rule=rule_to_proto(rule),
        position=args.position,
        before_id=args.before or "",
        after_id=args.after or "",
        expect_revision=args.expect_revision,
        force=args.force,
    )
    reply = await client._call(stub.add_rule(request))
    out.write(f"added rule {rule.id!r}: revision {reply.revision}\n")


async def _rules_delete(client: Client, args: argparse.Namespace, out: TextIO) -> None:
    stub = pb.RuleServiceStub(client.channel, timeout=client.timeout)
    request = pb.DeleteRuleRequest(
        rule_id=args.rule_id, expect_revision=args.expect_revision, force=args.force
    )
    reply = await client._call(stub.delete_rule(request))
    out.write(f"deleted rule {args.rule_id!r}: revision {reply.revision}\n")


async def _sets_list(client: Client, args: argparse.Namespace, out: TextIO) -> None:
    stub = pb.SetServiceStub(client.channel, timeout=client.timeout)
    reply = await client._call(stub.list_sets(pb.ListSetsRequest()))
    rows = [{"name": s.name, "type": s.type.name.lower(), "size": s.size} for s in reply.sets]
    if args.output == "json":
        out.write(json.dumps(rows, indent=2, sort_keys=True) + "\n")
        return
    from fwd.cli import format_table

    out.write(format_table(("SET", "TYPE", "SIZE"), [list(r.values()) for r in rows]))


async def _sets_show(client: Client, args: argparse.Namespace, out: TextIO) -> None:
    stub = pb.SetServiceStub(client.channel, timeout=client.timeout)
    token = ""
    while True:
        page = await client._call(
            stub.list_elements(pb.ListElementsRequest(set=args.name, page_size=10000,
                                                      page_token=token))
        )
        for element in page.elements:
            out.write(element + "\n")
        token = page.next_page_token
        if not token:
            return


def _elements(args: argparse.Namespace) -> list[str]:
    elements = list(args.elements)
    if args.file:
        try:
            with open(args.file, encoding="utf-8") as f:
                elements += [ln.split("#", 1)[0].strip() for ln in f]
        except OSError as exc:
            raise PolicyError("elements", f"cannot read {args.file}: {exc.strerror}") from None
    elements = [e for e in elements if e]
    if not elements:
        raise PolicyError("elements", "give elements as arguments or with --file")
    return elements


async def _sets_change(client: Client, args: argparse.Namespace, out: TextIO) -> None:
    stub = pb.SetServiceStub(client.channel, timeout=client.timeout)
    request = pb.SetElementsRequest(
        set=args.name, elements=args.element_list, expect_revision=args.expect_revision,
        force=args.force,
    )
    call = stub.add_elements if args.set_command == "add" else stub.remove_elements
    reply = await client._call(call(request))
    verb = "added to" if args.set_command == "add" else "removed from"
    out.write(f"{len(args.element_list)} elements {verb} {args.name!r}: revision {reply.revision}\n")


def diff_policies(running: Policy, wanted: Policy) -> list[str]:
    """Lines saying which rules a new policy adds, removes, changes or moves (by id)."""
    old = {r.id: (i, model_rule_to_dict(r)) for i, r in enumerate(running.rules)}
    new = {r.id: (i, model_rule_to_dict(r)) for i, r in enumerate(wanted.rules)}
    lines = []
    for field in ("default_action", "dry_run", "log_default"):
        a, b = getattr(running, field), getattr(wanted, field)
        if a != b:
            lines.append(f"~ {field}: {getattr(a, 'value', a)} -> {getattr(b, 'value', b)}")
    for rid, (i, d) in new.items():
        if rid not in old:
            lines.append(f"+ {rid} (at {i}): {_summary(d)} -> {d['action']}")
        elif old[rid][1] != d:
            lines.append(f"~ {rid}: {_summary(old[rid][1])} -> {_summary(d)}; {d['action']}")
        elif old[rid][0] != i:
            lines.append(f"> {rid} moves {old[rid][0]} -> {i}")
    lines += [f"- {rid}" for rid in old if rid not in new]
    old_sets = {s.name: s for s in running.sets}
    for s in wanted.sets:
        if s.name not in old_sets:
            lines.append(f"+ set {s.name} ({len(s)} elements)")
        elif old_sets[s.name] != s:
            lines.append(f"~ set {s.name}: {len(old_sets[s.name])} -> {len(s)} elements")
    lines += [f"- set {n}" for n in old_sets if wanted.set_named(n) is None]
    return lines


async def _policy_diff(client: Client, args: argparse.Namespace, out: TextIO) -> None:
    running = await client.get_policy()
    lines = diff_policies(policy_from_proto(running.policy), args.policy)
    out.write(f"# against revision {running.revision}\n")
    out.write("\n".join(lines) + "\n" if lines else "no changes\n")


def register(
    sub: Any, policy_sub: Any, common: argparse.ArgumentParser, revision: Callable[[str], int],
    load_policy: Callable[[argparse.Namespace], None],
) -> None:
    """Add the commands of this module to the parser built by fwd.cli."""
    diff = policy_sub.add_parser(
        "diff", parents=[common], help="show what applying FILE would change",
        description="Compare a policy file with the enforced policy, rule by rule (by id): "
        "+ added, - removed, ~ changed, > moved.",
    )
    diff.add_argument("file", metavar="FILE")
    diff.set_defaults(client=_policy_diff, prepare=load_policy)

    rules = sub.add_parser("rules", help="list, add or delete single rules",
                           description="Incremental rule changes: each is atomic and "
                           "creates a new revision; other rules' counters are untouched.")
    rules_sub = rules.add_subparsers(dest="rules_command", metavar="COMMAND", required=True)
    ls = rules_sub.add_parser("list", parents=[common], help="the rules in order")
    ls.add_argument("-o", "--output", choices=("table", "json"), default="table")
    ls.set_defaults(client=_rules_list)
    add = rules_sub.add_parser(
        "add", parents=[common], help="insert a rule",
        description="RULE is one rule as YAML or JSON, e.g. "
        "'{id: block-x, action: drop, src: [198.51.100.7]}', or @FILE.",
    )
    add.add_argument("rule", metavar="RULE", type=_rule_type)
    where = add.add_mutually_exclusive_group()
    where.add_argument("--position", type=int, metavar="N", help="0 = first (default: last)")
    where.add_argument("--before", metavar="ID")
    where.add_argument("--after", metavar="ID")
    _change_options(add, revision)
    add.set_defaults(client=_rules_add)
    delete = rules_sub.add_parser("delete", parents=[common], help="delete a rule by id")
    delete.add_argument("rule_id", metavar="ID")
    _change_options(delete, revision)
    delete.set_defaults(client=_rules_delete)

    sets = sub.add_parser("sets", help="list named sets, show or change their elements",
                          description="Named sets: prefix sets change without recompiling "
                          "rules; a batch of elements changes atomically.")
    sets_sub = sets.add_subparsers(dest="set_command", metavar="COMMAND", required=True)
    sls = sets_sub.add_parser("list", parents=[common], help="every set with its size")
    sls.add_argument("-o", "--output", choices=("table", "json"), default="table")
    sls.set_defaults(client=_sets_list)
    show = sets_sub.add_parser("show", parents=[common], help="a set's elements, one a line")
    show.add_argument("name", metavar="SET")
    show.set_defaults(client=_sets_show)
    for verb in ("add", "remove"):
        p = sets_sub.add_parser(verb, parents=[common], help=f"{verb} elements (one batch)")
        p.add_argument("name", metavar="SET")
        p.add_argument("elements", nargs="*", metavar="ELEMENT")
        p.add_argument("--file", metavar="FILE", help="more elements, one a line (# comments)")
        _change_options(p, revision)
        p.set_defaults(client=_sets_change, prepare=_prepare_elements)


def _rule_type(text: str) -> Any:
    try:
        return _parse_rule_arg(text)
    except PolicyError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _prepare_elements(args: argparse.Namespace) -> None:
    args.element_list = _elements(args)


def _change_options(p: argparse.ArgumentParser, revision: Callable[[str], int]) -> None:
    p.add_argument("--expect-revision", type=revision, metavar="N",
                   help="fail unless revision N is the one enforced now")
    p.add_argument("--force", action="store_true",
                   help="even if the result could drop the management traffic")


__all__: Sequence[str] = ["register", "diff_policies"]
