"""fwd.log: JSON lines with stable keys, the level honoured, stdlib records rendered alike;
and every log call in fwd/ uses the agreed key names."""

from __future__ import annotations

import ast
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from fwd import log as fwdlog

FWD = Path(__file__).resolve().parents[2] / "fwd"


@pytest.fixture
def stderr(capsys: pytest.CaptureFixture[str]) -> Iterator[pytest.CaptureFixture[str]]:
    """configure() binds the sys.stderr of the moment: inside a test, capsys' stream."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        yield capsys
    finally:
        structlog.reset_defaults()
        root.handlers[:] = handlers
        root.setLevel(level)


def lines(cap: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in cap.readouterr().err.splitlines() if line.strip()]


def test_json_lines_with_level_and_timestamp(stderr: pytest.CaptureFixture[str]) -> None:
    fwdlog.configure("info", json=True)
    log = structlog.get_logger("fwd.test")
    log.debug("not_shown", iface="eth0")
    log.info("xdp_attached", iface="eth0", ifindex=2, mode="native")
    [record] = lines(stderr)
    assert record["event"] == "xdp_attached"
    assert (record["iface"], record["ifindex"], record["mode"]) == ("eth0", 2, "native")
    assert record["level"] == "info"
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", record["timestamp"])


def test_level_filters_structlog_and_stdlib(stderr: pytest.CaptureFixture[str]) -> None:
    fwdlog.configure("warning", json=True)
    structlog.get_logger("fwd.test").info("quiet", revision=1)
    structlog.get_logger("fwd.test").warning("apply_refused", revision=3)
    logging.getLogger("grpclib.server").info("also quiet")
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("grpclib.server").exception("Application error")
    records = lines(stderr)
    assert [r["event"] for r in records] == ["apply_refused", "Application error"]
    stdlib = records[1]
    assert stdlib["logger"] == "grpclib.server" and stdlib["level"] == "error"
    assert "ValueError: boom" in stdlib["exception"]


def test_console_renderer_when_asked(stderr: pytest.CaptureFixture[str]) -> None:
    fwdlog.configure("info", json=False)
    structlog.get_logger("fwd.test").info("policy_applied", revision=4)
    text = stderr.readouterr().err
    assert "policy_applied" in text and "revision" in text
    with pytest.raises(json.JSONDecodeError):
        json.loads(text.splitlines()[0])


def test_unknown_level_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown log level"):
        fwdlog.configure("chatty")


def _log_calls(tree: ast.AST) -> Iterator[ast.Call]:
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == "log"
            and node.func.attr in ("debug", "info", "warning", "error", "exception")
        ):
            yield node


def _events(arg: ast.expr) -> list[object]:
    if isinstance(arg, ast.IfExp):
        return [*_events(arg.body), *_events(arg.orelse)]
    return [arg.value if isinstance(arg, ast.Constant) else ast.unparse(arg)]


def test_log_calls_use_the_agreed_keys() -> None:
    """Every structlog call in fwd/ names its event in snake_case (not a sentence with
    values in it) and calls an interface name ``iface`` (never ifname/interface)."""
    checked = 0
    for path in FWD.rglob("*.py"):
        if "gen" in path.parts:
            continue
        text = path.read_text()
        if "structlog" not in text:
            continue  # a stdlib logger relaying libbpf's own text
        for call in _log_calls(ast.parse(text)):
            where = f"{path.relative_to(FWD)}:{call.lineno}"
            for event in _events(call.args[0]):
                assert isinstance(event, str) and re.fullmatch(r"[a-z][a-z0-9_]*", event), where
            keys = {k.arg for k in call.keywords}
            assert not keys & {"ifname", "interface", "if_name", "name"}, where
            checked += 1
    assert checked > 20
