// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * fwd.bpf.c - the XDP data plane: parse, classify (tuple-space search),
 * count, decide.
 *
 * The packet semantics implemented here are the contract in bpf/README.md
 * ("Packet semantics", "Classification"); fwd/policy/reference.py mirrors
 * them in Python and the BPF tests compare the two. Every struct and
 * constant shared with the agent comes from fwd.h.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "fwd.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* ---- maps (layout: bpf/README.md "Classification") ---------------------- */

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct fwd_live);
} fwd_live SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, struct fwd_gen_config);
} fwd_gen SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2 * FWD_MAX_TUPLES);
	__type(key, __u32);
	__type(value, struct fwd_tuple);
} fwd_tuples SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, FWD_DEFAULT_RULE_ENTRIES);
	__type(key, struct fwd_key);
	__type(value, struct fwd_entry);
} fwd_rules SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, FWD_DEFAULT_SET_ENTRIES);
	__type(key, struct fwd_set_key);
	__type(value, __u8);
} fwd_sets SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, FWD_MAX_SLOTS);
	__type(key, __u32);
	__type(value, struct fwd_counter);
} fwd_counters SEC(".maps");

/* Verdicts per ingress interface (bpf/README.md "Events and interface counters"). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, FWD_MAX_IFACES);
	__type(key, __u32);
	__type(value, struct fwd_if_stats);
} fwd_if_stats SEC(".maps");

/* Event records; the agent may resize it before load. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, FWD_EVENTS_SIZE);
} fwd_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct fwd_event_stats);
} fwd_event_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct fwd_event_bucket);
} fwd_event_bucket SEC(".maps");

/* The event budget: its own section, so the agent can set it before load
 * (map ".rodata.events") without knowing the layout of other globals. */
const volatile struct fwd_event_config fwd_event_config SEC(".rodata.events") = {
	.rate = FWD_EVENT_RATE,
	.burst = FWD_EVENT_BURST,
};

/* The failsafe: set before load (map ".rodata.failsafe"); empty by default. */
const volatile struct fwd_failsafe_config fwd_failsafe SEC(".rodata.failsafe") = {
	.count = 0,
};

/* ---- header layouts not exported by the uapi headers -------------------- */

#define ETH_P_8021Q_ 0x8100
#define ETH_P_8021AD_ 0x88a8

struct vlan_tag {
	__be16 tci;
	__be16 encap_proto;
};

struct ipv6_frag {
	__u8 nexthdr;
	__u8 reserved;
	__be16 frag_off; /* offset << 3 | res | M */
	__be32 identification;
};

#define IPV4_MF 0x2000
#define IPV4_OFFSET 0x1fff
#define IPV6_FRAG_OFFSET 0xfff8

#define PROTO_HOPOPTS 0
#define PROTO_ICMP 1
#define PROTO_TCP 6
#define PROTO_UDP 17
#define PROTO_ROUTING 43
#define PROTO_FRAGMENT 44
#define PROTO_AH 51
#define PROTO_ICMPV6 58
#define PROTO_DSTOPTS 60
#define PROTO_SCTP 132

/* What parsing concluded about a packet. */
enum pkt_kind {
	PKT_IP,
	PKT_MALFORMED,
	PKT_NON_IP,
};

/* ---- bounds-checked cursor ---------------------------------------------- */

/*
 * A cursor over [pos, end). Every read goes through cursor_take/peek, which
 * compare against end before handing out a pointer, so the verifier sees an
 * explicit bounds check before each header access.
 */
struct cursor {
	void *pos;
	void *end;
};

/* Return pos and advance by len, or NULL (cursor unchanged) if fewer remain. */
static __always_inline void *cursor_take(struct cursor *c, __u32 len)
{
	void *p = c->pos;

	if (p + len > c->end)
		return NULL;
	c->pos = p + len;
	return p;
}

/* Return pos if len bytes remain, without advancing. */
static __always_inline void *cursor_peek(struct cursor *c, __u32 len)
{
	void *p = c->pos;

	if (p + len > c->end)
		return NULL;
	return p;
}

/* ---- parsing: fills the packet key -------------------------------------- */

