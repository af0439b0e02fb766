"""``fwd`` commands against the real Api server backed by the fakes.

The server runs in the test's event loop; ``main`` runs its own loop, so it is
called in a worker thread.
"""

from __future__ import annotations

import io
import json
import socket
import sys
import types
from pathlib import Path
from typing import Any

import anyio
import pytest

import fwd
from fwd.api.client import default_socket
from fwd.cli import build_parser, format_table, main
from fwd.messages import AttachMode, InterfaceStatus, LinkState, RuleStats
from fwd.settings import Settings
from fwd.policy.files import load_policy_text
from fwd.policy.model import policy_to_dict
from fwd.testing import serve_api

POLICY_YAML = """\
default_action: drop
rules:
  - id: mgmt-ssh
    action: allow
    protocol: tcp
    src: [198.18.0.0/15, "2001:2::/48"]
    dst_ports: [22, "8000-8080"]
    log: true
  - id: drop-bad-net
    action: drop
    src: [198.19.7.0/24]
"""

INTERFACES = (
    InterfaceStatus("veth0", 5, LinkState.ATTACHED, AttachMode.NATIVE, prog_id=42, link_id=3),
    InterfaceStatus("lo", 1, LinkState.EXCLUDED),
    InterfaceStatus("veth1", 7, LinkState.FAILED, error="EBUSY"),
)


def sock_path(tmp_path: Path) -> str:
    return str(tmp_path / "run" / "fwd.sock")


