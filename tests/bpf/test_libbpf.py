"""The ctypes libbpf layer against the real kernel: objects, maps, test runs, XDP links.

The BPF programs are written and compiled here (clang -target bpf), so these
tests do not depend on the data plane in bpf/.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import struct
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from fwd.kernel import libbpf
from fwd.kernel.maps import map_from_pinned
from fwd.kernel.objects import BpfObject, Program
from fwd.kernel.objpath import default_object_path
from fwd.kernel.xdp import XdpLink, attach_xdp, attach_xdp_best, query_xdp
from fwd.errors import BpfError, LinkError
from fwd.messages import AttachMode
from tests.netns import bpffs

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(shutil.which("clang") is None, reason="needs clang"),
]

XDP_DROP, XDP_PASS, XDP_TX = 1, 2, 3
TAG = f"fwdh2-{os.getpid()}"
T = TypeVar("T")

SOURCE = r"""
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct { __uint(type, BPF_MAP_TYPE_HASH); __uint(max_entries, 1);
         __type(key, __u32); __type(value, __u64); } hmap SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_ARRAY); __uint(max_entries, 64);
         __type(key, __u32); __type(value, __u64); } amap SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY); __uint(max_entries, 4);
         __type(key, __u32); __type(value, __u32); } pcpu SEC(".maps");
struct wide { __u8 b[12]; };
struct { __uint(type, BPF_MAP_TYPE_HASH); __uint(max_entries, 4096);
         __type(key, struct wide); __type(value, __u32); } wmap SEC(".maps");
struct lpm_v4 { __u32 prefixlen; __u8 addr[4]; };
struct { __uint(type, BPF_MAP_TYPE_LPM_TRIE); __uint(max_entries, 1024);
         __uint(map_flags, BPF_F_NO_PREALLOC);
         __type(key, struct lpm_v4); __type(value, __u32); } lpm SEC(".maps");

SEC("xdp") int xdp_drop(struct xdp_md *ctx) { return XDP_DROP; }

/* The verdict stored under the ingress ifindex, else XDP_PASS; counts runs per CPU. */
SEC("xdp") int xdp_lookup(struct xdp_md *ctx)
{
    __u32 key = ctx->ingress_ifindex, zero = 0;
    __u32 *runs = bpf_map_lookup_elem(&pcpu, &zero);
    if (runs)
        *runs += 1;
    __u64 *v = bpf_map_lookup_elem(&hmap, &key);
    return v ? (int)*v : XDP_PASS;
}

/* Swap nothing, mark the first byte: proves data_out is the program's output. */
SEC("xdp") int xdp_mark(struct xdp_md *ctx)
{
    __u8 *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
    if (data + 1 > end)
        return XDP_ABORTED;
    data[0] = 0xaa;
    return XDP_TX;
}