/* Ethernet plus up to FWD_MAX_VLAN tags; returns the inner EtherType (network order). */
static __always_inline int parse_eth(struct cursor *c, __be16 *ethertype)
{
	struct ethhdr *eth = cursor_take(c, sizeof(*eth));
	__be16 proto;
	int i;

	/* Fewer than 14 bytes: malformed. */
	if (!eth)
		return PKT_MALFORMED;
	proto = eth->h_proto;

	/* Skip up to two tags; a truncated tag is malformed. A third tag falls
	 * through as an unknown EtherType, i.e. non-IP. */
#pragma unroll
	for (i = 0; i < FWD_MAX_VLAN; i++) {
		struct vlan_tag *tag;

		if (proto != bpf_htons(ETH_P_8021Q_) && proto != bpf_htons(ETH_P_8021AD_))
			break;
		tag = cursor_take(c, sizeof(*tag));
		if (!tag)
			return PKT_MALFORMED;
		proto = tag->encap_proto;
	}
	*ethertype = proto;
	return PKT_IP;
}

/* IPv4: version, ihl, addresses (IPv4-mapped), fragment bits, protocol. */
static __always_inline int parse_ipv4(struct cursor *c, struct fwd_key *key)
{
	struct iphdr *ip = cursor_peek(c, sizeof(*ip));
	__u32 hlen;
	__u16 frag;

	/* 20 bytes, version 4, ihl >= 5 and ihl * 4 bytes present. */
	if (!ip)
		return PKT_MALFORMED;
	if (ip->version != 4 || ip->ihl < 5)
		return PKT_MALFORMED;
	hlen = (__u32)ip->ihl * 4;
	if (!cursor_take(c, hlen))
		return PKT_MALFORMED;

	/* ::ffff:a.b.c.d, so one prefix length covers both families. */
	((__u32 *)key->src)[2] = bpf_htonl(0x0000ffff);
	((__u32 *)key->src)[3] = ip->saddr;
	((__u32 *)key->dst)[2] = bpf_htonl(0x0000ffff);
	((__u32 *)key->dst)[3] = ip->daddr;
	key->proto = ip->protocol;

	/* MF or a non-zero offset: a fragment; a non-zero offset: no L4 header. */
	frag = bpf_ntohs(ip->frag_off);
	if (frag & (IPV4_MF | IPV4_OFFSET))
		key->l4 |= FWD_L4_FRAG;
	if (frag & IPV4_OFFSET)
		key->l4 |= FWD_L4_LATER_FRAG;
	return PKT_IP;
}

static __always_inline int ipv6_is_ext(__u8 nh)
{
	return nh == PROTO_HOPOPTS || nh == PROTO_ROUTING || nh == PROTO_DSTOPTS ||
	       nh == PROTO_AH || nh == PROTO_FRAGMENT;
}

/* IPv6: version, addresses, then a bounded walk of extension headers. */
static __always_inline int parse_ipv6(struct cursor *c, struct fwd_key *key)
{
	struct ipv6hdr *ip6 = cursor_take(c, sizeof(*ip6));
	__u8 nh;
	int i;

	/* 40 bytes and version 6. */
	if (!ip6)
		return PKT_MALFORMED;
	if (ip6->version != 6)
		return PKT_MALFORMED;
	__builtin_memcpy(key->src, &ip6->saddr, 16);
	__builtin_memcpy(key->dst, &ip6->daddr, 16);
	key->l4 |= FWD_L4_IPV6; /* family: IPv4-mapped sources must not pass as IPv4 */
	nh = ip6->nexthdr;

	/* Walk at most FWD_MAX_IPV6_EXT extension headers. */
	for (i = 0; i < FWD_MAX_IPV6_EXT; i++) {
		struct ipv6_opt_hdr *opt;
		struct ipv6_frag *fh;
		__u32 len;

		if (!ipv6_is_ext(nh))
			break;

		if (nh == PROTO_FRAGMENT) {
			/* Fragment header: 8 bytes. A non-zero offset ends the
			 * walk: the rest is payload, its next header is the
			 * protocol. */
			fh = cursor_take(c, sizeof(*fh));
			if (!fh)
				return PKT_MALFORMED;
			key->l4 |= FWD_L4_FRAG;
			nh = fh->nexthdr;
			if (fh->frag_off & bpf_htons(IPV6_FRAG_OFFSET)) {
				key->l4 |= FWD_L4_LATER_FRAG;
				key->proto = nh;
				return PKT_IP;
			}
			continue;
		}

		/* Hop-by-hop, routing, destination options: (hdrlen + 1) * 8;
		 * AH: (hdrlen + 2) * 4. The two length bytes must be present
		 * before the length can be read. */
		opt = cursor_peek(c, sizeof(*opt));
		if (!opt)
			return PKT_MALFORMED;
		if (nh == PROTO_AH)
			len = ((__u32)opt->hdrlen + 2) * 4;
		else
			len = ((__u32)opt->hdrlen + 1) * 8;
		nh = opt->nexthdr;
		if (!cursor_take(c, len))
			return PKT_MALFORMED;
	}

	/* Still an extension header after FWD_MAX_IPV6_EXT: a seventh. */
	if (ipv6_is_ext(nh))
		return PKT_MALFORMED;
	key->proto = nh;
	return PKT_IP;
}