async def fwd_cli(*argv: str) -> tuple[int, str, str]:
    """Run ``fwd argv`` in a worker thread; (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    code = await anyio.to_thread.run_sync(lambda: main(list(argv), out=out, err=err))
    return code, out.getvalue(), err.getvalue()


def write_policy(tmp_path: Path, text: str = POLICY_YAML) -> str:
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    return str(path)


@pytest.mark.asyncio
async def test_policy_apply_then_get_yaml_and_json(tmp_path: Path) -> None:
    sock = sock_path(tmp_path)
    async with serve_api(sock) as harness:
        code, out, err = await fwd_cli("policy", "apply", write_policy(tmp_path), "--socket", sock)
        assert (code, out, err) == (0, "applied revision 1\n", "")
        assert harness.datapath.policy == load_policy_text(POLICY_YAML)

        code, out, err = await fwd_cli("policy", "get", "--socket", sock)
        assert code == 0 and err == ""
        assert out.startswith("# revision: 1\n")
        # The YAML output is itself a valid policy file: the same policy.
        assert load_policy_text(out) == load_policy_text(POLICY_YAML)

        code, out, _ = await fwd_cli("policy", "get", "-o", "json", "--socket", sock)
        assert code == 0
        data = json.loads(out)
        assert data["revision"] == 1
        assert data["policy"] == policy_to_dict(load_policy_text(POLICY_YAML))
        assert data["policy"]["rules"][0]["dst_ports"] == [22, "8000-8080"]  # numbers as numbers
        assert out == json.dumps(data, sort_keys=True, indent=2) + "\n"


@pytest.mark.asyncio
async def test_socket_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sock = sock_path(tmp_path)
    monkeypatch.setenv("FWD_SOCKET", sock)
    async with serve_api(sock):
        code, out, _ = await fwd_cli("policy", "get", "-o", "json")
    assert code == 0 and json.loads(out)["revision"] == 0


@pytest.mark.asyncio
async def test_stale_revision_exits_1_with_status(tmp_path: Path) -> None:
    sock = sock_path(tmp_path)
    file = write_policy(tmp_path)
    async with serve_api(sock) as harness:
        assert (await fwd_cli("policy", "apply", file, "--expect-revision", "0", "--socket", sock))[
            0
        ] == 0
        code, out, err = await fwd_cli(
            "policy", "apply", file, "--expect-revision", "0", "--socket", sock
        )
        assert harness.datapath.revision == 1
    assert code == 1 and out == ""
    assert err == (
        "fwd: FAILED_PRECONDITION: expect_revision: expected revision 0 but revision 1 is applied\n"
    )


@pytest.mark.asyncio
async def test_bad_policy_file_names_the_field_and_sends_nothing(tmp_path: Path) -> None:
    sock = sock_path(tmp_path)
    bad = POLICY_YAML.replace('"8000-8080"', "70000")
    async with serve_api(sock) as harness:
        code, out, err = await fwd_cli(
            "policy", "apply", write_policy(tmp_path, bad), "--socket", sock
        )
        assert harness.datapath.received == []
    assert code == 1 and out == ""
    assert "rules[0].dst_ports[1]: port 70000 out of range 0-65535" in err
    assert err.startswith("fwd: ")


@pytest.mark.asyncio
async def test_interfaces_table_and_json(tmp_path: Path) -> None:
    sock = sock_path(tmp_path)
    async with serve_api(sock, interfaces=INTERFACES):
        code, table, err = await fwd_cli("interfaces", "--socket", sock)
        assert (code, err) == (0, "")
        code, out, _ = await fwd_cli("interfaces", "-o", "json", "--socket", sock)
        assert code == 0
    assert table == (
        "NAME   IFINDEX  STATE     MODE    PROG  LINK  ERROR\n"
        "lo           1  excluded  none       0     0\n"
        "veth0        5  attached  native    42     3\n"
        "veth1        7  failed    none       0     0  EBUSY\n"
    )
    data = json.loads(out)
    assert [d["name"] for d in data] == ["lo", "veth0", "veth1"]
    assert data[1] == {
        "name": "veth0",
        "ifindex": 5,
        "state": "attached",
        "mode": "native",
        "prog_id": 42,
        "link_id": 3,
        "error": "",
        "adopted": False,
    }


@pytest.mark.asyncio
async def test_stats_table_and_json_fetch_every_page(tmp_path: Path) -> None:
    sock = sock_path(tmp_path)
    many = tuple(RuleStats(f"r{i}", "allow", i, 64 * i) for i in range(2345))
    async with serve_api(sock) as harness:
        harness.datapath.stats = (
            RuleStats("mgmt-ssh", "allow", 12, 1234),
            RuleStats("drop-bad-net", "drop", 3, 180, 3, 180),
        )
        code, table, _ = await fwd_cli("stats", "--socket", sock)
        assert code == 0
        harness.datapath.stats = many
        code, out, _ = await fwd_cli("stats", "-o", "json", "--socket", sock)
        assert code == 0
        code, big_table, _ = await fwd_cli("stats", "--socket", sock)
        assert code == 0
    assert table == (
        "RULE          ACTION  PACKETS  BYTES  WOULD_DROP_PACKETS  WOULD_DROP_BYTES\n"
        "mgmt-ssh      allow        12   1234                   0                 0\n"
        "drop-bad-net  drop          3    180                   3               180\n"
    )
    data = json.loads(out)
    assert len(data) == 2345  # more than one page of 1000
    assert data[2000] == {
        "rule_id": "r2000",
        "action": "allow",
        "packets": 2000,
        "bytes": 128000,
        "would_drop_packets": 0,
        "would_drop_bytes": 0,
    }
    assert len(big_table.splitlines()) == 2346


@pytest.mark.asyncio
async def test_no_agent(tmp_path: Path) -> None:
    missing = str(tmp_path / "nothing.sock")
    code, out, err = await fwd_cli("stats", "--socket", missing)
    assert (code, out) == (3, "")  # 3: the agent could not be reached
    assert err == f"fwd: UNREACHABLE: is the agent running? no socket at {missing}\n"
    # A socket file nobody listens on (a crashed agent's leftover).
    dead = tmp_path / "dead.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(str(dead))
    code, out, err = await fwd_cli("interfaces", "--socket", str(dead))
    assert code == 3
    assert err.startswith(f"fwd: UNREACHABLE: is the agent running? cannot connect to {dead}")


@pytest.mark.asyncio
async def test_client_timeout(tmp_path: Path) -> None:
    sock = sock_path(tmp_path)
    async with serve_api(sock) as harness:
        harness.datapath.silent = True
        code, _, err = await fwd_cli("policy", "get", "--timeout", "0.2", "--socket", sock)
    assert code == 3  # a read without an answer: nothing changed, the agent is not answering
    assert err == "fwd: DEADLINE_EXCEEDED: no answer came within 0.2s from the agent\n"


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    for command in (
        "fwd agent",
        "fwd policy get",
        "fwd policy apply",
        "fwd interfaces",
        "fwd stats",
        "--socket",
        "--timeout",
    ):
        assert command in text
    for sub in (
        ["agent"],
        ["policy"],
        ["policy", "get"],
        ["policy", "apply"],
        ["interfaces"],
        ["stats"],
    ):
        assert main([*sub, "--help"]) == 0
        assert capsys.readouterr().out.startswith(f"usage: fwd {' '.join(sub)}")


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert main(["policy"]) == 2
    assert main(["stats", "--timeout", "-1"]) == 2
    assert main(["policy", "apply", "f.yaml", "--expect-revision", "x"]) == 2
    assert "usage: fwd" in capsys.readouterr().err


def test_agent_builds_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    def run(settings: Settings, *, log_level: str = "info") -> int:
        seen.update(settings=settings, log_level=log_level)
        return 3

    fake = types.ModuleType("fwd.agent")
    fake.run = run  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "fwd.agent", fake)
    monkeypatch.setattr(fwd, "agent", fake, raising=False)
    code = main(
        [
            "agent",
            "--socket",
            "/tmp/x.sock",
            "--state-dir",
            "/tmp/st",
            "--bpffs",
            "/sys/fs/bpf/t",
            "--include",
            "veth*",
            "--include",
            "eth*",
            "--exclude",
            "veth9",
            "--log-level",
            "debug",
        ]
    )
    assert code == 3
    assert seen["log_level"] == "debug"
    assert seen["settings"] == Settings(
        socket_path="/tmp/x.sock",
        state_dir="/tmp/st",
        bpffs_dir="/sys/fs/bpf/t",
        include=("veth*", "eth*"),
        exclude=("veth9",),
    )
    assert main(["agent"]) == 3
    assert seen["settings"].include == ("*",) and seen["settings"].exclude == ()
    assert seen["settings"].pin is True
    assert main(["agent", "--no-pin"]) == 3
    assert seen["settings"].pin is False


def test_format_table() -> None:
    assert format_table(["A", "NUM"], [["x", 1], ["long", 100]]) == (
        "A     NUM\nx       1\nlong  100\n"
    )
    assert format_table(["A", "B"], []) == "A  B\n"


@pytest.mark.asyncio
async def test_agent_stops_mid_call(tmp_path: Path) -> None:
    sock = sock_path(tmp_path)
    results: list[tuple[int, str, str]] = []

    async def get() -> None:
        results.append(await fwd_cli("policy", "get", "--socket", sock))

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg, serve_api(sock) as harness:
            harness.datapath.silent = True
            tg.start_soon(get)
            while not harness.datapath.received:
                await anyio.sleep(0.01)
    [(code, out, err)] = results
    assert (code, out) == (3, "")  # a read: nothing changed either way
    assert err == "fwd: UNAVAILABLE: the agent is shutting down\n"


def test_agent_cluster_settings(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    seen: dict[str, Any] = {}

    def run(settings: Settings, *, log_level: str = "info") -> int:
        seen.update(settings=settings)
        return 0

    fake = types.ModuleType("fwd.agent")
    fake.run = run  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "fwd.agent", fake)
    monkeypatch.setattr(fwd, "agent", fake, raising=False)
    code = main(["agent", "--etcd", "http://198.18.0.1:2379,198.18.0.2:2379", "--node", "edge-1",
                 "--label", "role=edge", "--label", "zone=a", "--lease-ttl", "5", "--etcd-insecure"])  # fmt: skip
    assert code == 0
    s = seen["settings"]
    assert s.cluster and s.etcd_endpoints == ("http://198.18.0.1:2379", "198.18.0.2:2379")
    assert (s.node_name, s.node_labels, s.lease_ttl, s.etcd_prefix) == (
        "edge-1", (("role", "edge"), ("zone", "a")), 5, "/fwd/")
    # Local mode by default; cluster flags without --etcd, bad labels and URLs are usage errors.
    assert main(["agent"]) == 0 and not seen["settings"].cluster
    for argv, why in [
        (["--node", "x"], "--node needs --etcd"),
        (["--etcd-cert", "x.pem"], "--etcd-cert needs --etcd"),
        (["--etcd", "http://198.18.0.1:2379", "--etcd-insecure", "--label", "role"], "not key=value"),
        (["--etcd", "ftp://198.18.0.1:2379"], "expected https://HOST:PORT"),
        (["--etcd", "http://198.18.0.1:2379"], "plain text"),
        (["--etcd", "https://198.18.0.1:2379", "--etcd-insecure"], "--etcd-insecure: only with http://"),
        (["--etcd", "https://198.18.0.1:2379", "--etcd-cert", "/nonexistent.pem"], "--etcd-key: needed"),
        (["--etcd", "https://198.18.0.1:2379", "--etcd-ca", "/nonexistent.pem"], "no such file"),
        (["--etcd", "http://198.18.0.1:2379", "--etcd-insecure", "--node", "a/b"], "invalid node name"),
    ]:
        seen.clear()
        assert main(["agent", *argv]) == 2
        assert why in capsys.readouterr().err and not seen


def test_client_options_before_or_after_the_command() -> None:
    parse = build_parser().parse_args
    assert parse(["--socket", "/a", "policy", "get"]).socket == "/a"
    assert parse(["policy", "get", "--socket", "/b"]).socket == "/b"
    assert parse(["--socket", "/a", "policy", "get", "--socket", "/b"]).socket == "/b"
    assert parse(["--socket", "/a", "agent"]).socket == "/a"  # the agent serves there
    assert parse(["stats"]).socket == default_socket()
    assert parse(["--timeout", "3", "interfaces"]).timeout == 3.0
    assert parse(["--server", "h:1", "cluster", "status"]).server == "h:1"
    assert parse(["cluster", "wait", "--revision", "4", "--timeout", "7"]).timeout == 7.0
