"""Every ``-o json`` output follows one convention, checked over every command that has one.

The convention: keys are snake_case; integers are JSON numbers (never strings, as
protobuf's JSON mapping renders 64-bit ones); enums are the short lower-case words the
policy YAML uses (``drop``, ``native``), never proto names (``ACTION_DROP``). The
commands are found from the CLI's own parser, so a new ``-o json`` command without a
check here fails this test.

Two agents: one in local mode in namespace ``node`` (UDP from ``client`` for events and
counters; it answers every command but ``fwd cluster``), one in cluster mode in ``cnode``
with etcd in ``hub`` (tests/e2e/test_cluster.py's topology) for ``fwd cluster ...``.
"""

from __future__ import annotations

import argparse
import io
import json
import re
import threading
import time
from dataclasses import dataclass
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from fwd.cli import build_parser
from fwd.cli import main as fwd_main
from tests.e2e.agentproc import AgentProcess, udp_count
from tests.etcd import EtcdServer, need_etcd
from tests.netns import Netns, require_root, run

pytestmark = pytest.mark.root

ETCD_ADDR = "198.18.100.1"
POLICY: dict[str, Any] = {
    "default_action": "allow",
    "sets": {"blocklist": {"type": "prefix", "elements": ["198.18.131.0/24", "198.51.100.0/24"]}},
    "rules": [
        {"id": "drop-9999", "action": "drop", "protocol": "udp", "dst_ports": [9999], "log": True},
        {"id": "blocked", "action": "drop", "src_set": "blocklist"},
        {"id": "ssh", "action": "allow", "protocol": "tcp", "dst_ports": [22, "8000-8080"]},
    ],
}
# Every command with -o json, and the arguments that make it print something.
COMMANDS: dict[tuple[str, ...], list[str]] = {
    ("policy", "get"): ["policy", "get", "-o", "json"],
    ("policy", "history"): ["policy", "history", "-o", "json"],
    ("events",): ["events", "-o", "json", "--count", "3", "--duration", "20"],
    ("interfaces",): ["interfaces", "-o", "json"],
    ("stats",): ["stats", "-o", "json"],
    ("rules", "list"): ["rules", "list", "-o", "json"],
    ("sets", "list"): ["sets", "list", "-o", "json"],
    ("sets", "show"): ["sets", "show", "blocklist", "-o", "json"],
    ("policy", "diff"): ["policy", "diff", "{policy}", "-o", "json"],
    ("cluster", "status"): ["cluster", "status", "-o", "json"],
    ("cluster", "policies"): ["cluster", "policies", "-o", "json"],
}
SNAKE = re.compile(r"[a-z][a-z0-9]*(_[a-z0-9]+)*")
# Keys whose values are keyed by the user's names, not ours (node labels, set names).
DATA_KEYS = {"labels", "sets"}
ENUM_KEYS = {"action", "default_action", "mode", "state", "type", "verdict", "reason"}


def json_commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Every (sub)command whose -o/--output accepts json."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from json_commands(sub, (*path, name))
        elif "--output" in action.option_strings and "json" in (action.choices or ()):
            yield path


