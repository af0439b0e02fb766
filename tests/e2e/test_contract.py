"""The operator's contract (issue 16), end to end: the agent in namespace B, a peer in A.

    A (198.18.9.2) ── eth0 ──── veth-a ── B: fwd agent (198.18.9.1)
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.agentproc import ROOT, AgentProcess, stop_lab
from tests.netns import Netns

pytestmark = pytest.mark.root


@dataclass
class Lab:
    net: Netns
    a: str
    b: str
    agent: AgentProcess

    def fwd(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "fwd", *args, "--socket", self.agent.socket],
            capture_output=True, text=True, timeout=60, cwd=ROOT, input=stdin,
        )

    def revision(self) -> int:
        """The enforced revision, cheaply (a one-rule ListRules page carries it; the
        history parses stored policies: seconds each at 100,000 rules)."""
        import anyio

        from fwd.api.client import Client
        from fwd.api.gen.fwd import v1 as pb

        async def ask() -> int:
            async with Client(self.agent.socket, timeout=30) as client:
                stub = pb.RuleServiceStub(client.channel, timeout=30)
                return (await stub.list_rules(pb.ListRulesRequest(page_size=1))).revision

        return anyio.run(ask)

    def revisions(self) -> list[int]:
        out = self.fwd("policy", "history", "-o", "json")
        assert out.returncode == 0, out.stderr
        return [r["revision"] for r in json.loads(out.stdout)]


def make_lab(tmp: Path, *agent_args: str) -> tuple[Netns, AgentProcess, str, str]:
    net = Netns(prefix="fwdc")
    a, b = net.make_netns(), net.make_netns()
    net.veth_pair(b, "veth-a", a, "eth0")
    net.add_address(b, "veth-a", "198.18.9.1/24")
    net.add_address(a, "eth0", "198.18.9.2/24")
    return net, AgentProcess(b, tmp, net.pin_dir(), *agent_args), a, b


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    net, agent, a, b = make_lab(tmp_path_factory.mktemp("contract"))
    try:
        agent.start()
        yield Lab(net, a, b, agent)
    finally:
        stop_lab(agent if agent.proc else None, net)


SET_POLICY = """\
sets:
  bl: {type: prefix, elements: [198.51.100.0/24]}
  web: {type: port, elements: [80, 443]}
rules:
  - {id: bl, action: drop, src_set: bl}
  - {id: web, action: allow, protocol: tcp, dst_port_set: web}
"""


def test_no_op_changes_say_so_and_make_no_revision(lab: Lab, tmp_path: Path) -> None:
    path = tmp_path / "sets.yaml"
    path.write_text(SET_POLICY)
    first = lab.fwd("policy", "apply", str(path))
    assert first.returncode == 0, first.stderr
    history = lab.revisions()
    rev = history[0]
    # Re-applying the same policy: no revision, and the reply says so.
    again = lab.fwd("policy", "apply", str(path))
    assert again.returncode == 0, again.stderr
    assert again.stdout == f"unchanged: revision {rev} already enforces this policy\n"
    # Elements already present / already absent (a prefix set and a port set).
    for args, said in [
        (("sets", "add", "bl", "198.51.100.0/24"), "0 added, 1 already present"),
        (("sets", "remove", "bl", "203.0.113.0/24"), "0 removed, 1 not present"),
        (("sets", "add", "web", "443"), "0 added, 1 already present"),
        (("sets", "remove", "web", "8080"), "0 removed, 1 not present"),
    ]:
        out = lab.fwd(*args)
        assert out.returncode == 0, out.stderr
        assert said in out.stdout and f"unchanged: revision {rev}" in out.stdout, out.stdout
    assert lab.revisions() == history
    # A real change still makes one, and says what it did.
    out = lab.fwd("sets", "add", "bl", "198.51.100.0/24", "203.0.113.0/24")
    assert out.returncode == 0, out.stderr
    assert "1 added, 1 already present; revision" in out.stdout
    assert lab.revisions()[0] == rev + 1


SERVE = """
import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("198.18.9.1", 22)); s.listen(); s.settimeout(0.5)
print("ready", flush=True)
end = time.monotonic() + float(sys.argv[1])
while time.monotonic() < end:
    try:
        c, _ = s.accept()
    except TimeoutError:
        continue
    with c:
        c.settimeout(2); c.sendall(c.recv(16))