/* L4 fields: ports (host order), TCP flags, ICMP type/code. */
static __always_inline int parse_l4(struct cursor *c, struct fwd_key *key)
{
	struct tcphdr *tcp;
	struct udphdr *udp;
	__be16 *ports;
	__u8 *icmp;

	switch (key->proto) {
	case PROTO_TCP:
		/* 20 bytes, doff >= 5 and doff * 4 bytes present. */
		tcp = cursor_peek(c, sizeof(*tcp));
		if (!tcp || tcp->doff < 5)
			return PKT_MALFORMED;
		if (!cursor_take(c, (__u32)tcp->doff * 4))
			return PKT_MALFORMED;
		key->sport = bpf_ntohs(tcp->source);
		key->dport = bpf_ntohs(tcp->dest);
		key->tcp_flags = ((__u8 *)tcp)[13];
		key->l4 |= FWD_L4_PORTS;
		return PKT_IP;
	case PROTO_UDP:
		udp = cursor_take(c, sizeof(*udp));
		if (!udp)
			return PKT_MALFORMED;
		key->sport = bpf_ntohs(udp->source);
		key->dport = bpf_ntohs(udp->dest);
		key->l4 |= FWD_L4_PORTS;
		return PKT_IP;
	case PROTO_SCTP:
		/* 12-byte common header; ports are its first 4 bytes. */
		ports = cursor_take(c, 12);
		if (!ports)
			return PKT_MALFORMED;
		key->sport = bpf_ntohs(ports[0]);
		key->dport = bpf_ntohs(ports[1]);
		key->l4 |= FWD_L4_PORTS;
		return PKT_IP;
	case PROTO_ICMP:
	case PROTO_ICMPV6:
		/* Type, code, checksum: 4 bytes. */
		icmp = cursor_take(c, 4);
		if (!icmp)
			return PKT_MALFORMED;
		key->sport = icmp[0];
		key->dport = icmp[1];
		key->l4 |= FWD_L4_ICMP;
		return PKT_IP;
	default:
		/* Other protocols carry no L4 fields. */
		return PKT_IP;
	}
}

/* Parse the whole packet into key (zeroed by the caller). */
static __always_inline int parse_packet(struct cursor *c, struct fwd_key *key)
{
	__be16 ethertype = 0;
	int kind;

	kind = parse_eth(c, &ethertype);
	if (kind != PKT_IP)
		return kind;

	if (ethertype == bpf_htons(ETH_P_IP))
		kind = parse_ipv4(c, key);
	else if (ethertype == bpf_htons(ETH_P_IPV6))
		kind = parse_ipv6(c, key);
	else
		return PKT_NON_IP;
	if (kind != PKT_IP)
		return kind;

	/* A later fragment has no L4 header. */
	if (key->l4 & FWD_L4_LATER_FRAG)
		return PKT_IP;
	return parse_l4(c, key);
}

/* ---- classification: tuple-space search --------------------------------- */

