"""libbpf 1.1's option and info structs, as ctypes mirrors (declared by fwd.kernel.libbpf).

Options structs carry their own size in ``sz`` (set by :func:`new_opts`); every
size is asserted at import, so a layout mistake fails here and not inside the
kernel.
"""

from __future__ import annotations

import ctypes
from ctypes import Structure, c_char, c_int, c_size_t, c_uint8, c_uint32, c_uint64, c_void_p
from typing import TypeVar


class TestRunOpts(Structure):
    """struct bpf_test_run_opts (libbpf 1.1.2 bpf.h)."""

    _fields_ = [
        ("sz", c_size_t),
        ("data_in", c_void_p),
        ("data_out", c_void_p),
        ("data_size_in", c_uint32),
        ("data_size_out", c_uint32),
        ("ctx_in", c_void_p),
        ("ctx_out", c_void_p),
        ("ctx_size_in", c_uint32),
        ("ctx_size_out", c_uint32),
        ("retval", c_uint32),
        ("repeat", c_int),
        ("duration", c_uint32),
        ("flags", c_uint32),
        ("cpu", c_uint32),
        ("batch_size", c_uint32),
    ]


class _KprobeMulti(Structure):
    _fields_ = [
        ("flags", c_uint32),
        ("cnt", c_uint32),
        ("syms", c_void_p),
        ("addrs", c_void_p),
        ("cookies", c_void_p),
    ]


class LinkCreateOpts(Structure):
    """struct bpf_link_create_opts (libbpf 1.1.2 bpf.h).

    The trailing union (perf_event / kprobe_multi / tracing) is represented by
    its largest member so the size matches; XDP only uses ``flags``.
    """

    _fields_ = [
        ("sz", c_size_t),
        ("flags", c_uint32),
        ("iter_info", c_void_p),
        ("iter_info_len", c_uint32),
        ("target_btf_id", c_uint32),
        ("kprobe_multi", _KprobeMulti),
    ]


class MapCreateOpts(Structure):
    """struct bpf_map_create_opts (libbpf 1.1)."""

    _fields_ = [
        ("sz", c_size_t),
        ("btf_fd", c_uint32),
        ("btf_key_type_id", c_uint32),
        ("btf_value_type_id", c_uint32),
        ("btf_vmlinux_value_type_id", c_uint32),
        ("inner_map_fd", c_uint32),
        ("map_flags", c_uint32),
        ("map_extra", c_uint64),
        ("numa_node", c_uint32),
        ("map_ifindex", c_uint32),
    ]


class MapBatchOpts(Structure):
    """struct bpf_map_batch_opts (libbpf 1.1.2 bpf.h)."""

    _fields_ = [("sz", c_size_t), ("elem_flags", c_uint64), ("flags", c_uint64)]


class XdpQueryOpts(Structure):
    """struct bpf_xdp_query_opts (libbpf 1.1.2 libbpf.h); ``size_t :0`` pads it to 32."""

    _fields_ = [
        ("sz", c_size_t),
        ("prog_id", c_uint32),
        ("drv_prog_id", c_uint32),
        ("hw_prog_id", c_uint32),
        ("skb_prog_id", c_uint32),
        ("attach_mode", c_uint8),
    ]


class ProgInfo(Structure):
    """The prefix of struct bpf_prog_info up to ``name``; the kernel fills ``info_len`` bytes."""

    _fields_ = [
        ("type", c_uint32),
        ("id", c_uint32),
        ("tag", c_uint8 * 8),
        ("jited_prog_len", c_uint32),
        ("xlated_prog_len", c_uint32),
        ("jited_prog_insns", c_uint64),  # pointers left 0: we ask for no dumps
        ("xlated_prog_insns", c_uint64),
        ("load_time", c_uint64),
        ("created_by_uid", c_uint32),
        ("nr_map_ids", c_uint32),
        ("map_ids", c_uint64),
        ("name", c_char * 16),
    ]


class MapInfo(Structure):
    """The prefix of struct bpf_map_info up to ``ifindex``."""

    _fields_ = [
        ("type", c_uint32),
        ("id", c_uint32),
        ("key_size", c_uint32),
        ("value_size", c_uint32),
        ("max_entries", c_uint32),
        ("map_flags", c_uint32),
        ("name", c_char * 16),
        ("ifindex", c_uint32),
    ]


class LinkInfo(Structure):
    """The prefix of struct bpf_link_info with the ``xdp`` member of its union.

    The union holds __u64 members, so it starts at offset 16 after 4 bytes of padding.
    """

    _fields_ = [
        ("type", c_uint32),
        ("id", c_uint32),
        ("prog_id", c_uint32),
        ("_pad", c_uint32),
        ("xdp_ifindex", c_uint32),
    ]


class XdpMd(Structure):
    """struct xdp_md: the context BPF_PROG_TEST_RUN accepts as ``ctx_in`` for XDP."""

    _fields_ = [
        ("data", c_uint32),
        ("data_end", c_uint32),
        ("data_meta", c_uint32),
        ("ingress_ifindex", c_uint32),
        ("rx_queue_index", c_uint32),
        ("egress_ifindex", c_uint32),
    ]


# Sizes from the C headers (x86_64 / any LP64): a mismatch is a layout bug.
for _cls, _size in (
    (TestRunOpts, 80),
    (LinkCreateOpts, 64),
    (MapBatchOpts, 24),
    (XdpQueryOpts, 32),
    (ProgInfo, 80),
    (MapInfo, 44),
    (XdpMd, 24),
):
    assert ctypes.sizeof(_cls) == _size, (_cls.__name__, ctypes.sizeof(_cls))
assert LinkInfo.xdp_ifindex.offset == 16

S = TypeVar("S", bound=Structure)


def new_opts(cls: type[S]) -> S:
    """A zeroed options struct with ``sz`` set, as libbpf's OPTS_VALID() demands."""
    opts = cls()
    opts.sz = ctypes.sizeof(cls)
    return opts