"""

CONNECT = """
import socket
try:
    with socket.create_connection(("198.18.9.1", 22), timeout=2) as s:
        s.settimeout(2); s.sendall(b"hello"); print(s.recv(16).decode())
except OSError as e:
    print("failed", type(e).__name__)
"""


def ssh_port_works(lab: Lab) -> bool:
    """A TCP connection from A to B's port 22 that carries data both ways."""
    server = subprocess.Popen(
        ["ip", "netns", "exec", lab.b, sys.executable, "-c", SERVE, "8"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        out = subprocess.run(["ip", "netns", "exec", lab.a, sys.executable, "-c", CONNECT],
                             capture_output=True, text=True, timeout=20)
        return out.stdout.strip() == "hello"
    finally:
        server.kill()
        server.wait()


def ping_works(lab: Lab) -> bool:
    out = subprocess.run(["ip", "netns", "exec", lab.a, "ping", "-c", "2", "-i", "0.2", "-W", "1",
                          "198.18.9.1"], capture_output=True, text=True, timeout=20)
    return out.returncode == 0


def test_failsafe_keeps_ssh_through_a_default_drop(lab: Lab, tmp_path: Path) -> None:
    assert ssh_port_works(lab) and ping_works(lab)
    closed = tmp_path / "closed.yaml"
    closed.write_text("default_action: drop\n")
    applied = lab.fwd("policy", "apply", str(closed))
    assert applied.returncode == 0, applied.stderr
    assert not ping_works(lab)  # the policy is enforced...
    assert ssh_port_works(lab)  # ...but not on the failsafe port
    stats = {s["rule_id"]: s for s in json.loads(lab.fwd("stats", "-o", "json").stdout)}
    assert stats["(failsafe)"]["packets"] >= 3 and stats["(failsafe)"]["action"] == "allow"
    # A rule aimed at the failsafe port would silently do nothing: refused, naming the flags.
    aimed = tmp_path / "aimed.yaml"
    aimed.write_text("rules:\n  - {id: no-ssh, action: drop, protocol: tcp, dst_ports: [22]}\n")
    refused = lab.fwd("policy", "apply", str(aimed))
    assert refused.returncode == 1
    assert "rules[0]" in refused.stderr and "--failsafe" in refused.stderr
    assert "--force" in refused.stderr
    assert ssh_port_works(lab)


def test_failsafe_off_and_forced_really_drops_ssh(tmp_path: Path) -> None:
    net, agent, a, b = make_lab(tmp_path, "--failsafe", "")
    try:
        agent.start()
        lab = Lab(net, a, b, agent)
        closed = tmp_path / "closed.yaml"
        closed.write_text("default_action: drop\n")
        refused = lab.fwd("policy", "apply", str(closed))
        assert refused.returncode == 1
        assert "tcp/22" in refused.stderr and "--force" in refused.stderr, refused.stderr
        assert ssh_port_works(lab)
        forced = lab.fwd("policy", "apply", "--force", str(closed))
        assert forced.returncode == 0, forced.stderr
        assert not ssh_port_works(lab) and not ping_works(lab)
    finally:
        stop_lab(agent if agent.proc else None, net)


def test_missing_rule_or_set_is_not_found(lab: Lab) -> None:
    for args in (("rules", "delete", "nosuch"), ("sets", "add", "nosuch", "198.18.0.0/24"),
                 ("sets", "remove", "nosuch", "198.18.0.0/24"), ("sets", "show", "nosuch")):
        out = lab.fwd(*args)
        assert out.returncode == 1 and out.stderr.startswith("fwd: NOT_FOUND: "), (args, out)
        assert "nosuch" in out.stderr


def test_output_applies_back_as_a_no_op(lab: Lab, tmp_path: Path) -> None:
    path = tmp_path / "round.yaml"
    path.write_text(SET_POLICY + "  - {id: ports, action: drop, protocol: udp, "
                    "src_ports: ['1024-65535'], dst_ports: [9999, '7000-7001']}\n")
    applied = lab.fwd("policy", "apply", str(path))
    assert applied.returncode == 0, applied.stderr
    rev = lab.revisions()[0]
    as_json = lab.fwd("policy", "get", "-o", "json")
    assert '"dst_ports": [\n' in as_json.stdout and "9999" in as_json.stdout
    assert '"9999"' not in as_json.stdout  # numbers print as numbers
    again = lab.fwd("policy", "apply", "-", stdin=as_json.stdout)
    assert again.returncode == 0, again.stderr
    assert again.stdout == f"unchanged: revision {rev} already enforces this policy\n"
    as_yaml = lab.fwd("policy", "get")
    assert "dst_ports: [9999, 7000-7001]" in as_yaml.stdout, as_yaml.stdout
    again = lab.fwd("policy", "apply", "--format", "yaml", "-", stdin=as_yaml.stdout)
    assert again.returncode == 0 and "unchanged" in again.stdout, again
    # YAML on stdin without --format is not guessed.
    refused = lab.fwd("policy", "apply", "-", stdin=as_yaml.stdout)
    assert refused.returncode == 1 and "invalid JSON" in refused.stderr
    assert lab.revisions()[0] == rev


def test_sets_show_has_json(lab: Lab, tmp_path: Path) -> None:
    path = tmp_path / "sets.yaml"
    path.write_text(SET_POLICY)
    assert lab.fwd("policy", "apply", str(path)).returncode == 0
    shown = lab.fwd("sets", "show", "web", "-o", "json")
    assert shown.returncode == 0, shown.stderr
    doc = json.loads(shown.stdout)
    assert doc["set"] == "web" and doc["elements"] == [80, 443] and doc["revision"] >= 1


def big_policy(path: Path, n: int, port: int) -> None:
    import ipaddress

    base = int(ipaddress.IPv4Address("198.18.0.0"))
    rules = [{"id": f"r{i}", "action": "drop", "protocol": "udp",
              "src": [str(ipaddress.IPv4Address(base + i))], "dst_ports": [port + i % 1000]}
             for i in range(n)]
    path.write_text(json.dumps({"rules": rules}))


def test_big_apply_waits_by_default_and_a_short_timeout_is_outcome_unknown(
    lab: Lab, tmp_path: Path
) -> None:
    import time

    first, second = tmp_path / "big1.json", tmp_path / "big2.json"
    big_policy(first, 100_000, 20000)
    big_policy(second, 100_000, 30000)
    rev = lab.revision()
    applied = lab.fwd("policy", "apply", str(first))  # no --timeout: waits by the size
    assert applied.returncode == 0, applied.stderr
    assert applied.stdout == f"applied revision {rev + 1}\n"
    cut = lab.fwd("policy", "apply", str(second), "--timeout", "1")
    assert cut.returncode == 4, (cut.returncode, cut.stderr)
    assert f"revision {rev + 1} was enforced before it" in cut.stderr
    assert f"revision {rev + 2} or later" in cut.stderr
    # Either outcome is possible (cut off while the agent read the request, or after
    # it took it): the revision named is what tells them apart, and nothing else.
    deadline = time.monotonic() + 60
    while (now := lab.revision()) != rev + 2 and time.monotonic() < deadline:
        time.sleep(1)
    assert now in (rev + 1, rev + 2)
    stats = lab.fwd("stats", "-o", "json")
    assert stats.returncode == 0 and len(json.loads(stats.stdout)) == 100_000 + 4
    port = 20000 if now == rev + 1 else 30000
    assert [s["rule_id"] for s in json.loads(stats.stdout)[4:6]] == ["r0", "r1"]
    got = lab.fwd("rules", "list", "-o", "json")
    assert json.loads(got.stdout)[1]["dst_ports"] == [port + 1]
    assert got.returncode == 0 and len(json.loads(got.stdout)) == 100_000
    (tmp_path / "small.json").write_text('{"default_action": "allow"}')  # small again
    assert lab.fwd("policy", "apply", str(tmp_path / "small.json")).returncode == 0
