"""Give memory freed by a large policy change back to the kernel.

Applying 100,000 rules allocates a few hundred MB of short-lived objects (the
request, its plain-data form, the successor classifier, the change list).
Once freed, glibc keeps the pages in its arenas and the RSS stays at the
peak; ``malloc_trim(0)`` returns every whole free page of every arena
(``MADV_DONTNEED``). Freed pymalloc arenas are unmapped by Python itself.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
from collections.abc import Callable

_trim: Callable[[int], int] | None = None
try:
    _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    _trim = _libc.malloc_trim  # glibc only; musl has none
    _libc.malloc_trim.argtypes = [ctypes.c_size_t]
    _libc.malloc_trim.restype = ctypes.c_int
except (OSError, AttributeError):  # pragma: no cover - not glibc
    _trim = None


def release() -> None:
    """Collect cycles, then return free heap pages to the kernel (a no-op off glibc).

    Costs ~10-100 ms on a heap holding a 100,000-rule policy: call it after
    large changes only, never per packet or per event.
    """
    gc.collect()
    if _trim is not None:
        _trim(0)
