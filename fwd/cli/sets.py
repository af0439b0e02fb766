"""``fwd sets ...``: list named sets, show their elements, add or remove a batch of them."""

from __future__ import annotations

import argparse
import json
from typing import Any, TextIO

from fwd.api.client import Client
from fwd.api.gen.fwd import v1 as pb
from fwd.cli.options import change_options
from fwd.cli.output import dumps, format_table
from fwd.errors import PolicyError


async def _sets_list(client: Client, args: argparse.Namespace, out: TextIO) -> None:
    stub = pb.SetServiceStub(client.channel, timeout=client.timeout)
    reply = await client._call(stub.list_sets(pb.ListSetsRequest()))
    rows = [{"name": s.name, "type": s.type.name.lower(), "size": s.size} for s in reply.sets]
    if args.output == "json":
        out.write(json.dumps(rows, indent=2, sort_keys=True) + "\n")
        return
    out.write(format_table(("SET", "TYPE", "SIZE"), [list(r.values()) for r in rows]))


async def _sets_show(client: Client, args: argparse.Namespace, out: TextIO) -> None:
    stub = pb.SetServiceStub(client.channel, timeout=client.timeout)
    token = ""
    json_out = args.output == "json"
    elements: list[int | str] = []
    revision = 0
    while True:
        page = await client._call(
            stub.list_elements(pb.ListElementsRequest(set=args.name, page_size=10000,
                                                      page_token=token))
        )
        revision = revision or page.revision
        if json_out:  # one port is a number, as in policy files
            elements += [int(e) if e.isascii() and e.isdigit() else e for e in page.elements]
        else:
            out.write("".join(e + "\n" for e in page.elements))
        token = page.next_page_token
        if not token:
            break
    if json_out:
        out.write(dumps({"set": args.name, "revision": revision, "elements": elements}))


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
    if args.set_command == "add":
        what = f"{reply.changed} added, {reply.unchanged} already present"
    else:
        what = f"{reply.changed} removed, {reply.unchanged} not present"
    made = "revision" if reply.changed else "unchanged: revision"
    out.write(f"set {args.name!r}: {what}; {made} {reply.revision}\n")


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``fwd sets list | show | add | remove``."""
    sets = sub.add_parser("sets", help="list named sets, show or change their elements",
                          description="Named sets: prefix sets change without recompiling "
                          "rules; a batch of elements changes atomically.")
    sets_sub = sets.add_subparsers(dest="set_command", metavar="COMMAND", required=True)
    sls = sets_sub.add_parser("list", parents=[common], help="every set with its size")
    sls.add_argument("-o", "--output", choices=("table", "json"), default="table")
    sls.set_defaults(client=_sets_list)
    show = sets_sub.add_parser("show", parents=[common], help="a set's elements, one a line")
    show.add_argument("name", metavar="SET")
    show.add_argument("-o", "--output", choices=("text", "json"), default="text",
                      help="elements one a line, or {set, revision, elements} "
                      "(default: %(default)s)")
    show.set_defaults(client=_sets_show)
    for verb in ("add", "remove"):
        p = sets_sub.add_parser(verb, parents=[common], help=f"{verb} elements (one batch)")
        p.add_argument("name", metavar="SET")
        p.add_argument("elements", nargs="*", metavar="ELEMENT")
        p.add_argument("--file", metavar="FILE", help="more elements, one a line (# comments)")
        change_options(p)
        p.set_defaults(client=_sets_change, prepare=_prepare_elements, write="the set change")


def _prepare_elements(args: argparse.Namespace) -> None:
    args.element_list = _elements(args)
