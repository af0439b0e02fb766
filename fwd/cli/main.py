"""``fwd``'s entry point: parse the command line, run the command, return the exit status."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import TextIO

import anyio
from grpclib import GRPCError, Status
from grpclib.exceptions import StreamTerminatedError

from fwd.api.client import AgentUnreachable, Client
from fwd.api.tls import client_context
from fwd.api.gen.fwd import v1 as pb
from fwd.cli import exits
from fwd.cli.exits import unknown_message
from fwd.cli.options import DEFAULT_TIMEOUT
from fwd.cli.output import Failed
from fwd.cli.parser import build_parser
from fwd.errors import FwdError


Command = Callable[[Client, argparse.Namespace, TextIO], Awaitable[None]]


async def _revision_now(client: Client) -> int | None:
    """The enforced revision, cheaply: a one-rule page of ListRules carries it (the
    history would parse a stored policy, seconds at 100,000 rules); None if unreadable."""
    stub = pb.RuleServiceStub(client.channel, timeout=client.timeout)
    try:
        reply = await client._call(stub.list_rules(pb.ListRulesRequest(page_size=1)))
    except GRPCError:
        return None
    return reply.revision


def run_client(command: Command, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """Run one client command; the exit status follows fwd.cli.exits."""
    write = getattr(args, "write", None)  # what a changing command sends ("the apply")
    args.sent = False

    async def go() -> None:
        if getattr(args, "etcd", ""):  # straight to etcd with the caller's certificate
            from fwd.api.direct import direct_channel

            async with direct_channel(args) as channel, Client(
                "", timeout=args.timeout, channel=channel
            ) as client:
                await command(client, args, out)
            return
        ssl_ctx = None
        if args.server:
            if not args.tls_ca:
                raise Failed("--server needs --tls-ca (and --tls-cert/--tls-key for mTLS)")
            ssl_ctx = client_context(args.tls_ca, args.tls_cert or None, args.tls_key or None)
        async with Client(
            args.socket, timeout=args.timeout, server=args.server, ssl=ssl_ctx
        ) as client:
            if write is not None:
                # Read first what a script must check if the answer never comes.
                args.revision_before = await _revision_now(client)
                args.sent = True
            await command(client, args, out)

    try:
        prepare = getattr(args, "prepare", None)
        if prepare is not None:
            prepare(args)
        if args.timeout is None:  # no --timeout: a default, or the command's own
            deadline = getattr(args, "deadline", None)
            args.timeout = deadline(args) if deadline is not None else DEFAULT_TIMEOUT
        anyio.run(go)
    except GRPCError as exc:
        if write is not None and args.sent and exc.status is Status.UNAVAILABLE:
            # Draining or cut off mid-call: the change may have been made.
            why = f"the agent answered UNAVAILABLE: {exc.message or 'it went away'}"
            err.write(f"fwd: {unknown_message(args, why)}\n")
            return exits.UNKNOWN
        err.write(f"fwd: {exc.status.name}: {exc.message or ''}\n")
        return exits.UNREACHABLE if exc.status is Status.UNAVAILABLE else exits.FAILED
    except AgentUnreachable as exc:
        err.write(f"fwd: UNREACHABLE: {exc}\n")
        return exits.UNREACHABLE
    except (Failed, FwdError) as exc:  # PolicyError, etcd/TLS settings
        err.write(f"fwd: {exc}\n")
        return exits.FAILED
    except TimeoutError:  # grpclib raises asyncio.TimeoutError, the same class since 3.11
        why = f"no answer came within {args.timeout:g}s"
        if write is not None and args.sent:
            err.write(f"fwd: {unknown_message(args, why)} (wait longer with --timeout)\n")
            return exits.UNKNOWN
        err.write(f"fwd: DEADLINE_EXCEEDED: {why} from the agent\n")
        return exits.UNREACHABLE
    except (ConnectionError, StreamTerminatedError) as exc:
        # The agent went away mid-call (restart, shutdown).
        where = args.server or args.socket
        if write is not None and args.sent:
            err.write(f"fwd: {unknown_message(args, f'the connection to {where} broke ({exc})')}\n")
            return exits.UNKNOWN
        err.write(f"fwd: UNAVAILABLE: connection to {where} failed: {exc}\n")
        return exits.UNREACHABLE
    return exits.OK


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
        return exc.code if isinstance(exc.code, int) else exits.USAGE
    if getattr(args, "client", None) is not None:
        return run_client(args.client, args, out, err)
    if getattr(args, "handler_io", False):  # a handler that writes to out/err itself
        io_code: int = args.handler(args, out, err)
        return io_code
    code: int = args.handler(args)
    return code
