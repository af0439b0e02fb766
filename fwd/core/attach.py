"""XDP attach modes: what Links asks the kernel for and what it reports back.

Below both the kernel seam (fwd.kernel.xdp maps them to XDP_FLAGS_*) and the
messages (InterfaceStatus carries one), so neither imports the other.
"""

from __future__ import annotations

import enum


class AttachMode(enum.Enum):
    NONE = "none"
    OFFLOAD = "offload"
    NATIVE = "native"
    GENERIC = "generic"
