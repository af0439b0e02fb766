"""The one ctypes module that talks to libbpf (STYLE.md practice 6).

Everything the rest of fwd calls in libbpf is declared here, with ``argtypes``
and ``restype`` for every function: an undeclared pointer return is truncated
to 32 bits by ctypes, which crashes far from the call. Errors are translated
in one place, :func:`check` / :func:`check_ptr`, into :class:`fwd.errors.BpfError`
with the errno and a message naming the call and the object it was about.

libbpf 1.x is "strict" by default: functions returning ``int`` return
``-errno`` (and set errno), functions returning pointers return NULL and set
errno. ``libbpf_set_strict_mode()`` is therefore not called: it is a no-op for
1.x. The options structs below mirror libbpf 1.1.2's ``bpf.h`` / ``libbpf.h``;
their ``sz`` field is set by :func:`new_opts` and their sizes are asserted at
import so a layout mistake fails here and not inside the kernel.

Handles (``struct bpf_object *`` and friends) are plain ``c_void_p`` addresses;
:mod:`fwd.kernel.objects` wraps each in an owner class that refuses use after close.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform
from ctypes import (
    CFUNCTYPE,
    POINTER,
    c_char_p,
    c_int,
    c_size_t,
    c_uint32,
    c_uint64,
    c_void_p,
)
from typing import Any

from fwd.errors import BpfError
# The structs, re-exported: callers name them libbpf.X like the functions.
from fwd.kernel.structs import (
    LinkCreateOpts as LinkCreateOpts,
    LinkInfo as LinkInfo,
    MapBatchOpts as MapBatchOpts,
    MapCreateOpts as MapCreateOpts,
    MapInfo as MapInfo,
    ProgInfo as ProgInfo,
    S as S,
    TestRunOpts as TestRunOpts,
    XdpMd as XdpMd,
    XdpQueryOpts as XdpQueryOpts,
    new_opts as new_opts,
)

log = logging.getLogger("fwd.kernel.libbpf")

try:
    _lib = ctypes.CDLL("libbpf.so.1", use_errno=True)
    # A known symbol proves this is libbpf and not some other library of that name.
    _lib.libbpf_version_string.restype = c_char_p
    _lib.libbpf_version_string.argtypes = []
    VERSION: str = _lib.libbpf_version_string().decode()
except (OSError, AttributeError) as exc:  # pragma: no cover - depends on the host
    raise ImportError(f"cannot load libbpf.so.1 (install libbpf1): {exc}") from exc

# --- constants (linux/bpf.h, linux/if_link.h) ---------------------------------

BPF_MAP_TYPE_HASH = 1
BPF_MAP_TYPE_ARRAY = 2
BPF_MAP_TYPE_PERCPU_HASH = 5
BPF_MAP_TYPE_PERCPU_ARRAY = 6
BPF_MAP_TYPE_LRU_HASH = 9
BPF_MAP_TYPE_LRU_PERCPU_HASH = 10
BPF_MAP_TYPE_LPM_TRIE = 11
BPF_MAP_TYPE_ARRAY_OF_MAPS = 12
BPF_MAP_TYPE_PERCPU_CGROUP_STORAGE = 21
BPF_MAP_TYPE_RINGBUF = 27
PERCPU_MAP_TYPES = frozenset(
    {
        BPF_MAP_TYPE_PERCPU_HASH,
        BPF_MAP_TYPE_PERCPU_ARRAY,
        BPF_MAP_TYPE_LRU_PERCPU_HASH,
        BPF_MAP_TYPE_PERCPU_CGROUP_STORAGE,
    }
)

BPF_ANY = 0
BPF_NOEXIST = 1
BPF_EXIST = 2

BPF_XDP = 37  # enum bpf_attach_type
BPF_LINK_TYPE_XDP = 6

XDP_FLAGS_UPDATE_IF_NOEXIST = 1 << 0
XDP_FLAGS_SKB_MODE = 1 << 1
XDP_FLAGS_DRV_MODE = 1 << 2
XDP_FLAGS_HW_MODE = 1 << 3

XDP_ATTACHED_NONE = 0
XDP_ATTACHED_DRV = 1
XDP_ATTACHED_SKB = 2
XDP_ATTACHED_HW = 3
XDP_ATTACHED_MULTI = 4

# The kernel-internal ENOTSUPP (not EOPNOTSUPP) that bpf(2) returns for
# operations a map type does not implement, e.g. batch ops on older types.
ENOTSUPP = 524

LIBBPF_WARN = 0
LIBBPF_INFO = 1
LIBBPF_DEBUG = 2

# --- prototypes ---------------------------------------------------------------

_u32p = POINTER(c_uint32)


def _declare(name: str, restype: Any, *argtypes: Any) -> Any:
    fn = getattr(_lib, name)
    fn.restype = restype
    fn.argtypes = list(argtypes)
    return fn


# libbpf.h: objects, programs, maps
bpf_object__open_file = _declare("bpf_object__open_file", c_void_p, c_char_p, c_void_p)
bpf_object__load = _declare("bpf_object__load", c_int, c_void_p)
bpf_object__close = _declare("bpf_object__close", None, c_void_p)
bpf_object__find_program_by_name = _declare(
    "bpf_object__find_program_by_name", c_void_p, c_void_p, c_char_p
)
bpf_object__next_program = _declare(
    "bpf_object__next_program", c_void_p, c_void_p, c_void_p
)
bpf_object__find_map_by_name = _declare(
    "bpf_object__find_map_by_name", c_void_p, c_void_p, c_char_p
)
bpf_object__next_map = _declare("bpf_object__next_map", c_void_p, c_void_p, c_void_p)
bpf_program__name = _declare("bpf_program__name", c_char_p, c_void_p)
bpf_program__fd = _declare("bpf_program__fd", c_int, c_void_p)
bpf_map__name = _declare("bpf_map__name", c_char_p, c_void_p)
bpf_map__fd = _declare("bpf_map__fd", c_int, c_void_p)
bpf_map__type = _declare("bpf_map__type", c_int, c_void_p)
bpf_map__key_size = _declare("bpf_map__key_size", c_uint32, c_void_p)
bpf_map__value_size = _declare("bpf_map__value_size", c_uint32, c_void_p)
bpf_map__max_entries = _declare("bpf_map__max_entries", c_uint32, c_void_p)
bpf_map__map_flags = _declare("bpf_map__map_flags", c_uint32, c_void_p)
bpf_map__reuse_fd = _declare("bpf_map__reuse_fd", c_int, c_void_p, c_int)
bpf_map__set_max_entries = _declare(
    "bpf_map__set_max_entries", c_int, c_void_p, c_uint32
)
bpf_map__set_initial_value = _declare(
    "bpf_map__set_initial_value", c_int, c_void_p, c_void_p, c_size_t
)
libbpf_num_possible_cpus = _declare("libbpf_num_possible_cpus", c_int)
bpf_xdp_query = _declare("bpf_xdp_query", c_int, c_int, c_int, POINTER(XdpQueryOpts))

# bpf.h: thin bpf(2) wrappers on file descriptors
bpf_obj_pin = _declare("bpf_obj_pin", c_int, c_int, c_char_p)
bpf_obj_get = _declare("bpf_obj_get", c_int, c_char_p)
bpf_obj_get_info_by_fd = _declare(
    "bpf_obj_get_info_by_fd", c_int, c_int, c_void_p, _u32p
)
bpf_map_lookup_elem = _declare("bpf_map_lookup_elem", c_int, c_int, c_void_p, c_void_p)
bpf_map_update_elem = _declare(
    "bpf_map_update_elem", c_int, c_int, c_void_p, c_void_p, c_uint64
)
bpf_map_delete_elem = _declare("bpf_map_delete_elem", c_int, c_int, c_void_p)
bpf_map_get_next_key = _declare(
    "bpf_map_get_next_key", c_int, c_int, c_void_p, c_void_p
)
bpf_map_update_batch = _declare(
    "bpf_map_update_batch",
    c_int,
    c_int,
    c_void_p,
    c_void_p,
    _u32p,
    POINTER(MapBatchOpts),
)
bpf_map_delete_batch = _declare(
    "bpf_map_delete_batch", c_int, c_int, c_void_p, _u32p, POINTER(MapBatchOpts)
)
bpf_map_lookup_batch = _declare(
    "bpf_map_lookup_batch",
    c_int,
    c_int,
    c_void_p,
    c_void_p,
    c_void_p,
    c_void_p,
    _u32p,
    POINTER(MapBatchOpts),
)
bpf_prog_get_fd_by_id = _declare("bpf_prog_get_fd_by_id", c_int, c_uint32)
bpf_map_get_fd_by_id = _declare("bpf_map_get_fd_by_id", c_int, c_uint32)
bpf_prog_test_run_opts = _declare(
    "bpf_prog_test_run_opts", c_int, c_int, POINTER(TestRunOpts)
)
bpf_link_create = _declare(
    "bpf_link_create", c_int, c_int, c_int, c_int, POINTER(LinkCreateOpts)
)
bpf_link_detach = _declare("bpf_link_detach", c_int, c_int)
# opts (struct bpf_link_update_opts) is optional; we always pass NULL.
bpf_link_update = _declare("bpf_link_update", c_int, c_int, c_int, c_void_p)
bpf_map_create = _declare(
    "bpf_map_create",
    c_int,
    c_int,
    c_char_p,
    c_uint32,
    c_uint32,
    c_uint32,
    POINTER(MapCreateOpts),
)

# --- error translation (the one place) ----------------------------------------


def error(what: str, errno: int) -> BpfError:
    """The BpfError for ``what`` (a call and its object) failing with ``errno``."""
    reason = (
        "not supported here (ENOTSUPP)" if errno == ENOTSUPP else os.strerror(errno)
    )
    return BpfError(f"{what}: {reason} (errno {errno})", errno)


def check(ret: int, what: str) -> int:
    """Return ``ret`` unless it is negative (libbpf 1.x: ``-errno``); then raise BpfError."""
    if ret < 0:
        raise error(what, -ret)
    return ret


def check_ptr(ptr: int | None, what: str) -> int:
    """Return a non-NULL pointer; on NULL raise BpfError with the errno libbpf left."""
    if not ptr:
        raise error(what, ctypes.get_errno() or 22)  # EINVAL if libbpf left none
    return ptr


def num_possible_cpus() -> int:
    """The number of possible CPUs: the multiplier of every per-CPU map value."""
    return check(int(libbpf_num_possible_cpus()), "libbpf_num_possible_cpus()")


def obj_pin(fd: int, path: str, what: str) -> None:
    """Pin the BPF object behind ``fd`` at ``path`` on a bpffs."""
    check(int(bpf_obj_pin(fd, os.fsencode(path))), f"bpf_obj_pin({what}, {path})")


def obj_get(path: str) -> int:
    """Open the BPF object pinned at ``path``; the caller owns the returned fd."""
    return check(int(bpf_obj_get(os.fsencode(path))), f"bpf_obj_get({path})")


def obj_get_info(path: str, info: S, kind: str) -> tuple[int, S]:
    """Open the object pinned at ``path`` and fill ``info`` for it; the caller owns the fd.

    The fd is closed again if reading the info fails, so nothing leaks.
    """
    fd = obj_get(path)
    try:
        return fd, obj_info(fd, info, f"{kind} pinned at {path}")
    except BaseException:
        os.close(fd)
        raise


def obj_info(fd: int, info: S, what: str) -> S:
    """Fill ``info`` (a prefix of a bpf_*_info struct) for the object behind ``fd``."""
    length = c_uint32(ctypes.sizeof(info))
    check(
        int(bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(length))),
        f"bpf_obj_get_info_by_fd({what})",
    )
    return info


# --- libbpf's log, forwarded to Python logging ---------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
_vsnprintf = _libc.vsnprintf
_vsnprintf.restype = c_int
_vsnprintf.argtypes = [c_void_p, c_size_t, c_char_p, c_void_p]

# va_copy is a plain struct copy on these ABIs; the callback receives a pointer to
# the va_list (x86_64: array type that decays; aarch64: >16-byte struct passed by
# reference). Copying it lets us measure the message before formatting it, so long
# verifier logs are not cut (the interesting line is at their end).
_VA_LIST_SIZE = {"x86_64": 24, "aarch64": 32}.get(platform.machine(), 0)
_MAX_MESSAGE = 1 << 20
_LEVELS = {
    LIBBPF_WARN: logging.WARNING,
    LIBBPF_INFO: logging.INFO,
    LIBBPF_DEBUG: logging.DEBUG,
}

_PRINT_FN = CFUNCTYPE(c_int, c_int, c_char_p, c_void_p)


def _format(fmt: bytes, ap: int) -> str:
    size = 4096
    if _VA_LIST_SIZE:
        copy = ctypes.create_string_buffer(_VA_LIST_SIZE)
        ctypes.memmove(copy, ap, _VA_LIST_SIZE)
        size = min(max(int(_vsnprintf(None, 0, fmt, copy)) + 1, 1), _MAX_MESSAGE)
    buf = ctypes.create_string_buffer(size)
    _vsnprintf(buf, size, fmt, ap)
    return buf.value.decode(errors="replace")


def _on_print(level: int, fmt: bytes | None, ap: int | None) -> int:
    # Called by libbpf on the calling thread. It must never raise into C.
    try:
        pylevel = _LEVELS.get(level, logging.DEBUG)
        if fmt is None or ap is None or not log.isEnabledFor(pylevel):
            return 0
        message = _format(fmt, ap).rstrip("\n")
        if message:
            log.log(pylevel, "%s", message)
    except Exception:  # noqa: BLE001 - a failing logger must not unwind through C
        return 0
    return 0


# Kept referenced at module level: libbpf holds only the raw function pointer.
_print_callback = _PRINT_FN(_on_print)
_libbpf_set_print = _declare("libbpf_set_print", c_void_p, _PRINT_FN)
_libbpf_set_print(_print_callback)