def violations(value: Any, where: str = "$") -> Iterator[str]:
    """What breaks the convention in a decoded JSON value, with the path to it."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not SNAKE.fullmatch(key):
                yield f"{where}: key {key!r} is not snake_case"
            if key in ENUM_KEYS and isinstance(item, str) and item != item.lower():
                yield f"{where}.{key}: enum {item!r} is not a lower-case word"
            if key not in DATA_KEYS:
                yield from violations(item, f"{where}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from violations(item, f"{where}[{i}]")
    elif isinstance(value, str):
        if re.fullmatch(r"-?[0-9]+", value):
            yield f"{where}: integer as a string {value!r}"
        if re.fullmatch(r"[A-Z][A-Z0-9]*(_[A-Z0-9]+)+", value):
            yield f"{where}: proto enum name {value!r}"


def documents(text: str) -> list[Any]:
    """One JSON document, or JSON lines (events)."""
    try:
        return [json.loads(text)]
    except json.JSONDecodeError:
        return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_the_checker_catches_what_the_issue_reported() -> None:
    bad = {"adoption": {"mapsCreated": ["a"], "kernelRevision": "3"}, "action": "ACTION_DROP",
           "time_unix_ns": "1700000000000000000"}  # fmt: skip
    found = list(violations(bad))
    assert any("mapsCreated" in v for v in found)
    assert any("kernelRevision" in v for v in found)
    assert any("'3'" in v for v in found)
    assert any("ACTION_DROP" in v for v in found)
    assert any("time_unix_ns" in v for v in found)
    assert not list(violations({"labels": {"Zone-A": "x"}, "action": "drop", "src": ["10.0.0.0/8"],
                                "sets": {"edge.blocklist": {"type": "prefix"}}}))


@dataclass
class Lab:
    net: Netns
    ns: str
    client: str
    local: AgentProcess
    clustered: AgentProcess


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    require_root()
    need_etcd()
    net = Netns(prefix="fwdj")
    etcd: EtcdServer | None = None
    agents: list[AgentProcess] = []
    try:
        hub, cnode, ns, client = (net.make_netns() for _ in range(4))
        net.add_address(hub, "lo", f"{ETCD_ADDR}/32")
        etcd = EtcdServer(tmp_path / "etcd", host=ETCD_ADDR, netns=hub)
        etcd.start()
        net.veth_pair(hub, "hub0", cnode, "ctl0")
        net.add_address(hub, "hub0", "198.18.130.1/24")
        net.add_address(cnode, "ctl0", "198.18.130.2/24")
        run(["ip", "-n", cnode, "route", "add", f"{ETCD_ADDR}/32", "via", "198.18.130.1"])
        net.veth_pair(client, "cli0", ns, "data0")
        net.add_address(client, "cli0", "198.18.131.1/24")
        net.add_address(ns, "data0", "198.18.131.2/24")
        for name, where, extra in (
            ("local", ns, ()),
            ("cluster", cnode, ("--etcd", etcd.url, "--etcd-insecure", "--node", "n0", "--label", "role=edge",
                                "--exclude", "ctl0")),
        ):  # fmt: skip
            workdir = tmp_path / name
            workdir.mkdir()
            agents.append(AgentProcess(where, workdir, net.pin_dir(), "--metrics", "", *extra))
            agents[-1].start(timeout=30)
        yield Lab(net, ns, client, agents[0], agents[1])
    finally:
        for agent in agents:
            if agent.proc is not None:
                agent.stop()
        if etcd is not None:
            etcd.cleanup()
        errors = net.cleanup()
        assert not errors, f"netns cleanup: {errors}"


def fwd(agent: AgentProcess, *argv: str, code: int = 0) -> str:
    out, err = io.StringIO(), io.StringIO()
    got = fwd_main([*argv, "--socket", agent.socket], out=out, err=err)
    assert got == code, f"fwd {' '.join(argv)}: {err.getvalue()}"
    return out.getvalue() + err.getvalue()


def test_every_json_output_follows_the_convention(lab: Lab, tmp_path: Path) -> None:
    assert set(json_commands(build_parser())) == set(COMMANDS), "a -o json command is unchecked"
    path = tmp_path / "edge.yaml"
    path.write_text(yaml.safe_dump(POLICY))
    fwd(lab.local, "policy", "apply", str(path))
    out = fwd(lab.clustered, "policy", "apply", str(path), "--name", "edge", "--selector", "role=edge")
    revision = int(re.search(r"at etcd revision (\d+)", out).group(1))  # type: ignore[union-attr]
    fwd(lab.clustered, "cluster", "wait", "--revision", str(revision), "--timeout", "30")
    # Events: subscribe first, then traffic it sees (drop-9999 has log: true).
    before = lab.local.log().count('"events_subscribed"')
    events_out: list[str] = []
    sub = threading.Thread(target=lambda: events_out.append(fwd(lab.local, *COMMANDS[("events",)])))
    sub.start()
    deadline = time.monotonic() + 15
    while lab.local.log().count('"events_subscribed"') <= before and time.monotonic() < deadline:
        time.sleep(0.05)
    got = udp_count(lab.net, lab.ns, "198.18.131.2", [9999], [(lab.client, "198.18.131.2", 9999, 5)])
    sub.join(30)
    assert got == {9999: 0}
    outputs = {
        key: fwd(lab.clustered if key[0] == "cluster" else lab.local,
                 *(str(path) if a == "{policy}" else a for a in argv))
        for key, argv in COMMANDS.items() if key != ("events",)
    }  # fmt: skip
    outputs[("events",)] = events_out[0] if events_out else ""
    problems = []
    for key, text in outputs.items():
        docs = documents(text)
        assert docs, f"fwd {' '.join(key)} printed nothing"
        for doc in docs:
            problems += [f"fwd {' '.join(key)} -o json: {v}" for v in violations(doc)]
    assert not problems, "\n".join(problems)
    # What the issue named, by value.
    got_policy = json.loads(outputs[("policy", "get")])
    adoption = got_policy["adoption"]
    assert isinstance(adoption["kernel_revision"], int) and adoption["maps_created"], adoption
    assert got_policy["policy"]["rules"][0]["dst_ports"] == [9999]
    events = [json.loads(line) for line in outputs[("events",)].splitlines()]
    assert len(events) == 3 and all(e["action"] == "drop" for e in events), events
    assert all(isinstance(e["time_unix_ns"], int) and e["time_unix_ns"] > 0 for e in events)
    stats = {s["rule_id"]: s for s in json.loads(outputs[("stats",)])}
    assert stats["drop-9999"]["action"] == "drop" and stats["drop-9999"]["packets"] == 5


def test_an_empty_policy_file_is_refused_unless_allowed(lab: Lab, tmp_path: Path) -> None:
    path = tmp_path / "edge.yaml"
    path.write_text(yaml.safe_dump(POLICY))
    fwd(lab.local, "policy", "apply", str(path))
    before = json.loads(fwd(lab.local, "policy", "get", "-o", "json"))
    for empty in ("/dev/null", str(tmp_path / "comments.yaml")):
        (tmp_path / "comments.yaml").write_text("# to do\n")
        # /dev/null has no extension: say its format (issue 16: .json strict, YAML by name or --format).
        err = fwd(lab.local, "policy", "apply", empty, "--format", "yaml", code=1)
        assert "the policy is empty" in err and "--allow-empty" in err, err
    after = json.loads(fwd(lab.local, "policy", "get", "-o", "json"))
    assert after["revision"] == before["revision"] and after["policy"] == before["policy"]
    assert fwd(lab.local, "policy", "apply", "/dev/null", "--format", "yaml", "--allow-empty").startswith(
        f"applied revision {before['revision'] + 1}")
    now = json.loads(fwd(lab.local, "policy", "get", "-o", "json"))["policy"]
    assert now == {"default_action": "allow", "dry_run": False, "rules": []}
