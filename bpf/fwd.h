/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * fwd.h - every struct and constant shared by the XDP program and the agent.
 *
 * This header is the single source of truth for the kernel/user ABI. The
 * Python mirror lives in fwd/bpf/abi.py; tests/unit/test_abi.py parses this
 * file and checks that sizes, offsets and constants agree.
 *
 * Classification is tuple-space search (see bpf/README.md): every rule is
 * expanded into (mask, masked key) entries; entries sharing a mask form a
 * "tuple" with a stable id. For a packet the program builds one key, and for
 * every tuple of the live generation looks up (key & tuple mask) in one hash
 * map. The entry with the lowest priority over all tuples decides. Tuples
 * are sorted by the lowest priority they hold, so the search stops as soon
 * as no later tuple can beat the best match found.
 *
 * Atomicity: every entry holds a verdict per generation (fwd_entry.v[gen]);
 * tuple arrays, generation configs and set elements are per generation too.
 * The agent writes the inactive generation's half of what changes, then
 * flips fwd_live.gen with one word-sized array update; each packet reads that
 * word exactly once. After an RCU barrier it copies the change into the
 * other half, so outside an apply v[0] == v[1] everywhere.
 *
 * All multi-byte key fields are in host byte order except addresses, which
 * are kept as 16 bytes in network order (IPv4 as IPv4-mapped IPv6,
 * ::ffff:a.b.c.d, so one prefix length covers both families).
 */
#ifndef FWD_H
#define FWD_H

#ifndef __KERNEL__
#include <linux/types.h>
#endif

/* Limits: array sizes; the agent may raise map sizes before load. */
#define FWD_MAX_TUPLES 256         /* distinct masks per generation */
#define FWD_MAX_TUPLE_IDS 1024     /* stable tuple ids (both generations) */
#define FWD_MAX_SETS 16            /* prefix sets: one bit each in fwd_key.*_sets */
#define FWD_MAX_SET_REFS 16        /* (set, direction) lookups per generation */
#define FWD_DEFAULT_SET_ENTRIES 2097152 /* fwd_sets nodes (a set is stored per generation) */
#define FWD_PRIO_ABSENT 0xffffffff /* fwd_verdict.prio: no rule in this generation */
#define FWD_MAX_SLOTS 131072       /* counter slots (rules + reserved) */
#define FWD_DEFAULT_RULE_ENTRIES 1048576 /* hash entries, both generations */
#define FWD_MAX_VLAN 2             /* VLAN tags parsed */
#define FWD_MAX_IPV6_EXT 6         /* IPv6 extension headers walked */

/* Actions (fwd_verdict.action, fwd_gen_config.default_action). */
#define FWD_ACT_ALLOW 0
#define FWD_ACT_DROP 1

/* fwd_verdict.flags: per-rule behaviour. */
#define FWD_RULE_AUDIT (1 << 0)    /* a drop is only counted as "would drop" */
#define FWD_RULE_LOG (1 << 1)      /* emit an event when this rule decides */

/* fwd_gen_config.flags: per-policy behaviour. */
#define FWD_GEN_DRY_RUN (1 << 0)   /* every drop becomes a "would drop" */
#define FWD_GEN_LOG_DEFAULT (1 << 1) /* emit an event for default-action drops */

/* fwd_key.l4: what the packet's L4 fields mean. */
#define FWD_L4_PORTS (1 << 0)      /* sport/dport hold real ports */
#define FWD_L4_ICMP (1 << 1)       /* sport = ICMP type, dport = ICMP code */
#define FWD_L4_FRAG (1 << 2)       /* packet is a fragment (any) */
#define FWD_L4_LATER_FRAG (1 << 3) /* non-first fragment: no L4 header */
#define FWD_L4_IPV6 (1 << 4)       /* an IPv6 packet: rules with addresses match one
                                    * family only, so ::/0 never covers IPv4 and an
                                    * IPv6 packet from ::ffff:a.b.c.d never matches
                                    * an IPv4 rule */

/*
 * Reserved counter slots. Rule slots start at FWD_SLOT_FIRST_RULE and are
 * assigned per stable rule id by the agent, so counters follow a rule id
 * across policy updates.
 */
#define FWD_SLOT_DEFAULT 0         /* no rule matched: the default action */
#define FWD_SLOT_MALFORMED 1       /* truncated / invalid headers: dropped */
#define FWD_SLOT_NON_IP 2          /* not IPv4/IPv6 (ARP, LLDP...): passed */
#define FWD_SLOT_FAILSAFE 3        /* a drop the failsafe turned into a pass */
#define FWD_SLOT_FIRST_RULE 16

