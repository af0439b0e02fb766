"""Python mirror of bpf/fwd.h: the structs and constants shared with the XDP program.

bpf/fwd.h is the source of truth. tests/unit/test_abi.py parses the header and
checks every constant, size and offset here against it, so the two cannot drift.
"""

from __future__ import annotations

import ctypes

MAX_TUPLES = 256
MAX_TUPLE_IDS = 1024
MAX_SETS = 16
MAX_SET_REFS = 16
DEFAULT_SET_ENTRIES = 2097152
PRIO_ABSENT = 0xFFFFFFFF
MAX_SLOTS = 131072
DEFAULT_RULE_ENTRIES = 1048576
MAX_VLAN = 2
MAX_IPV6_EXT = 6

ACT_ALLOW = 0
ACT_DROP = 1

RULE_AUDIT = 1 << 0
RULE_LOG = 1 << 1

GEN_DRY_RUN = 1 << 0
GEN_LOG_DEFAULT = 1 << 1

L4_PORTS = 1 << 0
L4_ICMP = 1 << 1
L4_FRAG = 1 << 2
L4_LATER_FRAG = 1 << 3
L4_IPV6 = 1 << 4

DIR_SRC = 0
DIR_DST = 1

SLOT_DEFAULT = 0
SLOT_MALFORMED = 1
SLOT_NON_IP = 2
SLOT_FAILSAFE = 3
SLOT_FIRST_RULE = 16

VERDICT_PASS = 0
VERDICT_DROP = 1
VERDICT_WOULD_DROP = 2
MAX_IFACES = 4096

# Events (issue 4): see fwd.h.
EVENTS_SIZE = 4194304
EVENT_RATE = 100000
EVENT_BURST = 10000
EVENT_MAX_RATE = 100000000
EVENT_MAX_BURST = 1000000000
EVENT_MAX_GAP_S = 16
EV_DRY_RUN = 1 << 0
EV_WOULD_DROP = 1 << 1
EV_DEFAULT = 1 << 2
EV_MALFORMED = 1 << 3
# The section (hence libbpf map name) holding struct fwd_event_config.
EVENT_CONFIG_MAP = ".rodata.events"
# The failsafe (fwd/policy/failsafe.py): struct fwd_failsafe_config in its own section.
MAX_FAILSAFE = 16
FAILSAFE_SPORT = 1 << 0
FAILSAFE_ADDR = 1 << 1
FAILSAFE_CONFIG_MAP = ".rodata.failsafe"

U8x16 = ctypes.c_uint8 * 16
U64x3 = ctypes.c_uint64 * 3
U8xSETS = ctypes.c_uint8 * MAX_SET_REFS


class Key(ctypes.Structure):
    """struct fwd_key: key of the fwd_rules hash map."""

    _fields_ = [
        ("tuple", ctypes.c_uint32),
        ("ifindex", ctypes.c_uint32),
        ("src", U8x16),
        ("dst", U8x16),
        ("sport", ctypes.c_uint16),
        ("dport", ctypes.c_uint16),
        ("src_sets", ctypes.c_uint16),
        ("dst_sets", ctypes.c_uint16),
        ("proto", ctypes.c_uint8),
        ("tcp_flags", ctypes.c_uint8),
        ("l4", ctypes.c_uint8),
        ("pad", ctypes.c_uint8),
    ]


class Tuple(ctypes.Structure):
    """struct fwd_tuple: one mask of the tuple-space search."""

    _fields_ = [
        ("ifindex_mask", ctypes.c_uint32),
        ("src_mask", U8x16),
        ("dst_mask", U8x16),
        ("sport_mask", ctypes.c_uint16),
        ("dport_mask", ctypes.c_uint16),
        ("src_sets_mask", ctypes.c_uint16),
        ("dst_sets_mask", ctypes.c_uint16),
        ("proto_mask", ctypes.c_uint8),
        ("tcp_flags_mask", ctypes.c_uint8),
        ("l4_mask", ctypes.c_uint8),
        ("pad", ctypes.c_uint8),
        ("tuple_id", ctypes.c_uint32),
        ("min_prio", ctypes.c_uint32),
    ]


class Verdict(ctypes.Structure):
    """struct fwd_verdict: one generation's verdict of an entry."""

    _fields_ = [
        ("prio", ctypes.c_uint32),
        ("slot", ctypes.c_uint32),
        ("action", ctypes.c_uint8),
        ("flags", ctypes.c_uint8),
        ("pad", ctypes.c_uint16),
    ]


class Entry(ctypes.Structure):
    """struct fwd_entry: value of the fwd_rules hash map (a verdict per generation)."""

    _fields_ = [("v", Verdict * 2)]


