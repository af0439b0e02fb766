"""The agent as a real process inside a test namespace, plus traffic helpers.

The agent is started with ``nsenter --net`` (not ``ip netns exec``), so it keeps
the host's mount namespace: its pins go to the real /sys/fs/bpf, where the test
can check and remove them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.netns import Netns, run, run_in

ROOT = Path(__file__).resolve().parents[2]
UDP = str(ROOT / "contrib" / "udp.py")


class AgentProcess:
    """One ``fwd agent`` in namespace ``ns`` with its own socket, state dir and pins."""

    def __init__(
        self, ns: str, workdir: Path, pin_dir: Path, *extra: str, env: dict[str, str] | None = None
    ) -> None:
        self.ns = ns
        self.socket = str(workdir / "fwd.sock")
        self.state_dir = workdir / "state"
        self.pin_dir = pin_dir
        self.log_path = workdir / "agent.log"
        self.extra = extra
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 15.0) -> None:
        argv = [
            "nsenter", f"--net=/run/netns/{self.ns}", sys.executable, "-m", "fwd", "agent",
            "--socket", self.socket, "--state-dir", str(self.state_dir),
            "--bpffs", str(self.pin_dir), "--log-level", "debug", *self.extra,
        ]
        # A restart appends to the log and may find the socket a SIGKILLed agent
        # left behind: only this start's "agent_ready" counts.
        offset = len(self.log())
        with open(self.log_path, "ab") as log:
            env = {**os.environ, **self.env} if self.env else None
            self.proc = subprocess.Popen(argv, stdout=log, stderr=log, cwd=ROOT, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"agent exited {self.proc.returncode}:\n{self.log()}")
            if os.path.exists(self.socket) and "agent_ready" in self.log()[offset:]:
                return
            time.sleep(0.05)
        raise RuntimeError(f"agent not ready after {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        """Signal the agent (by PID) and wait for it; returns its exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


def udp_count(
    net: Netns, receiver_ns: str, bind: str, ports: list[int],
    senders: list[tuple[str, str, int, int]], seconds: float = 3.0,
) -> dict[int, int]:
    """Start a receiver, send ``(ns, dst, port, count)`` bursts, return datagrams per port."""
    expect = sum(c for *_, c in senders)
    recv = subprocess.Popen(
        ["ip", "netns", "exec", receiver_ns, sys.executable, UDP, "recv", "--bind", bind,
         "--ports", ",".join(map(str, ports)), "--seconds", str(seconds), "--expect", str(expect)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert recv.stderr is not None
        assert recv.stderr.readline().strip() == "ready"
        for ns, dst, port, count in senders:
            run_in(ns, [sys.executable, UDP, "send", "--to", dst, "--port", str(port),
                        "--count", str(count), "--interval", "0.0005"])
        out, _ = recv.communicate(timeout=seconds + 10)
    finally:
        if recv.poll() is None:
            recv.kill()
            recv.wait()
    return {int(k): v for k, v in json.loads(out).items()}


def xdp_prog_id(ns: str, dev: str) -> int:
    """The XDP program id the kernel reports for ``dev`` (0 if none)."""
    info = json.loads(run(["ip", "-n", ns, "-j", "-d", "link", "show", "dev", dev]).stdout)[0]
    xdp = info.get("xdp") or {}
    if "prog" in xdp:
        return int(xdp["prog"]["id"])
    for attached in xdp.get("attached", []):
        return int(attached["prog"]["id"])
    return 0


def stop_lab(agent: AgentProcess | None, net: Netns) -> None:
    """A lab fixture's teardown: the agent (if it started) exits 0, every namespace,
    link and pin the lab made is gone."""
    if agent is not None and agent.proc is not None:
        code = agent.stop()
        assert code == 0, f"agent exit {code}:\n{agent.log()[-4000:]}"
    errors = net.cleanup()
    assert not errors, errors