/* Set directions (fwd_gen_config.set_dirs). */
#define FWD_DIR_SRC 0
#define FWD_DIR_DST 1

/* Key of fwd_rules, also what the program builds from a packet. */
struct fwd_key {
	__u32 tuple;      /* stable tuple id, < FWD_MAX_TUPLE_IDS */
	__u32 ifindex;    /* ingress interface */
	__u8 src[16];     /* network order, IPv4-mapped for IPv4 */
	__u8 dst[16];
	__u16 sport;      /* host order; ICMP type when l4 & FWD_L4_ICMP */
	__u16 dport;      /* host order; ICMP code when l4 & FWD_L4_ICMP */
	__u16 src_sets;   /* bit i: the source is in prefix set i */
	__u16 dst_sets;   /* bit i: the destination is in prefix set i */
	__u8 proto;       /* IP protocol / IPv6 upper-layer next header */
	__u8 tcp_flags;   /* TCP flags byte (FIN=0x01 ... CWR=0x80) */
	__u8 l4;          /* FWD_L4_* bits */
	__u8 pad;         /* always 0 */
};

/* One tuple: the mask applied to a packet key before lookup. */
struct fwd_tuple {
	__u32 ifindex_mask;
	__u8 src_mask[16];
	__u8 dst_mask[16];
	__u16 sport_mask;
	__u16 dport_mask;
	__u16 src_sets_mask;
	__u16 dst_sets_mask;
	__u8 proto_mask;
	__u8 tcp_flags_mask;
	__u8 l4_mask;
	__u8 pad;
	__u32 tuple_id;   /* fwd_key.tuple of this tuple's entries */
	__u32 min_prio;   /* lowest priority of any entry in this tuple */
};

/* One generation's verdict of an entry. */
struct fwd_verdict {
	__u32 prio;       /* sparse, in rule order: lower wins; FWD_PRIO_ABSENT: none */
	__u32 slot;       /* counter slot of the rule (stable per rule id) */
	__u8 action;      /* FWD_ACT_* */
	__u8 flags;       /* FWD_RULE_* */
	__u16 pad;
};

/* Value of fwd_rules: the entry's verdict in each generation. */
struct fwd_entry {
	struct fwd_verdict v[2];
};

/*
 * Key of fwd_sets (LPM trie). The 32-bit tag (network order) is
 * set_id << 16 | gen << 8 | family (4 or 6) and always matched whole, so
 * prefixlen = 32 + the element's prefix length. IPv4 addresses take addr[0..3].
 * Elements are stored per generation: a longest-prefix match must only see
 * one generation's elements, or a nested prefix present in one generation
 * would hide its parent in the other.
 */
struct fwd_set_key {
	__u32 prefixlen;
	__u32 tag;
	__u8 addr[16];
};

/* fwd_live[0]: which generation packets use. */
struct fwd_live {
	__u32 gen;        /* 0 or 1 */
	__u32 pad;
	__u64 revision;   /* policy revision of the live generation (for tools) */
};

/* fwd_gen[gen]: per-generation policy settings. */
struct fwd_gen_config {
	__u32 ntuples;    /* tuples in use, <= FWD_MAX_TUPLES */
	__u8 default_action;
	__u8 flags;       /* FWD_GEN_* */
	__u8 nsets;       /* set lookups in use, <= FWD_MAX_SET_REFS */
	__u8 pad;
	__u64 revision;
	__u8 set_ids[FWD_MAX_SET_REFS];  /* prefix set id (< FWD_MAX_SETS) */
	__u8 set_dirs[FWD_MAX_SET_REFS]; /* FWD_DIR_*: which address is looked up */
};

/* fwd_counters[slot], per CPU. */
struct fwd_counter {
	__u64 packets;    /* packets this slot decided */
	__u64 bytes;
	__u64 would_drop_packets; /* drops turned into passes by dry-run/audit */
	__u64 would_drop_bytes;
};

/* Verdict indexes of fwd_if_stats (per ingress interface). */
#define FWD_VERDICT_PASS 0
#define FWD_VERDICT_DROP 1
#define FWD_VERDICT_WOULD_DROP 2   /* passed only because of dry-run / audit */
#define FWD_MAX_IFACES 4096        /* fwd_if_stats entries */

/* fwd_if_stats[ifindex], per CPU: what the program did on each interface. */
struct fwd_if_stats {
	__u64 packets[3]; /* by FWD_VERDICT_* */
	__u64 bytes[3];
};

