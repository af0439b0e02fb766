/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The reference programs of bench/dataplane, compiled by the benchmark itself:
 *   xdp_drop - the bare program every cost is compared with;
 *   xdp_pass - enables veth's NAPI on a receiver without a filter of its own
 *              (nftables runs behind it: a veth only takes XDP frames when its
 *              peer has an XDP program or GRO enabled);
 *   xdp_tx   - the traffic generator: BPF_PROG_TEST_RUN with
 *              BPF_F_TEST_XDP_LIVE_FRAMES turns XDP_TX into a real transmit.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("xdp")
int xdp_drop(struct xdp_md *ctx)
{
	return XDP_DROP;
}

SEC("xdp")
int xdp_pass(struct xdp_md *ctx)
{
	return XDP_PASS;
}

SEC("xdp")
int xdp_tx(struct xdp_md *ctx)
{
	return XDP_TX;
}

char _license[] SEC("license") = "GPL";
