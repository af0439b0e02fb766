"""The ``fwd`` command line (entry point ``fwd.cli:main``).

parser builds the command line from one module per command (agent, policy,
rules, sets, status, cluster); options holds the shared argument types and
client options, output the printing helpers, main runs a parsed command.
"""

from fwd.cli.main import main
from fwd.cli.output import format_table
from fwd.cli.parser import build_parser

__all__ = ["build_parser", "format_table", "main"]
