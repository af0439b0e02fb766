"""End to end: the agent's Prometheus endpoint and its logs, with real traffic.

    A (198.18.1.2) ── veth-a ── B: fwd agent --metrics 127.0.0.1:PORT (198.18.1.1)

The agent listens on B's loopback, so scrapes run inside B (``ip netns exec``).
Per-rule counters in the scrape must equal the packets sent, exactly; promtool
must accept the scrape. The agent's stderr must be JSON lines with stable keys.
"""

from __future__ import annotations

import ctypes
import re
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest
from prometheus_client.parser import text_string_to_metric_families

from fwd.api.client import Client
from fwd.core import abi
from fwd.kernel import libbpf
from fwd.kernel.maps import Map
from fwd.metrics.kernel import IF_STATS_MAP, IfCounters, read_if_stats
from fwd.policy.model import policy_from_dict
from tests.e2e.agentproc import AgentProcess, stop_lab, udp_count
from tests.netns import Netns, run_in

pytestmark = pytest.mark.root

ROOT = Path(__file__).resolve().parents[2]
PORT = 19469  # B is a fresh namespace: nothing else listens on its loopback
# Per-interface verdict counters exist once the program declares the map (bpf/fwd.bpf.c).
KERNEL_IF_STATS = IF_STATS_MAP in (ROOT / "bpf" / "fwd.bpf.c").read_text()

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]

POLICY: dict[str, Any] = {
    "default_action": "allow",
    "rules": [
        {
            "id": "drop-a-9999",
            "action": "drop",
            "protocol": "udp",
            "src": ["198.18.1.0/24"],
            "dst_ports": [9999],
        },
        {"id": "allow-a-9998", "action": "allow", "protocol": "udp", "dst_ports": [9998]},
    ],
}

_SCRAPE = (
    "import sys, urllib.request\n"
    "sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())\n"
)


@dataclass
class Lab:
    net: Netns
    a: str
    b: str
    agent: AgentProcess

    def apply(self, raw: dict[str, Any]) -> int:
        policy = policy_from_dict(raw)

        async def go() -> int:
            async with Client(self.agent.socket, timeout=20) as client:
                return await client.apply_policy(policy)

        return anyio.run(go)

    def scrape_text(self) -> str:
        url = f"http://127.0.0.1:{PORT}/metrics"
        return run_in(self.b, [sys.executable, "-c", _SCRAPE, url]).stdout

    def scrape(self) -> Samples:
        samples: Samples = {}
        for family in text_string_to_metric_families(self.scrape_text()):
            for s in family.samples:
                samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    net = Netns(prefix="fwdm")
    agent: AgentProcess | None = None
    try:
        a, b = net.make_netns(), net.make_netns()
        net.veth_pair(b, "veth-a", a, "eth0")
        net.add_address(b, "veth-a", "198.18.1.1/24")
        net.add_address(a, "eth0", "198.18.1.2/24")
        agent = AgentProcess(
            b, tmp_path_factory.mktemp("agent"), net.pin_dir(), "--metrics", f"127.0.0.1:{PORT}"
        )
        agent.start()
        yield Lab(net, a, b, agent)
    finally:
        stop_lab(agent, net)