/*
 * Why a global function with a plain bounded loop (measured on this 6.18 VM,
 * BPF_PROG_TEST_RUN, repeat 1e6 / 1e5, UDP packet, tuples without matching
 * entries, ns per packet):
 *
 *                          0 tuples   1 tuple   16 tuples   256 tuples
 *   bpf_loop callback         36         76        640-740    10000-10500
 *   global fn, bounded loop   34         74        530-540     7650-7800
 *
 * The same bounded loop inlined into fwd_xdp does not verify: the verifier
 * walks all 256 iterations once per parse outcome and hits its 1M
 * instruction limit. A global (non-static, noinline) function is verified
 * once, on its own, with the context's contents unknown, so the loop costs
 * the verifier 256 iterations of one state. Masking the key word by word
 * instead of field by field measured the same, so the field-wise form stays.
 */

/* The search's input and result; lives on fwd_xdp's stack. */
struct classify_ctx {
	struct fwd_key key;      /* the packet key, unmasked (set bits filled here) */
	__u32 gen;               /* live generation, read once by fwd_xdp */
	__u32 ntuples;           /* tuples in use, <= FWD_MAX_TUPLES */
	__u32 nsets;             /* set lookups in use, <= FWD_MAX_SET_REFS */
	__u8 set_ids[FWD_MAX_SET_REFS];
	__u8 set_dirs[FWD_MAX_SET_REFS];
	struct fwd_verdict best; /* lowest-priority match so far (prio ABSENT: none) */
};

/*
 * Set membership: one LPM lookup per (set, direction) the generation uses;
 * a hit sets the set's bit in key.src_sets / key.dst_sets, which tuples
 * mask like any other field. The tag selects set, generation and family, so
 * a lookup sees exactly one generation's elements of one family.
 */
static __always_inline void lookup_sets(struct classify_ctx *cc)
{
	struct fwd_key *k = &cc->key;
	struct fwd_set_key sk;
	__u32 fam = (k->l4 & FWD_L4_IPV6) ? 6 : 4;
	int i;

	for (i = 0; i < FWD_MAX_SET_REFS; i++) {
		__u8 *addr, id;

		if (i >= cc->nsets)
			break;
		id = cc->set_ids[i] & (FWD_MAX_SETS - 1);
		addr = cc->set_dirs[i] == FWD_DIR_DST ? k->dst : k->src;
		__builtin_memset(&sk, 0, sizeof(sk));
		sk.tag = bpf_htonl((__u32)id << 16 | (cc->gen & 1) << 8 | fam);
		if (fam == 4) {
			/* IPv4 is stored as its 4 bytes (the mapped form's tail). */
			sk.prefixlen = 32 + 32;
			__builtin_memcpy(sk.addr, addr + 12, 4);
		} else {
			sk.prefixlen = 32 + 128;
			__builtin_memcpy(sk.addr, addr, 16);
		}
		if (!bpf_map_lookup_elem(&fwd_sets, &sk))
			continue;
		if (cc->set_dirs[i] == FWD_DIR_DST)
			k->dst_sets |= 1 << id;
		else
			k->src_sets |= 1 << id;
	}
}

/*
 * Tuple i: mask the packet key, look the result up, keep the best
 * priority of this generation's verdicts. Returns 1 to stop the search.
 */
static __always_inline int classify_tuple(struct classify_ctx *cc, __u32 i)
{
	const struct fwd_key *k = &cc->key;
	const struct fwd_tuple *t;
	const struct fwd_entry *e;
	const struct fwd_verdict *v;
	struct fwd_key mk;
	__u32 idx;
	int w;

	if (i >= cc->ntuples)
		return 1;
	idx = (cc->gen & 1) * FWD_MAX_TUPLES + i;
	t = bpf_map_lookup_elem(&fwd_tuples, &idx);
	if (!t)
		return 1;

	/* Tuples are sorted by min_prio: none from here on can beat the best
	 * (an absent best has prio U32_MAX, above every min_prio). */
	if (cc->best.prio <= t->min_prio)
		return 1;

	/* Masked key: every field ANDed with its mask; the tuple field names
	 * the tuple; pad stays 0. Every byte of mk is written, so no stale
	 * stack bytes reach the hash. */
	mk.tuple = t->tuple_id;
	mk.ifindex = k->ifindex & t->ifindex_mask;
#pragma unroll
	for (w = 0; w < 4; w++) {
		((__u32 *)mk.src)[w] = ((const __u32 *)k->src)[w] & ((const __u32 *)t->src_mask)[w];
		((__u32 *)mk.dst)[w] = ((const __u32 *)k->dst)[w] & ((const __u32 *)t->dst_mask)[w];
	}
	mk.sport = k->sport & t->sport_mask;
	mk.dport = k->dport & t->dport_mask;
	mk.src_sets = k->src_sets & t->src_sets_mask;
	mk.dst_sets = k->dst_sets & t->dst_sets_mask;
	mk.proto = k->proto & t->proto_mask;
	mk.tcp_flags = k->tcp_flags & t->tcp_flags_mask;
	mk.l4 = k->l4 & t->l4_mask;
	mk.pad = 0;

	/* Keep the lowest priority over all tuples; an entry absent from this
	 * generation carries FWD_PRIO_ABSENT and never wins. */
	e = bpf_map_lookup_elem(&fwd_rules, &mk);
	if (e) {
		v = &e->v[cc->gen & 1];
		if (v->prio < cc->best.prio)
			cc->best = *v;
	}
	return 0;
}

