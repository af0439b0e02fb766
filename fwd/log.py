"""structlog set-up: JSON lines by default, a console renderer on a TTY.

Conventions for every log call in fwd (so logs can be queried, not read):
- the event is a stable snake_case name, one per kind of happening
  (``xdp_attached``, ``policy_applied``), never a sentence with values in it;
- values go in keys, and the same thing always has the same key: ``iface``
  (interface name), ``ifindex``, ``revision``, ``rule_id``, ``mode`` (XDP attach
  mode), ``error`` (the message of an exception).

Records from the standard library's logging (grpclib, libbpf's own output)
get the same renderer, with their logger's name in ``logger``.
"""

from __future__ import annotations

import logging
import sys

import structlog


def configure(level: str = "info", *, json: bool | None = None) -> None:
    """Route structlog and stdlib logging to stderr at ``level`` (debug/info/warning/error).

    ``json`` None picks JSON unless stderr is a terminal.
    """
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}")
    if json is None:
        json = not sys.stderr.isatty()
    renderer: structlog.types.Processor
    # JSON wants the traceback as one string field; the console renderer
    # formats exceptions itself (and warns when they come pre-formatted).
    exc: list[structlog.types.Processor]
    if json:
        renderer, exc = structlog.processors.JSONRenderer(), [structlog.processors.format_exc_info]
    else:
        renderer, exc = structlog.dev.ConsoleRenderer(), []
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.processors.StackInfoRenderer(), *exc, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *exc, renderer],
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