char LICENSE[] SEC("license") = "GPL";
"""


@pytest.fixture(scope="module")
def obj_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("bpf")
    src, out = d / "t.bpf.c", d / "t.bpf.o"
    src.write_text(SOURCE)
    arch_inc = f"/usr/include/{os.uname().machine}-linux-gnu"
    subprocess.run(
        [
            "clang",
            "-O2",
            "-g",
            "-Wall",
            "-target",
            "bpf",
            f"-I{arch_inc}",
            "-c",
            str(src),
            "-o",
            str(out),
        ],
        check=True,
    )
    return out


@pytest.fixture
def obj(obj_path: Path) -> Iterator[BpfObject]:
    o = BpfObject.open(obj_path)
    o.set_max_entries("hmap", 20000)
    o.load()
    with o:
        yield o


@pytest.fixture
def pin_dir() -> Iterator[Path]:
    d = bpffs() / f"fwd-test-{os.getpid()}"
    d.mkdir()
    try:
        yield d
    finally:
        for p in d.iterdir():
            p.unlink()
        d.rmdir()


def u32(n: int) -> bytes:
    return struct.pack("=I", n)


def u64(n: int) -> bytes:
    return struct.pack("=Q", n)


PACKET = bytes(range(64))


# --- objects -------------------------------------------------------------------


def test_open_load_close_and_use_after_close(obj_path: Path) -> None:
    o = BpfObject.open(obj_path)
    assert not o.loaded
    assert set(o.programs()) == {"xdp_drop", "xdp_lookup", "xdp_mark"}
    assert {"hmap", "amap", "pcpu", "wmap", "lpm"} <= set(o.maps())
    o.set_max_entries("hmap", 777)
    o.load()
    prog, m = o.program("xdp_drop"), o.map("hmap")
    assert prog.fd >= 0 and prog.id > 0 and m.max_entries == 777
    with pytest.raises(BpfError) as ei:
        o.set_max_entries("hmap", 5)  # too late: the map exists
    assert ei.value.errno == errno.EBUSY
    o.close()
    o.close()  # idempotent
    for use in (
        lambda: prog.fd,
        lambda: m.lookup(u32(1)),
        lambda: o.map("hmap"),
        o.load,
    ):
        with pytest.raises(BpfError, match="closed"):
            use()


def test_open_missing_file_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.bpf.o"
    with pytest.raises(BpfError, match="nope.bpf.o") as ei:
        BpfObject.open(missing)
    assert ei.value.errno == errno.ENOENT


def test_unknown_program_and_map_raise(obj: BpfObject) -> None:
    with pytest.raises(BpfError, match="no_such_prog"):
        obj.program("no_such_prog")
    with pytest.raises(BpfError, match="no_such_map"):
        obj.map("no_such_map")


def test_default_object_path(
    monkeypatch: pytest.MonkeyPatch, obj_path: Path, tmp_path: Path
) -> None:
    monkeypatch.setenv("FWD_BPF_OBJECT", str(obj_path))
    assert default_object_path() == obj_path
    monkeypatch.setenv("FWD_BPF_OBJECT", str(tmp_path / "missing.o"))
    with pytest.raises(BpfError, match="FWD_BPF_OBJECT"):
        default_object_path()


# --- maps ------------------------------------------------------------------------


def test_map_shape(obj: BpfObject) -> None:
    h, p = obj.map("hmap"), obj.map("pcpu")
    assert (h.type, h.key_size, h.value_size, h.max_entries) == (
        libbpf.BPF_MAP_TYPE_HASH,
        4,
        8,
        20000,
    )
    assert not h.percpu and h.value_bytes == 8 and h.id > 0
    assert p.percpu and p.ncpus == os.cpu_count() and p.value_size == 4
    assert p.value_bytes == p.ncpus * 8  # 4-byte values, each CPU slot rounded up to 8


def test_update_lookup_delete(obj: BpfObject) -> None:
    m = obj.map("hmap")
    assert m.lookup(u32(7)) is None
    m.update(u32(7), u64(99))
    assert m.lookup(u32(7)) == u64(99)
    with pytest.raises(BpfError) as ei:
        m.update(u32(7), u64(1), libbpf.BPF_NOEXIST)
    assert ei.value.errno == errno.EEXIST
    assert list(m.keys()) == [u32(7)]
    assert m.delete(u32(7)) is True
    assert m.delete(u32(7)) is False
    assert m.lookup(u32(7)) is None


def test_wrong_sizes_raise_value_error_before_the_kernel(obj: BpfObject) -> None:
    m = obj.map("hmap")
    with pytest.raises(ValueError, match="4 key bytes"):
        m.lookup(b"\x01\x00")
    with pytest.raises(ValueError, match="value bytes"):
        m.update(u32(1), u32(1))
    with pytest.raises(ValueError):
        m.update_batch(u32(1) * 3, u64(1) * 2, 3)


def test_hash_batches_10k(obj: BpfObject) -> None:
    m = obj.map("hmap")
    n = 10_000
    keys = b"".join(u32(i) for i in range(n))
    values = b"".join(u64(i * 3) for i in range(n))
    m.update_batch(keys, values, n)
    got = dict(m.lookup_batch(chunk=1000))
    assert len(got) == n
    assert got == {u32(i): u64(i * 3) for i in range(n)}
    assert len(set(m.keys())) == n
    m.delete_batch(keys[: 4 * 6000], 6000)
    rest = dict(m.lookup_batch())
    assert set(rest) == {u32(i) for i in range(6000, n)}
    with pytest.raises(BpfError, match="bpf_map_delete_batch") as ei:
        m.delete_batch(u32(1), 1)  # already gone
    assert ei.value.errno == errno.ENOENT


def test_wide_key_hash_batch(obj: BpfObject) -> None:
    # A 12-byte key: the cursor is still a u32 bucket index for hashes.
    m = obj.map("wmap")
    n = 3000
    keys = b"".join(struct.pack("=III", i, ~i & 0xFFFFFFFF, 7) for i in range(n))
    m.update_batch(keys, b"".join(u32(i) for i in range(n)), n)
    got = dict(m.lookup_batch(chunk=100))
    assert len(got) == n and got[keys[12 * 5 : 12 * 6]] == u32(5)


def test_array_batches(obj: BpfObject) -> None:
    m = obj.map("amap")
    keys = b"".join(u32(i) for i in range(64))
    m.update_batch(keys, b"".join(u64(1000 + i) for i in range(64)), 64)
    got = list(m.lookup_batch(chunk=10))
    assert got == [(u32(i), u64(1000 + i)) for i in range(64)]
    with pytest.raises(BpfError) as ei:
        m.delete_batch(keys[:4], 1)  # arrays cannot delete: no batch op, and no elem op
    assert ei.value.errno == errno.EINVAL and "bpf_map_delete_elem" in str(ei.value)


def test_lpm_update_batch(obj: BpfObject) -> None:
    m = obj.map("lpm")
    prefixes = [(24, bytes([198, 18, i, 0])) for i in range(100)]
    m.update_batch(
        b"".join(u32(p) + a for p, a in prefixes),
        b"".join(u32(i) for i in range(100)),
        100,
    )
    assert m.lookup(u32(32) + bytes([198, 18, 42, 9])) == u32(
        42
    )  # longest-prefix match
    assert m.lookup(u32(32) + bytes([198, 19, 0, 1])) is None


def test_percpu_lookup(obj: BpfObject) -> None:
    prog, p = obj.program("xdp_lookup"), obj.map("pcpu")
    prog.test_run(PACKET, repeat=5)
    raw = p.lookup(u32(0))
    assert raw is not None and len(raw) == p.ncpus * 8
    assert sum(struct.unpack_from("=I", raw, 8 * c)[0] for c in range(p.ncpus)) == 5


def test_map_pin_and_open_pinned(obj: BpfObject, pin_dir: Path) -> None:
    m = obj.map("hmap")
    m.update(u32(3), u64(33))
    m.pin(pin_dir / "hmap")
    with map_from_pinned(pin_dir / "hmap") as pinned:
        assert (
            pinned.key_size == 4
            and pinned.value_size == 8
            and pinned.max_entries == 20000
        )
        assert pinned.id == m.id and pinned.lookup(u32(3)) == u64(33)
    with pytest.raises(BpfError, match="closed"):
        pinned.lookup(u32(3))
    m.unpin()
    assert not (pin_dir / "hmap").exists()


# --- test runs -------------------------------------------------------------------


def test_test_run_retval_duration_and_data_out(obj: BpfObject) -> None:
    r = obj.program("xdp_drop").test_run(PACKET, repeat=1000)
    assert r.retval == XDP_DROP and r.duration_ns > 0 and r.data_out == PACKET
    r = obj.program("xdp_mark").test_run(PACKET)
    assert r.retval == XDP_TX and r.data_out == b"\xaa" + PACKET[1:]
    assert obj.program("xdp_mark").test_run(PACKET, data_out_size=0).data_out == b""
    with pytest.raises(BpfError) as ei:
        obj.program("xdp_mark").test_run(PACKET, data_out_size=10)
    assert ei.value.errno == errno.ENOSPC


def test_test_run_ingress_ifindex(obj: BpfObject, netns: str) -> None:
    # The ifindex must exist in the caller's namespace; without a context the
    # kernel runs the program as if it came in on lo (ifindex 1).
    prog, m = obj.program("xdp_lookup"), obj.map("hmap")
    va = ifindex(netns, "va")
    m.update(u32(1), u64(XDP_DROP))
    m.update(u32(va), u64(XDP_TX))
    assert prog.test_run(PACKET).retval == XDP_DROP
    assert (
        in_netns(netns, lambda: prog.test_run(PACKET, ingress_ifindex=va)).retval
        == XDP_TX
    )
    m.delete(u32(va))
    assert (
        in_netns(netns, lambda: prog.test_run(PACKET, ingress_ifindex=va)).retval
        == XDP_PASS
    )


def test_program_pin_from_pinned(obj: BpfObject, pin_dir: Path) -> None:
    prog = obj.program("xdp_drop")
    prog.pin(pin_dir / "prog")
    with Program.from_pinned(pin_dir / "prog") as p2:
        assert p2.id == prog.id and p2.name == "xdp_drop"
        assert p2.test_run(PACKET).retval == XDP_DROP
    prog.unpin()


# --- XDP attach in a throwaway namespace -------------------------------------------


def ip(*args: str) -> str:
    r = subprocess.run(["ip", *args], check=False, capture_output=True, text=True)
    assert r.returncode == 0, f"ip {' '.join(args)}: {r.stderr.strip()}"
    return r.stdout


def xdp_state(ns: str, dev: str) -> dict[str, Any]:
    """The IFLA_XDP part of `ip -d link show` (mode, prog id), {} when nothing is attached."""
    (link,) = json.loads(ip("-n", ns, "-j", "-d", "link", "show", "dev", dev))
    xdp = link.get("xdp", {})
    assert isinstance(xdp, dict)
    return xdp


@pytest.fixture
def netns() -> Iterator[str]:
    from pyroute2 import netns as pnetns

    name = f"{TAG}-a"
    ip("netns", "add", name)
    try:
        ip("-n", name, "link", "add", "va", "type", "veth", "peer", "name", "vb")
        # A bridge has no native XDP (and dummy is not built in this kernel).
        ip("-n", name, "link", "add", "br0", "type", "bridge")
        for dev in ("va", "vb", "br0"):
            ip("-n", name, "link", "set", dev, "up")
        yield name
    finally:
        # Deleting the namespace deletes its links; pinned links then go defunct.
        pnetns.remove(name)


def in_netns(name: str, fn: Callable[[], T]) -> T:
    """Run fn() with this thread in netns ``name``: ifindexes are per namespace."""
    from pyroute2 import netns as pnetns

    pnetns.pushns(name)
    try:
        return fn()
    finally:
        pnetns.popns()


def ifindex(ns: str, dev: str) -> int:
    (link,) = json.loads(ip("-n", ns, "-j", "link", "show", "dev", dev))
    return int(link["ifindex"])


def test_attach_native_pin_survives_close(
    obj: BpfObject, netns: str, pin_dir: Path
) -> None:
    prog, idx = obj.program("xdp_drop"), ifindex(netns, "va")
    link = in_netns(netns, lambda: attach_xdp(prog, idx, AttachMode.NATIVE))
    try:
        state = xdp_state(netns, "va")
        assert state["mode"] == libbpf.XDP_ATTACHED_DRV
        assert state["prog"]["id"] == prog.id
        assert (link.prog_id, link.ifindex, link.mode) == (
            prog.id,
            idx,
            AttachMode.NATIVE,
        )
        assert in_netns(netns, lambda: query_xdp(idx)) == (prog.id, AttachMode.NATIVE)
        link.pin(pin_dir / "link")
        link_id, prog_id = link.id, prog.id
    finally:
        link.close()
    with pytest.raises(BpfError, match="closed"):
        _ = link.id
    obj.close()  # neither the link fd nor the object is needed: the pin holds it
    assert prog_id_of(netns, "va") == prog_id
    assert xdp_state(netns, "va")["mode"] == libbpf.XDP_ATTACHED_DRV

    adopted = XdpLink.open_pinned(pin_dir / "link")
    with adopted:
        assert adopted.id == link_id and adopted.ifindex == idx
        adopted.detach()
        assert adopted.ifindex == 0
        adopted.unpin()
    assert xdp_state(netns, "va") == {}
    assert not (pin_dir / "link").exists()


def prog_id_of(ns: str, dev: str) -> int:
    state = xdp_state(ns, dev)
    assert state, f"no XDP program on {dev}"
    return int(state["prog"]["id"])


def test_unpinned_link_detaches_on_close(obj: BpfObject, netns: str) -> None:
    idx = ifindex(netns, "vb")
    with in_netns(
        netns, lambda: attach_xdp(obj.program("xdp_drop"), idx, AttachMode.NATIVE)
    ):
        assert prog_id_of(netns, "vb") == obj.program("xdp_drop").id
    assert xdp_state(netns, "vb") == {}


def test_generic_attach_and_best_mode(obj: BpfObject, netns: str) -> None:
    prog = obj.program("xdp_drop")
    br0, va = ifindex(netns, "br0"), ifindex(netns, "va")
    with in_netns(netns, lambda: attach_xdp(prog.fd, br0, AttachMode.GENERIC)):
        assert xdp_state(netns, "br0")["mode"] == libbpf.XDP_ATTACHED_SKB
        assert prog_id_of(netns, "br0") == prog.id
        assert in_netns(netns, lambda: query_xdp(br0)) == (prog.id, AttachMode.GENERIC)
    assert in_netns(netns, lambda: query_xdp(br0)) == (0, AttachMode.NONE)

    # A bridge has no native XDP: best falls back to generic; veth takes native.
    link, mode = in_netns(netns, lambda: attach_xdp_best(prog, br0))
    with link:
        assert mode == AttachMode.GENERIC and prog_id_of(netns, "br0") == prog.id
    link, mode = in_netns(netns, lambda: attach_xdp_best(prog, va))
    with link:
        assert (
            mode == AttachMode.NATIVE
            and xdp_state(netns, "va")["mode"] == libbpf.XDP_ATTACHED_DRV
        )


def test_attach_errors(obj: BpfObject, netns: str) -> None:
    prog = obj.program("xdp_drop")
    missing = 999_999
    with pytest.raises(LinkError, match="native: .*generic: "):
        in_netns(netns, lambda: attach_xdp_best(prog, missing))
    with pytest.raises(LinkError) as ei:
        in_netns(
            netns, lambda: attach_xdp(prog, ifindex(netns, "br0"), AttachMode.NATIVE)
        )
    assert isinstance(ei.value.__cause__, BpfError) and ei.value.__cause__.errno != 0
    with pytest.raises(ValueError):
        attach_xdp(prog, 1, AttachMode.NONE)


def test_verifier_rejection_is_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Reads a packet byte without a bounds check: the verifier refuses, and its
    # log (forwarded by the print callback, not cut short) says why.
    src, out = tmp_path / "bad.bpf.c", tmp_path / "bad.bpf.o"
    src.write_text(
        "#include <linux/bpf.h>\n#include <bpf/bpf_helpers.h>\n"
        'SEC("xdp") int xdp_bad(struct xdp_md *ctx)\n'
        "{ return *(unsigned char *)(long)ctx->data; }\n"
        'char LICENSE[] SEC("license") = "GPL";\n'
    )
    arch_inc = f"/usr/include/{os.uname().machine}-linux-gnu"
    subprocess.run(
        [
            "clang",
            "-O2",
            "-g",
            "-target",
            "bpf",
            f"-I{arch_inc}",
            "-c",
            str(src),
            "-o",
            str(out),
        ],
        check=True,
    )
    caplog.set_level("DEBUG", logger="fwd.kernel.libbpf")
    with (
        BpfObject.open(out) as o,
        pytest.raises(BpfError, match="bpf_object__load") as ei,
    ):
        o.load()
    assert ei.value.errno == errno.EACCES
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "invalid access to packet" in text and "END PROG LOAD LOG" in text
