"""The TCP listener: mutual TLS only, and client certificates map to roles."""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path

import anyio
import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError, StreamTerminatedError

from fwd.api.client import Client
from fwd.api.tls import client_context
from fwd.policy.model import policy_from_dict
from tests.e2e.agentproc import ROOT, AgentProcess
from tests.netns import Netns, entered, netns  # noqa: F401 - fixture

pytestmark = pytest.mark.root

POLICY = policy_from_dict({"rules": [{"id": "r", "action": "drop", "protocol": "udp"}]})
ADDR = "127.0.0.1:7443"


@pytest.fixture
def certs(tmp_path: Path) -> Path:
    subprocess.run(["bash", str(ROOT / "contrib/make-certs.sh"), str(tmp_path / "pki")],
                   check=True, capture_output=True)
    subprocess.run(["bash", str(ROOT / "contrib/make-certs.sh"), str(tmp_path / "other")],
                   check=True, capture_output=True)
    return tmp_path


def _client(certs: Path, who: str | None, ca: str = "pki") -> Client:
    pki = certs / "pki"
    cert = str(certs / ca / f"{who}.pem") if who else None
    key = str(certs / ca / f"{who}.key") if who else None
    return Client("", timeout=10, server=ADDR, ssl=client_context(str(pki / "ca.pem"), cert, key))


def test_roles_and_refusals(netns: Netns, certs: Path, tmp_path: Path) -> None:
    ns = netns.make_netns()
    pki = certs / "pki"
    agent = AgentProcess(
        ns, tmp_path, netns.pin_dir(), "--listen", ADDR, "--tls-cert", str(pki / "server.pem"),
        "--tls-key", str(pki / "server.key"), "--tls-client-ca", str(pki / "ca.pem"),
    )
    agent.start()
    try:
        with entered(ns):  # the listener is on the namespace's loopback
            async def as_admin() -> tuple[int, int]:
                async with _client(certs, "admin") as c:
                    rev = await c.apply_policy(POLICY)
                    return rev, (await c.get_policy()).revision

            rev, seen = anyio.run(as_admin)
            assert rev == seen == 1

            async def as_reader() -> GRPCError:
                async with _client(certs, "reader") as c:
                    assert (await c.get_policy()).revision == 1  # reads work
                    assert await c.list_interfaces() is not None
                    with pytest.raises(GRPCError) as info:
                        await c.apply_policy(POLICY)
                    return info.value

            denied = anyio.run(as_reader)
            assert denied.status == Status.PERMISSION_DENIED, denied
            assert "ApplyPolicy" in (denied.message or "")

            for who, ca in [(None, "pki"), ("admin", "other")]:
                async def refused(who: str | None = who, ca: str = ca) -> None:
                    async with _client(certs, who, ca) as c:
                        await c.get_policy()

                # The handshake fails: the client sees the connection dropped.
                with pytest.raises((ssl.SSLError, OSError, StreamTerminatedError)):
                    anyio.run(refused)

            async def revision() -> int:
                async with _client(certs, "reader") as c:
                    return (await c.get_policy()).revision

            assert anyio.run(revision) == 1  # the refused write changed nothing
    finally:
        assert agent.stop() == 0, agent.log()[-3000:]


def test_listen_without_tls_refuses_to_start(netns: Netns, tmp_path: Path) -> None:
    ns = netns.make_netns()
    agent = AgentProcess(ns, tmp_path, netns.pin_dir(), "--listen", ADDR)
    with pytest.raises(RuntimeError) as info:
        agent.start()
    assert "--tls-cert" in str(info.value) and "--tls-client-ca" in str(info.value)
    assert agent.proc is not None and agent.proc.returncode == 1
