"""The ``fwd`` command line (entry point ``fwd.cli:main``)."""

from fwd.cli.parser import build_parser, format_table, main

__all__ = ["build_parser", "format_table", "main"]
