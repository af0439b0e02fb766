"""fwd, driven through its public Python surface only.

Two ways in, both isolated here so a change of the classifier's maps or
compiler touches one function each:

* :class:`Plane` (per-packet cost): the compiled object loaded in this process,
  policies installed the way the agent's Datapath does it (and the way
  ``tests/bpf/test_dataplane.py``'s ``Plane`` does): ``Engine.apply`` compiles
  the change, ``Dataplane.commit`` writes the inactive generation, flips it and
  waits for the RCU barrier. :meth:`Plane.install` is the one
  "install a policy of N rules" step.
* :class:`Agent` (veth drop rate): the real ``fwd agent`` process in the
  receiving namespace (``tests/e2e/agentproc.py``), policies applied and
  counters read over gRPC (``fwd.api.client.Client``).
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path
from typing import Any

import anyio

from fwd.api.client import Client
from fwd.kernel.objects import BpfObject, Program
from fwd.kernel.rcu import RcuBarrier
from fwd.kernel.dataplane import Dataplane
from fwd.policy.engine import Engine
from fwd.policy.model import policy_from_dict
from tests.e2e.agentproc import AgentProcess
from tests.netns import Netns, bpffs

ROOT = Path(__file__).resolve().parents[2]
OBJECT = ROOT / "bpf/build/fwd.bpf.o"
LO = 1  # test runs without an xdp_md context see ingress_ifindex 1 (lo)


def build_object() -> Path:
    """``make -C bpf`` (a no-op when up to date); returns the object's path."""
    subprocess.run(["make", "-s", "-C", str(ROOT / "bpf")], check=True)
    return OBJECT


class Plane:
    """A loaded fwd object with an Engine and a Dataplane, as the Datapath actor builds them
    (and as ``tests/bpf/test_dataplane.py``'s ``Plane`` does). Close it when done."""

    def __init__(self) -> None:
        self.obj = BpfObject.open(build_object())
        try:
            self.obj.load()
            self.prog: Program = self.obj.program("fwd_xdp")
            maps = self.obj.maps()
            self.barrier = RcuBarrier()
            self.dp = Dataplane(maps, maps["fwd_counters"].ncpus, self.barrier)
            self.engine = Engine()
        except BaseException:
            self.obj.close()
            raise

    @property
    def slots(self) -> dict[str, int]:
        """Counter slot of each rule id of the enforced policy."""
        return self.engine.slots

    def install(self, raw_policy: dict[str, Any]) -> None:
        """Compile and install a policy (as a policy file's dict) atomically.

        Raises what the agent would answer with (``fwd.errors.FwdError``: e.g. a
        CapacityError when the policy does not fit); the enforced policy stays.
        """
        pending = self.engine.apply(policy_from_dict(raw_policy), ifindexes={"lo": LO})
        try:
            self.dp.commit(pending.commit)
        except BaseException:
            pending.abort()
            raise
        pending.finish()

    def packets(self, rule_id: str | None) -> int:
        """Packets counted for ``rule_id`` (None: the default action's slot)."""
        slot = 0 if rule_id is None else self.slots[rule_id]  # FWD_SLOT_DEFAULT = 0
        return self.dp.read_counters([slot])[slot].packets

    def close(self) -> None:
        self.barrier.close()
        self.obj.close()


class Agent:
    """``fwd agent`` in namespace ``ns`` managing ``dev`` only; stop() it when done."""

    def __init__(self, net: Netns, ns: str, dev: str) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="fwdb-agent-")
        build_object()
        # Pins under /sys/fs/bpf/<ns>-pins (ns is fwdb-<pid>-<n>); Netns.cleanup removes it.
        pins = bpffs() / f"{ns}-pins"
        net.pin_dirs.append(pins)
        pins.mkdir()
        self.proc = AgentProcess(ns, Path(self._tmp.name), pins, "--include", dev)

    def start(self) -> None:
        self.proc.start(timeout=30)

    def _call(self, fn: Any) -> Any:
        async def go() -> Any:
            async with Client(self.proc.socket, timeout=120) as client:
                return await fn(client)

        return anyio.run(go)

    def apply(self, raw_policy: dict[str, Any]) -> int:
        """Apply a policy over gRPC (the one "install N rules" step); returns the revision."""
        policy = policy_from_dict(raw_policy)
        return int(self._call(lambda c: c.apply_policy(policy)))

    def packets(self, rule_id: str) -> int:
        """Packets the agent reports for ``rule_id`` (per-rule counters, over gRPC)."""
        stats = self._call(lambda c: c.list_rule_stats())
        return sum(s.packets for s in stats if s.rule_id == rule_id)

    def attach_mode(self, dev: str) -> str:
        """The XDP mode the agent reports for ``dev``."""
        for iface in self._call(lambda c: c.list_interfaces()):
            if iface.name == dev:
                return str(iface.mode.name if hasattr(iface.mode, 'name') else iface.mode)
        return "absent"

    def stop(self) -> None:
        try:
            if self.proc.proc is not None:
                self.proc.stop()
        finally:
            self._tmp.cleanup()
