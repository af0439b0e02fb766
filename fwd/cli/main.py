"""``fwd``'s entry point: parse the command line, run the command, return the exit status."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import TextIO

import anyio
from grpclib import GRPCError
from grpclib.exceptions import StreamTerminatedError

from fwd.api.client import Client
from fwd.api.tls import client_context
from fwd.cli.output import Failed
from fwd.cli.parser import build_parser
from fwd.errors import FwdError


Command = Callable[[Client, argparse.Namespace, TextIO], Awaitable[None]]


def run_client(command: Command, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
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
            await command(client, args, out)

    try:
        prepare = getattr(args, "prepare", None)
        if prepare is not None:
            prepare(args)
        anyio.run(go)
    except GRPCError as exc:
        err.write(f"fwd: {exc.status.name}: {exc.message or ''}\n")
        return 1
    except (Failed, FwdError) as exc:  # AgentUnreachable, PolicyError, etcd/TLS settings
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
        return run_client(args.client, args, out, err)
    if getattr(args, "handler_io", False):  # a handler that writes to out/err itself
        io_code: int = args.handler(args, out, err)
        return io_code
    code: int = args.handler(args)
    return code
