"""Wait for running BPF programs from user space (an RCU grace period).

After the Datapath flips the live generation, a packet that read the old
generation may still be inside the program; its entries must not be deleted
under it. The kernel offers one way to wait for that from user space: an update
of a map-in-map (ARRAY_OF_MAPS) element through bpf(2) returns only after
``synchronize_rcu()`` (``maybe_wait_bpf_programs`` in kernel/bpf/syscall.c),
and every XDP program run is an RCU read-side critical section.
"""

from __future__ import annotations

import ctypes
import os
import struct

from fwd.kernel import libbpf

_ZERO = struct.pack("=I", 0)


class RcuBarrier:
    """Owns a one-slot ARRAY_OF_MAPS and the inner map it stores; ``wait()`` is the barrier."""

    def __init__(self) -> None:
        self._inner = libbpf.check(
            int(libbpf.bpf_map_create(libbpf.BPF_MAP_TYPE_ARRAY, b"fwd_rcu_inner", 4, 4, 1, None)),
            "bpf_map_create(fwd_rcu_inner)",
        )
        opts = libbpf.new_opts(libbpf.MapCreateOpts)
        opts.inner_map_fd = self._inner
        try:
            self._outer = libbpf.check(
                int(
                    libbpf.bpf_map_create(
                        libbpf.BPF_MAP_TYPE_ARRAY_OF_MAPS,
                        b"fwd_rcu_outer",
                        4,
                        4,
                        1,
                        ctypes.byref(opts),
                    )
                ),
                "bpf_map_create(fwd_rcu_outer)",
            )
        except BaseException:
            os.close(self._inner)
            raise
        self._value = struct.pack("=I", self._inner)

    def wait(self) -> None:
        """Return once every BPF program run that began before the call has finished."""
        if self._outer < 0:
            raise libbpf.error("rcu barrier (closed)", 9)
        buf_key = ctypes.create_string_buffer(_ZERO, 4)
        buf_val = ctypes.create_string_buffer(self._value, 4)
        libbpf.check(
            int(libbpf.bpf_map_update_elem(self._outer, buf_key, buf_val, libbpf.BPF_ANY)),
            "bpf_map_update_elem(fwd_rcu_outer)",
        )

    def close(self) -> None:
        if self._outer >= 0:
            os.close(self._outer)
            os.close(self._inner)
            self._outer = self._inner = -1
