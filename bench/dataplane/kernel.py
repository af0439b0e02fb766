"""Kernel-side helpers of the benchmark: reference programs, test runs, traffic, CPU time.

* :func:`build_reference` compiles ``progs.bpf.c`` (bare ``XDP_DROP``, ``XDP_PASS``
  and the ``XDP_TX`` generator) and loads it.
* :func:`cost_ns` times a program with BPF_PROG_TEST_RUN: ``duration`` is the
  kernel's own average per repetition; several trials, the median is reported.
* :func:`inject` sends real frames: BPF_PROG_TEST_RUN with
  ``BPF_F_TEST_XDP_LIVE_FRAMES`` on the ``XDP_TX`` program turns every repetition
  into a transmit on the device named by ``ctx.ingress_ifindex`` (the kernel
  redirects XDP_TX back out of that device). The device is looked up in the
  calling thread's network namespace, so the caller enters the sender's
  namespace first. Everything runs on the calling thread's CPU: the frames
  reach the veth peer's ring, and its NAPI poll runs in softirq on this CPU
  when the test run re-enables bottom halves after each batch.
* :func:`cpu_busy` reads /proc/stat: ticks a CPU spent in system, irq and
  softirq context (user is left out: the injector is one syscall). Other
  processes' kernel time on that CPU lands there too, so :class:`Injection`
  also carries a cross-check that excludes them: the ticks charged to the
  injecting thread and to ``ksoftirqd/<cpu>`` (softirq work the kernel deferred).
  Both are tick-sampled (CONFIG_TICK_CPU_ACCOUNTING here: 4 ms at HZ=250).
"""

from __future__ import annotations

import ctypes
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from fwd.kernel import libbpf
from fwd.kernel.maps import Map
from fwd.kernel.objects import BpfObject, Program

HERE = Path(__file__).resolve().parent
# include/uapi/linux/bpf.h (checked against /usr/include/linux/bpf.h at start-up).
BPF_F_TEST_XDP_LIVE_FRAMES = 1 << 1
TEST_XDP_MAX_BATCH = 256
CLK_TCK = os.sysconf("SC_CLK_TCK")


def check_uapi() -> None:
    """Refuse to run if this machine's bpf.h disagrees with the live-frames flag we pass."""
    header = Path("/usr/include/linux/bpf.h")
    if header.exists():
        text = header.read_text()
        if "#define BPF_F_TEST_XDP_LIVE_FRAMES\t(1U << 1)" not in text:
            raise SystemExit("BPF_F_TEST_XDP_LIVE_FRAMES is not (1U << 1) in linux/bpf.h")


@contextmanager
def build_reference() -> Iterator[BpfObject]:
    """Compile and load the reference programs (``xdp_drop``, ``xdp_pass``, ``xdp_tx``)."""
    arch = os.uname().machine
    with tempfile.TemporaryDirectory(prefix="fwdb-progs-") as tmp:
        obj_path = Path(tmp) / "progs.bpf.o"
        subprocess.run(
            ["clang", "-O2", "-g", "-Wall", "-Werror", "-target", "bpf",
             f"-I/usr/include/{arch}-linux-gnu", "-c", str(HERE / "progs.bpf.c"),
             "-o", str(obj_path)],
            check=True,
        )
        with BpfObject.open(obj_path) as obj:
            obj.load()
            yield obj


def program_by_id(prog_id: int) -> Program:
    """Open a program someone else loaded (xdp-filter's) by its id; the handle owns the fd."""
    fd = libbpf.check(int(libbpf.bpf_prog_get_fd_by_id(prog_id)), f"bpf_prog_get_fd_by_id({prog_id})")
    info = libbpf.obj_info(fd, libbpf.ProgInfo(), f"program id {prog_id}")
    return Program(info.name.decode(errors="replace"), fd=fd)


def map_by_id(map_id: int) -> Map:
    """Open a map by its id; the handle owns the fd."""
    fd = libbpf.check(int(libbpf.bpf_map_get_fd_by_id(map_id)), f"bpf_map_get_fd_by_id({map_id})")
    info = libbpf.obj_info(fd, libbpf.MapInfo(), f"map id {map_id}")
    return Map(info.name.decode(errors="replace"), fd=fd, info=info)


