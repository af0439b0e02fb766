"""``fwd rules ...``: list, add and delete single rules (each change is atomic)."""

from __future__ import annotations

import argparse
import json
from typing import Any, TextIO

import yaml

from fwd.api.client import Client
from fwd.api.convert import rule_to_dict, rule_to_proto
from fwd.api.gen.fwd import v1 as pb
from fwd.cli.options import change_options
from fwd.cli.output import dumps_rows, format_table, summary
from fwd.errors import PolicyError
from fwd.policy.files import yaml_error
from fwd.policy.model import parse_rule
from fwd.policy.model import rule_to_dict as model_rule_to_dict


async def _rules_list(client: Client, args: argparse.Namespace, out: TextIO) -> None:
    stub = pb.RuleServiceStub(client.channel, timeout=client.timeout)
    rules: list[pb.Rule] = []
    token = ""
    while True:
        page = await client._call(
            stub.list_rules(pb.ListRulesRequest(page_size=10_000, page_token=token))
        )
        rules.extend(page.rules)
        token = page.next_page_token
        if not token:
            break
    # Through the model: the same plain-data form as `fwd policy get` (ports as numbers).
    dicts = [model_rule_to_dict(parse_rule(rule_to_dict(r), f"rules[{i}]"))
             for i, r in enumerate(rules)]  # fmt: skip
    if args.output == "json":
        out.write(dumps_rows(dicts))
        return
    rows = [[i, d["id"], d.get("action", ""), summary(d)] for i, d in enumerate(dicts)]
    out.write(format_table(("POS", "RULE", "ACTION", "MATCH"), rows))


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
        raise yaml_error(exc, "rule") from None
    parse_rule(raw, "rule")  # validate here: a bad rule needs no agent to be reported
    assert isinstance(raw, dict)
    return raw


def _prepare_rule(args: argparse.Namespace) -> None:
    """Parse RULE before connecting; an error is one line (exit 1), not a usage banner."""
    args.rule = _parse_rule_arg(args.rule)


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


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``fwd rules list | add | delete``."""
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
    add.add_argument("rule", metavar="RULE")
    where = add.add_mutually_exclusive_group()
    where.add_argument("--position", type=int, metavar="N", help="0 = first (default: last)")
    where.add_argument("--before", metavar="ID")
    where.add_argument("--after", metavar="ID")
    change_options(add)
    add.set_defaults(client=_rules_add, prepare=_prepare_rule, write="the rule")
    delete = rules_sub.add_parser("delete", parents=[common], help="delete a rule by id")
    delete.add_argument("rule_id", metavar="ID")
    change_options(delete)
    delete.set_defaults(client=_rules_delete, write="the delete")