def test_rule_counters_equal_the_packets_sent(lab: Lab) -> None:
    rev = lab.apply(POLICY)
    before = lab.scrape()
    got = udp_count(
        lab.net, lab.b, "0.0.0.0", [9998, 9999],
        [(lab.a, "198.18.1.1", 9999, 30), (lab.a, "198.18.1.1", 9998, 20)],
    )
    assert got == {9998: 20, 9999: 0}
    after = lab.scrape()

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    drop = {"rule_id": "drop-a-9999", "action": "drop"}
    allow = {"rule_id": "allow-a-9998", "action": "allow"}
    assert delta("fwd_rule_packets_total", **drop) == 30
    assert delta("fwd_rule_packets_total", **allow) == 20
    # UDP/IPv4 to 198.18.1.1 with an 8-byte payload or more: at least 14+20+8 bytes each.
    assert delta("fwd_rule_bytes_total", **drop) >= 30 * 42
    assert delta("fwd_rule_would_drop_packets_total", **drop) == 0
    assert value(after, "fwd_policy_revision") == rev
    assert value(after, "fwd_policy_dry_run") == 0
    assert value(after, "fwd_interface_attached", interface="veth-a", mode="native") == 1
    assert ("fwd_unmatched_packets_total", (("action", "allow"), ("reason", "no_rule"))) in after
    apply = {"method": "/fwd.v1.PolicyService/ApplyPolicy", "code": "OK"}
    assert value(after, "fwd_grpc_request_duration_seconds_count", **apply) >= 1
    assert any(name == "fwd_build_info" and v == 1 for (name, _), v in after.items())
    # The loop-lag monitor wakes every 10 ms: a scrape a few seconds in has samples.
    lag = "fwd_event_loop_lag_seconds"
    assert value(after, f"{lag}_count") > value(before, f"{lag}_count") > 0
    assert value(after, f"{lag}_bucket", le="+Inf") == value(after, f"{lag}_count")
    assert ("fwd_event_loop_lag_max_seconds", ()) in after
    assert ("fwd_event_loop_lag_own_max_seconds", ()) in after
    if KERNEL_IF_STATS:
        assert delta("fwd_interface_packets_total", interface="veth-a", verdict="drop") == 30
        assert delta("fwd_interface_packets_total", interface="veth-a", verdict="pass") >= 20


