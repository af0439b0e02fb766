"""The engines fwd is compared with: xdp-filter (xdp-tools) and nftables.

xdp-filter pins its maps and programs at the fixed path ``/sys/fs/bpf/xdp-filter``.
To keep the host's bpffs untouched (and never collide with another user of
xdp-filter), every xdp-filter command runs in a private mount namespace held by
a small process (:class:`XdpFilter`) that mounts its own bpffs instance on
/sys/fs/bpf: the pins live and die with that instance. The holder reads its
stdin, so it exits when this process dies, even if it is killed.
xdp-filter is loaded with ``LIBXDP_SKIP_DISPATCHER=1`` so its program is
attached directly (no libxdp dispatcher in front) and can be test-run by id.

Filling xdp-filter with thousands of addresses one ``xdp-filter ip`` process at a
time would take minutes; the addresses go into its ``filter_ipv4`` map in one
batch instead, in the format ``xdp-filter ip`` writes (checked against
``xdp-filter status``). Its ports are added with ``xdp-filter port``.
"""

from __future__ import annotations

import ipaddress
import json
import re
import subprocess
from collections.abc import Iterable, Sequence

from bench.dataplane.kernel import map_by_id, program_by_id
from fwd.kernel.maps import Map
from fwd.kernel.objects import Program
from tests.e2e.agentproc import xdp_prog_id
from tests.netns import run

# xdp-filter/common_kern_user.h (xdp-tools 1.3.1)
MAP_FLAG_SRC = 1 << 0


class XdpFilter:
    """xdp-filter on ``dev`` in namespace ``ns``; close() unloads it and its bpffs."""

    def __init__(self, ns: str, dev: str) -> None:
        self.ns, self.dev = ns, dev
        self._holder = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c",
             "mount -t bpf bpf /sys/fs/bpf && echo ready && exec cat >/dev/null"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        assert self._holder.stdout is not None
        if self._holder.stdout.readline().strip() != "ready":
            self.close()
            raise RuntimeError("cannot make a private bpffs for xdp-filter")
        self._prog: Program | None = None
        self._maps: dict[str, Map] = {}
        self._addresses = 0

    def cmd(self, *args: str) -> str:
        """Run ``xdp-filter args...`` in the receiving namespace and the private bpffs."""
        argv = ["nsenter", "-t", str(self._holder.pid), "-m", f"--net=/run/netns/{self.ns}",
                "env", "LIBXDP_SKIP_DISPATCHER=1", "xdp-filter", *args]
        return run(argv, timeout=60).stdout

    def load(self, ports: Sequence[int]) -> None:
        """Load in native mode (default policy allow: the lists are deny lists), add ports."""
        self.cmd("load", "--mode", "native", self.dev)
        for port in ports:
            self.cmd("port", str(port), "--mode", "dst", "--proto", "tcp,udp")
        prog_id = xdp_prog_id(self.ns, self.dev)
        if not prog_id:
            raise RuntimeError(f"xdp-filter is not attached to {self.dev}")
        self._prog = program_by_id(prog_id)
        info = json.loads(run(["bpftool", "-j", "prog", "show", "id", str(prog_id)]).stdout)
        for map_id in info.get("map_ids", []):
            m = map_by_id(int(map_id))
            self._maps[m.name] = m

    @property
    def prog(self) -> Program:
        if self._prog is None:
            raise RuntimeError("xdp-filter not loaded")
        return self._prog

    @property
    def max_addresses(self) -> int:
        return self._maps["filter_ipv4"].max_entries

    def set_addresses(self, addresses: Iterable[str]) -> int:
        """Make the deny list hold exactly ``addresses`` (a prefix-growing sequence)."""
        m = self._maps["filter_ipv4"]
        wanted = [ipaddress.IPv4Address(a).packed for a in addresses]
        if len(wanted) > m.max_entries:
            raise ValueError(f"xdp-filter holds at most {m.max_entries} IPv4 addresses")
        if len(wanted) < self._addresses:
            raise ValueError("the deny list only grows in this benchmark")
        new = wanted[self._addresses:]
        value = MAP_FLAG_SRC.to_bytes(8, "little") * m.ncpus
        m.update_batch(b"".join(new), value * len(new), len(new))
        self._addresses = len(wanted)
        return self._addresses

    def listed(self, address: str) -> bool:
        """Whether ``xdp-filter status`` lists ``address`` as a source entry (format check)."""
        return re.search(rf"^\s*{re.escape(address)}\s+src\b", self.cmd("status"), re.M) is not None

    def drops(self) -> int:
        """Packets xdp-filter dropped, from ``xdp-filter status``."""
        found = re.search(r"XDP_DROP\s+(\d+) pkts", self.cmd("status"))
        if found is None:
            raise RuntimeError("no XDP_DROP line in xdp-filter status")
        return int(found.group(1))

    def close(self) -> None:
        for m in self._maps.values():
            m.close()
        self._maps.clear()
        if self._prog is not None:
            self._prog.close()
            self._prog = None
            subprocess.run(
                ["nsenter", "-t", str(self._holder.pid), "-m", f"--net=/run/netns/{self.ns}",
                 "xdp-filter", "unload", self.dev],
                capture_output=True, timeout=30, check=False,
            )
        if self._holder.poll() is None:
            assert self._holder.stdin is not None
            self._holder.stdin.close()  # cat exits; the mount namespace and its bpffs go
            try:
                self._holder.wait(10)
            except subprocess.TimeoutExpired:
                self._holder.kill()
                self._holder.wait(5)


class Nftables:
    """An nftables table in namespace ``ns`` (netdev family, ingress hook)."""

    def __init__(self, ns: str, table: str) -> None:
        self.ns, self.table = ns, table
        self.loaded = False

    def _nft(self, *args: str, script: str | None = None) -> str:
        argv = ["nsenter", f"--net=/run/netns/{self.ns}", "nft", *args]
        proc = subprocess.run(argv, input=script, capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            raise RuntimeError(f"nft {' '.join(args)} failed: {proc.stderr.strip()[:2000]}")
        return proc.stdout

    def load(self, script: str) -> None:
        """Load ``script`` (one transaction)."""
        self.loaded = True
        self._nft("-f", "-", script=script)

    def counter(self) -> int:
        """Packets of the table's counters, summed (each script has exactly one)."""
        out = json.loads(self._nft("-j", "list", "table", "netdev", self.table))
        total = 0
        for item in out.get("nftables", []):
            rule = item.get("rule")
            if rule is None:
                continue
            for expr in rule.get("expr", []):
                if "counter" in expr:
                    total += int(expr["counter"]["packets"])
        return total

    def delete(self) -> None:
        if self.loaded:
            self.loaded = False
            self._nft("delete", "table", "netdev", self.table)