class SetKey(ctypes.Structure):
    """struct fwd_set_key: key of the fwd_sets LPM trie."""

    _fields_ = [
        ("prefixlen", ctypes.c_uint32),
        ("tag", ctypes.c_uint32),
        ("addr", U8x16),
    ]


class Live(ctypes.Structure):
    """struct fwd_live: the live-generation word (fwd_live[0])."""

    _fields_ = [
        ("gen", ctypes.c_uint32),
        ("pad", ctypes.c_uint32),
        ("revision", ctypes.c_uint64),
    ]


class GenConfig(ctypes.Structure):
    """struct fwd_gen_config: per-generation policy settings (fwd_gen[gen])."""

    _fields_ = [
        ("ntuples", ctypes.c_uint32),
        ("default_action", ctypes.c_uint8),
        ("flags", ctypes.c_uint8),
        ("nsets", ctypes.c_uint8),
        ("pad", ctypes.c_uint8),
        ("revision", ctypes.c_uint64),
        ("set_ids", U8xSETS),
        ("set_dirs", U8xSETS),
    ]


class Counter(ctypes.Structure):
    """struct fwd_counter: per-CPU value of fwd_counters[slot]."""

    _fields_ = [
        ("packets", ctypes.c_uint64),
        ("bytes", ctypes.c_uint64),
        ("would_drop_packets", ctypes.c_uint64),
        ("would_drop_bytes", ctypes.c_uint64),
    ]


class IfStats(ctypes.Structure):
    """struct fwd_if_stats: per-CPU value of fwd_if_stats[ifindex]."""

    _fields_ = [
        ("packets", U64x3),
        ("bytes", U64x3),
    ]


class Event(ctypes.Structure):
    """struct fwd_event: one record of the fwd_events ring buffer."""

    _fields_ = [
        ("time_ns", ctypes.c_uint64),
        ("ifindex", ctypes.c_uint32),
        ("slot", ctypes.c_uint32),
        ("src", U8x16),
        ("dst", U8x16),
        ("len", ctypes.c_uint32),
        ("sport", ctypes.c_uint16),
        ("dport", ctypes.c_uint16),
        ("proto", ctypes.c_uint8),
        ("tcp_flags", ctypes.c_uint8),
        ("action", ctypes.c_uint8),
        ("flags", ctypes.c_uint8),
        ("l4", ctypes.c_uint8),
        ("pad", ctypes.c_uint8 * 3),
    ]


class EventStats(ctypes.Structure):
    """struct fwd_event_stats: per-CPU value of fwd_event_stats[0]."""

    _fields_ = [
        ("emitted", ctypes.c_uint64),
        ("suppressed", ctypes.c_uint64),
        ("ringbuf_full", ctypes.c_uint64),
    ]


class EventConfig(ctypes.Structure):
    """struct fwd_event_config: the event budget, set before load."""

    _fields_ = [("rate", ctypes.c_uint64), ("burst", ctypes.c_uint64)]


class EventBucket(ctypes.Structure):
    """struct fwd_event_bucket: per-CPU token bucket state (kernel-private)."""

    _fields_ = [("credit", ctypes.c_uint64), ("last_ns", ctypes.c_uint64)]


class FailsafeEntry(ctypes.Structure):
    """struct fwd_failsafe_entry: traffic no policy may drop."""

    _fields_ = [
        ("proto", ctypes.c_uint8),
        ("flags", ctypes.c_uint8),
        ("port", ctypes.c_uint16),
        ("addr", U8x16),
        ("v6", ctypes.c_uint8),
        ("pad", ctypes.c_uint8 * 3),
    ]


class FailsafeConfig(ctypes.Structure):
    """struct fwd_failsafe_config: the failsafe entries, set before load."""

    _fields_ = [
        ("count", ctypes.c_uint32),
        ("pad", ctypes.c_uint32),
        ("entries", FailsafeEntry * MAX_FAILSAFE),
    ]


STRUCTS: dict[str, type[ctypes.Structure]] = {
    "fwd_key": Key,
    "fwd_tuple": Tuple,
    "fwd_verdict": Verdict,
    "fwd_entry": Entry,
    "fwd_set_key": SetKey,
    "fwd_live": Live,
    "fwd_gen_config": GenConfig,
    "fwd_counter": Counter,
    "fwd_if_stats": IfStats,
    "fwd_event": Event,
    "fwd_event_stats": EventStats,
    "fwd_event_config": EventConfig,
    "fwd_event_bucket": EventBucket,
    "fwd_failsafe_entry": FailsafeEntry,
    "fwd_failsafe_config": FailsafeConfig,
}