@contextmanager
def pinned_to(cpu: int) -> Iterator[None]:
    """Run the calling thread on ``cpu`` only, and restore its affinity afterwards."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


@dataclass(frozen=True)
class Cost:
    """Per-packet cost of one program on one frame: median and spread over trials."""

    median_ns: float
    min_ns: float
    max_ns: float
    retval: int


def cost_ns(prog: Program, frame: bytes, *, repeat: int, trials: int) -> Cost:
    """Median of ``trials`` BPF_PROG_TEST_RUNs of ``repeat`` repetitions each."""
    runs = [prog.test_run(frame, repeat=repeat, data_out_size=0) for _ in range(trials)]
    retvals = {r.retval for r in runs}
    if len(retvals) != 1:
        raise RuntimeError(f"{prog.name}: verdict changed between trials: {retvals}")
    ns = [float(r.duration_ns) for r in runs]
    return Cost(statistics.median(ns), min(ns), max(ns), retvals.pop())


def cpu_busy(cpu: int) -> int:
    """Ticks ``cpu`` has spent in system + irq + softirq since boot (/proc/stat)."""
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith(f"cpu{cpu} "):
                fields = [int(x) for x in line.split()[1:]]
                # user nice system idle iowait irq softirq steal ...
                return fields[2] + fields[5] + fields[6]
    raise RuntimeError(f"cpu{cpu} not in /proc/stat")


def _task_ticks(stat_path: str) -> int:
    """utime + stime ticks of one task (/proc/.../stat fields 14 and 15)."""
    with open(stat_path) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def ksoftirqd_stat(cpu: int) -> str:
    """The /proc stat path of ``ksoftirqd/<cpu>``, which runs softirqs deferred on that CPU."""
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/comm") as f:
                    if f.read().strip() == f"ksoftirqd/{cpu}":
                        return f"/proc/{pid}/stat"
            except OSError:
                continue
    raise RuntimeError(f"no ksoftirqd/{cpu}")


@dataclass(frozen=True)
class Injection:
    """What one bounded injection did."""

    packets: int        # frames the generator transmitted (repetitions asked for)
    wall_s: float       # wall time of the test-run syscall
    cpu_s: float        # system + irq + softirq seconds on the pinned CPU meanwhile
    task_s: float       # CPU seconds charged to the injecting thread + ksoftirqd/<cpu>


def inject(gen: Program, frame: bytes, ifindex: int, count: int, *, cpu: int, batch: int = 64) -> Injection:
    """Transmit ``count`` copies of ``frame`` out of ``ifindex`` (caller's namespace) on ``cpu``.

    One BPF_PROG_TEST_RUN in live-frames mode; bounded by ``count``. The kernel
    stops early (EINTR) on a signal, so Ctrl-C still works mid-run.
    """
    data = ctypes.create_string_buffer(frame, len(frame))
    ctx = libbpf.XdpMd(data=0, data_end=len(frame), ingress_ifindex=ifindex)
    opts = libbpf.new_opts(libbpf.TestRunOpts)
    opts.data_in = ctypes.addressof(data)
    opts.data_size_in = len(frame)
    opts.ctx_in = ctypes.addressof(ctx)
    opts.ctx_size_in = ctypes.sizeof(ctx)
    opts.repeat = count
    opts.flags = BPF_F_TEST_XDP_LIVE_FRAMES
    opts.batch_size = min(batch, TEST_XDP_MAX_BATCH)
    softirqd = ksoftirqd_stat(cpu)
    with pinned_to(cpu):
        task0 = _task_ticks("/proc/thread-self/stat") + _task_ticks(softirqd)
        busy0, t0 = cpu_busy(cpu), time.perf_counter()
        libbpf.check(
            int(libbpf.bpf_prog_test_run_opts(gen.fd, ctypes.byref(opts))),
            f"bpf_prog_test_run_opts({gen.label}, live frames, ifindex {ifindex})",
        )
        t1, busy1 = time.perf_counter(), cpu_busy(cpu)
        task1 = _task_ticks("/proc/thread-self/stat") + _task_ticks(softirqd)
    return Injection(count, t1 - t0, (busy1 - busy0) / CLK_TCK, (task1 - task0) / CLK_TCK)