/* Set lookups, then the tuple-space search over cc->ntuples tuples (global: see above). */
__noinline int fwd_classify(struct classify_ctx *cc)
{
	__u32 i;

	/* A global function's pointer argument may be NULL as far as the
	 * verifier knows. */
	if (!cc)
		return 0;
	if (cc->nsets)
		lookup_sets(cc);
	for (i = 0; i < FWD_MAX_TUPLES; i++)
		if (classify_tuple(cc, i))
			break;
	return 0;
}

/* ---- counting ------------------------------------------------------------ */

/* Per-CPU slot: plain increments are race-free. */
static __always_inline void count(__u32 slot, __u64 bytes, int would_drop)
{
	struct fwd_counter *cnt = bpf_map_lookup_elem(&fwd_counters, &slot);

	if (!cnt)
		return;
	cnt->packets += 1;
	cnt->bytes += bytes;
	if (would_drop) {
		cnt->would_drop_packets += 1;
		cnt->would_drop_bytes += bytes;
	}
}

/* ---- the verdict stage: interface counters and events ------------------- */

#define NSEC_PER_SEC 1000000000ULL

/* Per-interface verdict counters; the entry is created on first sight. */
static __always_inline void count_iface(__u32 ifindex, __u32 verdict, __u64 bytes)
{
	struct fwd_if_stats *st = bpf_map_lookup_elem(&fwd_if_stats, &ifindex);

	if (!st) {
		struct fwd_if_stats zero = {};

		/* NOEXIST: another CPU may have created it meanwhile; the map
		 * being full (FWD_MAX_IFACES) leaves the packet uncounted here. */
		bpf_map_update_elem(&fwd_if_stats, &ifindex, &zero, BPF_NOEXIST);
		st = bpf_map_lookup_elem(&fwd_if_stats, &ifindex);
		if (!st)
			return;
	}
	if (verdict > FWD_VERDICT_WOULD_DROP)
		return;
	st->packets[verdict] += 1;
	st->bytes[verdict] += bytes;
}

/*
 * Per-CPU token bucket in fixed point (credit = tokens * 1e9): refill by
 * elapsed_ns * rate, no division. A gap is counted as at most
 * FWD_EVENT_MAX_GAP_S seconds, so with rate <= FWD_EVENT_MAX_RATE and burst
 * <= FWD_EVENT_MAX_BURST nothing overflows (16e9 * 1e8 + 1e18 < 2^64).
 */
static __always_inline int take_token(struct fwd_event_bucket *b)
{
	__u64 now = bpf_ktime_get_ns();
	__u64 rate = fwd_event_config.rate;
	__u64 cap = fwd_event_config.burst * NSEC_PER_SEC;
	__u64 elapsed = now - b->last_ns;

	if (elapsed > FWD_EVENT_MAX_GAP_S * NSEC_PER_SEC)
		elapsed = FWD_EVENT_MAX_GAP_S * NSEC_PER_SEC;
	b->credit += elapsed * rate;
	if (b->credit > cap)
		b->credit = cap;
	b->last_ns = now;
	if (b->credit < NSEC_PER_SEC)
		return 0;
	b->credit -= NSEC_PER_SEC;
	return 1;
}