/* ---- events (issue 4) ------------------------------------------------------
 *
 * A record goes to the fwd_events ring buffer for every verdict of a rule
 * with FWD_RULE_LOG, every "would drop" (dry-run / audit), and every drop by
 * the default action in a generation with FWD_GEN_LOG_DEFAULT ("logged
 * verdicts"). A per-CPU token bucket caps records per second; every logged
 * verdict ends in exactly one fwd_event_stats counter:
 * emitted + suppressed + ringbuf_full == logged verdicts.
 */
#define FWD_EVENTS_SIZE 4194304    /* fwd_events bytes (power of 2, pages); settable before load */
#define FWD_EVENT_RATE 100000      /* default records per second per CPU */
#define FWD_EVENT_BURST 10000      /* default bucket depth (records) per CPU */
#define FWD_EVENT_MAX_RATE 100000000   /* limits that keep the bucket's */
#define FWD_EVENT_MAX_BURST 1000000000 /* fixed point from overflowing */
#define FWD_EVENT_MAX_GAP_S 16     /* idle seconds the bucket refills for, at most */

/* fwd_event.flags */
#define FWD_EV_DRY_RUN (1 << 0)    /* the generation is in dry-run */
#define FWD_EV_WOULD_DROP (1 << 1) /* a drop turned into a pass by dry-run / audit */
#define FWD_EV_DEFAULT (1 << 2)    /* no rule matched: the default action decided */
#define FWD_EV_MALFORMED (1 << 3)  /* malformed packet (slot FWD_SLOT_MALFORMED) */

/* One ring buffer record (64 bytes; the ring adds an 8-byte header). */
struct fwd_event {
	__u64 time_ns;    /* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
	__u32 ifindex;    /* ingress interface */
	__u32 slot;       /* counter slot that decided (rule or reserved) */
	__u8 src[16];     /* as in fwd_key: network order, IPv4-mapped */
	__u8 dst[16];
	__u32 len;        /* frame length in bytes */
	__u16 sport;      /* host order; ICMP type when l4 & FWD_L4_ICMP */
	__u16 dport;      /* host order; ICMP code when l4 & FWD_L4_ICMP */
	__u8 proto;
	__u8 tcp_flags;
	__u8 action;      /* FWD_ACT_* of the deciding rule / default */
	__u8 flags;       /* FWD_EV_* */
	__u8 l4;          /* FWD_L4_* bits of the packet key */
	__u8 pad[3];
};

/* fwd_event_stats[0], per CPU: where each logged verdict went. */
struct fwd_event_stats {
	__u64 emitted;      /* records submitted to fwd_events */
	__u64 suppressed;   /* refused by the per-CPU budget */
	__u64 ringbuf_full; /* bpf_ringbuf_reserve failed (consumer too slow) */
};

/* The budget, a const volatile in section .rodata.events: set before load. */
struct fwd_event_config {
	__u64 rate;       /* records per second per CPU (0: none) */
	__u64 burst;      /* bucket depth in records */
};

/* fwd_event_bucket[0], per CPU: token bucket state (kernel-private). */
struct fwd_event_bucket {
	__u64 credit;     /* tokens * 1e9 (one record costs 1e9) */
	__u64 last_ns;    /* last refill */
};

/*
 * The failsafe (fwd agent --failsafe), a const volatile in section
 * .rodata.failsafe set before load: traffic no policy may drop (inbound SSH,
 * the agent's own listener, replies from etcd). A packet a policy would drop
 * passes when an entry matches it, and is counted in FWD_SLOT_FAILSAFE.
 */
#define FWD_MAX_FAILSAFE 16
#define FWD_FAILSAFE_SPORT (1 << 0) /* match the source port (replies from a server) */
#define FWD_FAILSAFE_ADDR (1 << 1)  /* and the source address, family included */

struct fwd_failsafe_entry {
	__u8 proto;       /* IPPROTO_TCP / UDP / SCTP */
	__u8 flags;       /* FWD_FAILSAFE_* */
	__u16 port;       /* host order: destination port, or source with _SPORT */
	__u8 addr[16];    /* with _ADDR: the source, IPv4-mapped for IPv4 */
	__u8 v6;          /* with _ADDR: 1 for an IPv6 address */
	__u8 pad[3];
};

struct fwd_failsafe_config {
	__u32 count;      /* entries in use (0: no failsafe) */
	__u32 pad;
	struct fwd_failsafe_entry entries[FWD_MAX_FAILSAFE];
};

#endif /* FWD_H */
