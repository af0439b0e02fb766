"""Prefix-set elements as fwd_sets LPM-trie keys, and stable set ids (pure).

Key layout (bpf/fwd.h struct fwd_set_key): prefixlen (host order) counting the
32-bit tag too, the tag ``set_id << 16 | gen << 8 | family`` in network order,
then the address (IPv4: its 4 bytes). Keys are packed for generation 0 and
re-tagged for generation 1 by patching one byte per key, so a 1,000,000-element
set is parsed once per change, not once per generation.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterable, Mapping, Sequence

from fwd.core import abi
from fwd.errors import CapacityError

SET_KEY = struct.Struct("=II16s")
SET_KEY_SIZE = SET_KEY.size
_GEN_BYTE = 6  # offset of the tag's generation byte within a key
_ONE = b"\x01"


def set_key(set_id: int, gen: int, prefix: str) -> bytes:
    """The key of one canonical prefix (``str(ipaddress.ip_network(...))``)."""
    addr, _, plen = prefix.partition("/")
    if ":" in addr:
        packed, fam = socket.inet_pton(socket.AF_INET6, addr), 6
    else:
        packed, fam = socket.inet_aton(addr), 4
    tag = int.from_bytes(bytes((set_id >> 8, set_id & 0xFF, gen, fam)), "little")
    return SET_KEY.pack(32 + int(plen), tag, packed)


def set_keys(set_id: int, prefixes: Iterable[str]) -> tuple[bytes, int]:
    """Packed generation-0 keys of ``prefixes`` and their count."""
    parts = [set_key(set_id, 0, p) for p in prefixes]
    return b"".join(parts), len(parts)


def for_generation(keys: bytes, gen: int) -> bytes:
    """``keys`` (generation 0) re-tagged for ``gen``."""
    if gen == 0 or not keys:
        return keys
    out = bytearray(keys)
    out[_GEN_BYTE::SET_KEY_SIZE] = _ONE * (len(keys) // SET_KEY_SIZE)
    return bytes(out)


def assign_set_ids(previous: Mapping[str, int], names: Sequence[str]) -> dict[str, int]:
    """Ids (bits) for prefix sets: kept names keep theirs, new names take the lowest free."""
    if len(names) > abi.MAX_SETS:
        raise CapacityError(f"{len(names)} prefix sets exceed the limit of {abi.MAX_SETS}")
    out = {n: previous[n] for n in names if n in previous}
    free = (i for i in range(abi.MAX_SETS) if i not in set(out.values()))
    for n in names:
        if n not in out:
            out[n] = next(free)
    return out