/* One logged verdict: a record, or a count of why there is none. */
static __always_inline void emit_event(const struct fwd_key *key, __u32 slot, __u8 action,
				       __u8 evflags, __u64 bytes)
{
	struct fwd_event_bucket *b;
	struct fwd_event_stats *st;
	struct fwd_event *e;
	__u32 zero = 0;

	st = bpf_map_lookup_elem(&fwd_event_stats, &zero);
	b = bpf_map_lookup_elem(&fwd_event_bucket, &zero);
	if (!st || !b)
		return;
	if (!take_token(b)) {
		st->suppressed += 1;
		return;
	}
	e = bpf_ringbuf_reserve(&fwd_events, sizeof(*e), 0);
	if (!e) {
		st->ringbuf_full += 1;
		return;
	}
	/* Every byte is written: the record must not leak stale ring memory. */
	e->time_ns = bpf_ktime_get_ns();
	e->ifindex = key->ifindex;
	e->slot = slot;
	__builtin_memcpy(e->src, key->src, 16);
	__builtin_memcpy(e->dst, key->dst, 16);
	e->len = bytes;
	e->sport = key->sport;
	e->dport = key->dport;
	e->proto = key->proto;
	e->tcp_flags = key->tcp_flags;
	e->action = action;
	e->flags = evflags;
	e->l4 = key->l4;
	e->pad[0] = 0;
	e->pad[1] = 0;
	e->pad[2] = 0;
	/* Default wake-up policy: the reader is woken only when it has caught
	 * up, so a flood costs one wake-up per batch, not per record. */
	bpf_ringbuf_submit(e, 0);
	st->emitted += 1;
}

/*
 * The last step for every IP packet (malformed included): rule counters,
 * interface counters, the event if this verdict is logged, and the XDP
 * action. evflags carries FWD_EV_*; log is the rule's FWD_RULE_LOG or, for
 * a default drop, the generation's FWD_GEN_LOG_DEFAULT.
 */
static __always_inline int finish(const struct fwd_key *key, __u32 slot, __u8 action,
				  __u8 evflags, int log, __u64 bytes)
{
	int would_drop = !!(evflags & FWD_EV_WOULD_DROP);
	__u32 verdict;

	count(slot, bytes, would_drop);
	if (would_drop)
		verdict = FWD_VERDICT_WOULD_DROP;
	else if (action == FWD_ACT_DROP)
		verdict = FWD_VERDICT_DROP;
	else
		verdict = FWD_VERDICT_PASS;
	count_iface(key->ifindex, verdict, bytes);
	if (log || would_drop)
		emit_event(key, slot, action, evflags, bytes);
	return verdict == FWD_VERDICT_DROP ? XDP_DROP : XDP_PASS;
}

/*
 * Whether the failsafe keeps this packet: its protocol and port (destination,
 * or source for replies) equal an entry's, and its source the entry's address
 * when the entry names one. Read-only settings: with count 0 the verifier
 * drops the whole check.
 */
static __always_inline int failsafe_match(const struct fwd_key *key)
{
	__u32 i, n = fwd_failsafe.count;

	if (!n || !(key->l4 & FWD_L4_PORTS))
		return 0;
	for (i = 0; i < FWD_MAX_FAILSAFE; i++) {
		const volatile struct fwd_failsafe_entry *e = &fwd_failsafe.entries[i];
		const __u32 *want, *src = (const __u32 *)key->src;
		__u16 port;

		if (i >= n)
			break;
		if (e->proto != key->proto)
			continue;
		port = (e->flags & FWD_FAILSAFE_SPORT) ? key->sport : key->dport;
		if (port != e->port)
			continue;
		if (e->flags & FWD_FAILSAFE_ADDR) {
			want = (const __u32 *)e->addr;
			if (!e->v6 != !(key->l4 & FWD_L4_IPV6))
				continue;
			if (src[0] != want[0] || src[1] != want[1] || src[2] != want[2] ||
			    src[3] != want[3])
				continue;
		}
		return 1;
	}
	return 0;
}

/* ---- the program ---------------------------------------------------------- */

