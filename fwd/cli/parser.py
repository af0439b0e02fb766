"""The whole ``fwd`` command line: global client options, then one module per command.

A thin client: every command except ``agent`` is one or a few gRPC calls on
the agent's unix socket, printed as a plain-text table or as JSON. Exit codes:
fwd.cli.exits.
"""

from __future__ import annotations

import argparse
import sys

from fwd.cli import agent, cluster, policy, rules, sets, status
from fwd.cli.completion import SHELLS, script
from fwd.cli.options import client_options, fresh_common


COMMANDS_EPILOG = """\
commands:
  fwd agent [--socket PATH] [--state-dir DIR] [--bpffs DIR] [--no-pin] [--include GLOB]...
            [--exclude GLOB]... [--dry-run] [--detach-on-exit] [--metrics ADDR] [--log-level LEVEL]
            [--etcd URL[,URL...] [--node NAME] [--label K=V]... [--etcd-prefix P] [--lease-ttl S]]
  fwd policy get [-o yaml|json]
  fwd policy apply FILE [--expect-revision N] [--force] [--dry-run] [--confirm-within D] [--allow-empty]
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
  fwd completion bash|zsh
  fwd --version

Client commands take --socket PATH (default: $FWD_SOCKET or /run/fwd/fwd.sock)
and --timeout SECONDS. 'fwd COMMAND --help' describes each command.

exit status: 0 done; 1 refused or failed, nothing changed ('fwd: STATUS: message');
2 bad usage; 3 the agent could not be reached; 4 outcome unknown: a change was sent
and no answer came (the message names the revision to check in 'fwd policy history').
"""


def _version() -> str:
    """The installed distribution's version (pyproject.toml), or "unknown" outside one."""
    from importlib import metadata

    try:
        return metadata.version("fwd")
    except metadata.PackageNotFoundError:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    """The whole command line; ``fwd --help`` lists every command."""
    parser = argparse.ArgumentParser(
        prog="fwd",
        description="An API-first XDP firewall. 'fwd agent' runs the agent on this node; "
        "the other commands talk to a running agent over its gRPC unix socket.",
        epilog=COMMANDS_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"fwd {_version()}")
    client_options(parser.add_argument_group("client options (also after the command)"))
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    common = fresh_common()
    # In the order ``fwd --help`` lists them.
    agent.register(sub)
    policy.register(sub, common)
    rules.register(sub, common)
    sets.register(sub, common)
    cluster.register(sub, common)
    status.register(sub, common)
    completion = sub.add_parser(
        "completion", help="print a shell completion script (bash or zsh)",
        description="Print a completion script generated from this command line: "
        "'source <(fwd completion bash)', or in zsh 'source <(fwd completion zsh)'.",
    )
    completion.add_argument("shell", choices=SHELLS)
    completion.set_defaults(handler=lambda args: _print_completion(parser, args.shell))
    return parser


def _print_completion(parser: argparse.ArgumentParser, shell: str) -> int:
    sys.stdout.write(script(parser, shell))
    return 0