def test_dry_run_passes_and_counts_would_drops(lab: Lab) -> None:
    rev = lab.apply({**POLICY, "dry_run": True})
    before = lab.scrape()
    got = udp_count(lab.net, lab.b, "0.0.0.0", [9999], [(lab.a, "198.18.1.1", 9999, 25)])
    assert got == {9999: 25}  # nothing dropped
    after = lab.scrape()
    drop = {"rule_id": "drop-a-9999", "action": "drop"}
    for name in ("fwd_rule_packets_total", "fwd_rule_would_drop_packets_total"):
        assert value(after, name, **drop) - value(before, name, **drop) == 25, name
    assert value(after, "fwd_policy_revision") == rev
    assert value(after, "fwd_policy_dry_run") == 1
    if KERNEL_IF_STATS:
        labels = {"interface": "veth-a", "verdict": "would_drop"}
        assert value(after, "fwd_interface_packets_total", **labels) - value(
            before, "fwd_interface_packets_total", **labels
        ) == 25


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (prometheus)")
def test_promtool_accepts_a_scrape_while_rules_match(lab: Lab) -> None:
    lab.apply(POLICY)
    sender = subprocess.Popen(
        ["ip", "netns", "exec", lab.a, sys.executable, str(ROOT / "contrib" / "udp.py"), "send",
         "--to", "198.18.1.1", "--port", "9999", "--count", "2000", "--interval", "0.001"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        first = lab.scrape_text()
        text = lab.scrape_text()
    finally:
        sender.kill()
        sender.wait()
    assert first != text or "fwd_rule_packets_total" in text
    check = subprocess.run(
        ["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert 'fwd_rule_packets_total{action="drop",rule_id="drop-a-9999"}' in text


def test_agent_logs_are_json_with_stable_keys(lab: Lab) -> None:
    lab.apply(POLICY)
    records = []
    for line in lab.agent.log().splitlines():
        if line.strip():
            records.append(json.loads(line))  # every line is one JSON object
    for r in records:
        assert {"event", "level", "timestamp"} <= r.keys(), r
        assert "ifname" not in r, r
    events = {r["event"] for r in records}
    assert {"agent_starting", "api_listening", "metrics_listening", "agent_ready"} <= events
    attached = [r for r in records if r["event"] in ("xdp_attached", "xdp_adopted")]
    veth = [r for r in attached if r.get("iface") == "veth-a"]
    assert veth, attached
    assert veth[0]["mode"] == "native" and isinstance(veth[0]["ifindex"], int)
    assert veth[0]["ifindex"] == lab.net.ifindex(lab.b, "veth-a")
    applied = [r for r in records if r["event"] == "policy_applied"]
    assert applied and all(isinstance(r["revision"], int) for r in applied)
    # The agent runs with --log-level debug: debug events are there.
    assert any(r["level"] == "debug" for r in records)


def test_if_stats_map_read_in_batches() -> None:
    """The fwd_if_stats shape (PERCPU_HASH ifindex -> struct fwd_if_stats), made here,
    so reading it is tested before the program declares the map."""
    fd = libbpf.check(
        int(
            libbpf.bpf_map_create(
                libbpf.BPF_MAP_TYPE_PERCPU_HASH, b"fwdm_if_stats", 4,
                ctypes.sizeof(abi.IfStats), 512, None,
            )
        ),
        "bpf_map_create(fwdm_if_stats)",
    )
    m = Map("fwdm_if_stats", fd=fd, info=libbpf.obj_info(fd, libbpf.MapInfo(), "fwdm_if_stats"))
    try:
        ncpus = m.ncpus
        expect: dict[int, IfCounters] = {}
        for ifindex in range(1, 301):  # more entries than one batch (256) holds
            per_cpu = [
                abi.IfStats((abi.U64x3)(ifindex, cpu, 1), (abi.U64x3)(100 * ifindex, 10 * cpu, 7))
                for cpu in range(ncpus)
            ]
            m.update(ifindex.to_bytes(4, sys.byteorder), b"".join(bytes(v) for v in per_cpu))
            cpus = sum(range(ncpus))
            expect[ifindex] = IfCounters(
                (ifindex * ncpus, cpus, ncpus), (100 * ifindex * ncpus, 10 * cpus, 7 * ncpus)
            )
        assert read_if_stats(m, ncpus) == expect
    finally:
        m.close()


# --- the Grafana dashboard (contrib/grafana) reads only what a real agent exports ----------

DASHBOARD = ROOT / "contrib" / "grafana" / "fwd-dashboard.json"
_METRIC = re.compile(r"\b(fwd_[a-z0-9_]+)\b")
_GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
_MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)\s*\"")
# Grafana's variables, as Prometheus would see them after substitution.
_VARIABLES = {"$__rate_interval": "5m", "$instance": ".*"}


def dashboard_queries(node: Any) -> Iterator[str]:
    """Every PromQL string in the dashboard: panel targets and variable queries."""
    if isinstance(node, dict):
        for key, val in node.items():
            if key in ("expr", "definition") and isinstance(val, str):
                yield val
            else:
                yield from dashboard_queries(val)
    elif isinstance(node, list):
        for item in node:
            yield from dashboard_queries(item)


def test_dashboard_queries_read_real_metrics(lab: Lab, tmp_path: Path) -> None:
    lab.apply(POLICY)  # a gRPC call, so the request histogram has series
    udp_count(lab.net, lab.b, "0.0.0.0", [9999], [(lab.a, "198.18.1.1", 9999, 5)])
    labels: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(lab.scrape_text()):
        for s in family.samples:
            labels.setdefault(s.name, set()).update(s.labels)
    queries = list(dashboard_queries(json.loads(DASHBOARD.read_text())))
    assert len(queries) >= 20
    for query in queries:
        names = _METRIC.findall(query)
        assert names, f"reads no fwd metric: {query}"
        missing = [n for n in names if n not in labels]
        assert not missing, f"{query}: not in the agent's scrape: {missing}"
        # Labels the query groups or filters by exist on the metrics it reads (instance
        # and job are Prometheus's own).
        known = set().union(*(labels[n] for n in names)) | {"instance", "job"}
        used = {m for m in _MATCHER.findall(query)}
        for group in _GROUPING.findall(query):
            used |= {g.strip() for g in group.split(",") if g.strip()}
        assert used <= known, f"{query}: unknown labels {used - known}"
    # And Prometheus parses every expression (promtool checks recording rules' PromQL).
    if shutil.which("promtool"):
        exprs = [q for q in queries if not q.startswith("label_values(")]
        for var, val in _VARIABLES.items():
            exprs = [e.replace(var, val) for e in exprs]
        rules = {"groups": [{"name": "dashboard", "rules": [
            {"record": f"fwd:dashboard_{i}", "expr": e} for i, e in enumerate(exprs)]}]}
        path = tmp_path / "rules.yml"
        path.write_text(json.dumps(rules))  # JSON is YAML
        proc = subprocess.run(["promtool", "check", "rules", str(path)],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stdout + proc.stderr