SEC("xdp")
int fwd_xdp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct cursor c = { .pos = data, .end = data_end };
	__u64 bytes = data_end - data;
	const struct fwd_gen_config *cfg;
	const struct fwd_live *live;
	struct classify_ctx cc;
	__u32 zero = 0, gen = 0, slot;
	__u8 action, gflags = 0, default_action = FWD_ACT_ALLOW, evflags;
	int kind, would_drop, found = 0, kept = 0, log;

	/* 1. Parse into a fully zeroed key (pad and unset fields must be 0:
	 *    the key is hashed as raw bytes). */
	__builtin_memset(&cc, 0, sizeof(cc));
	cc.best.prio = FWD_PRIO_ABSENT;
	cc.key.ifindex = ctx->ingress_ifindex;
	kind = parse_packet(&c, &cc.key);

	/* 2. Non-IP is never filtered. */
	if (kind == PKT_NON_IP) {
		count(FWD_SLOT_NON_IP, bytes, 0);
		count_iface(cc.key.ifindex, FWD_VERDICT_PASS, bytes);
		return XDP_PASS;
	}

	/* 3. Read the live generation exactly once (volatile: one load), then
	 *    its config; missing entries mean gen 0 / default allow. */
	live = bpf_map_lookup_elem(&fwd_live, &zero);
	if (live)
		gen = *(volatile const __u32 *)&live->gen;
	cfg = bpf_map_lookup_elem(&fwd_gen, &gen);
	if (cfg) {
		cc.ntuples = cfg->ntuples;
		cc.nsets = cfg->nsets;
		__builtin_memcpy(cc.set_ids, cfg->set_ids, sizeof(cc.set_ids));
		__builtin_memcpy(cc.set_dirs, cfg->set_dirs, sizeof(cc.set_dirs));
		default_action = cfg->default_action;
		gflags = cfg->flags;
	}

	if (kind == PKT_MALFORMED) {
		/* 4a. Malformed: drop (only a dry-run generation softens it). */
		slot = FWD_SLOT_MALFORMED;
		action = FWD_ACT_DROP;
		would_drop = !!(gflags & FWD_GEN_DRY_RUN);
	} else {
		/* 4b. Classify: tuples gen*256 .. gen*256+ntuples-1 (the call
		 *     is skipped for an empty policy: it saves ~8 ns). */
		cc.gen = gen;
		if (cc.ntuples > FWD_MAX_TUPLES)
			cc.ntuples = FWD_MAX_TUPLES;
		if (cc.nsets > FWD_MAX_SET_REFS)
			cc.nsets = FWD_MAX_SET_REFS;
		if (cc.ntuples)
			fwd_classify(&cc);

		found = cc.best.prio != FWD_PRIO_ABSENT;
		if (found) {
			slot = cc.best.slot;
			action = cc.best.action;
		} else {
			slot = FWD_SLOT_DEFAULT;
			action = default_action;
		}
		would_drop = action == FWD_ACT_DROP &&
			     ((gflags & FWD_GEN_DRY_RUN) ||
			      (found && (cc.best.flags & FWD_RULE_AUDIT)));

		/* 4c. The failsafe: a drop (or would-be drop) of traffic no policy
		 *     may drop passes, counted in its own slot. Checked only on
		 *     drops, so allowed traffic keeps its rule's counter. */
		if (action == FWD_ACT_DROP && failsafe_match(&cc.key)) {
			kept = 1;
			slot = FWD_SLOT_FAILSAFE;
			action = FWD_ACT_ALLOW;
			would_drop = 0;
		}
	}

	/* 5. Count, log, then decide: a would-be drop passes. */
	evflags = (gflags & FWD_GEN_DRY_RUN ? FWD_EV_DRY_RUN : 0) |
		  (would_drop ? FWD_EV_WOULD_DROP : 0);
	if (kind == PKT_MALFORMED) {
		evflags |= FWD_EV_MALFORMED;
		log = 0;
	} else if (kept) {
		log = 0;
	} else if (found) {
		log = !!(cc.best.flags & FWD_RULE_LOG);
	} else {
		evflags |= FWD_EV_DEFAULT;
		log = action == FWD_ACT_DROP && (gflags & FWD_GEN_LOG_DEFAULT);
	}
	return finish(&cc.key, slot, action, evflags, log, bytes);
}
