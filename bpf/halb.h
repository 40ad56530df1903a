/* halb.h: the layout of every map that halb_lb.c shares with the loader.
 *
 * bpf2go turns these types into Go (loader/halb_bpfel.go), so this file is
 * the one contract between the data path and its control plane; change a
 * type here and the loader follows at the next `make generate`.
 *
 * Conventions:
 *  - An address is 16 bytes: IPv6 as is, IPv4 in its IPv4-mapped form
 *    ::ffff:a.b.c.d (RFC 4291 §2.5.5.2), so one key layout serves both
 *    families. Addresses are in network byte order; ports are in host byte
 *    order, so that `bpftool map dump` shows port 80 and not 20480.
 *  - Hash keys are compared byte for byte, so every key spells out its
 *    padding as a field, and whoever builds a key zeroes it.
 *  - Backend id 0 means "no backend": a Maglev table fresh from the kernel is
 *    all zeros and must send nothing anywhere.
 *  - No bitfields: their order follows the compiler target, and both the
 *    little- and the big-endian object are built from this file.
 */
#ifndef HALB_H
#define HALB_H

#include <linux/types.h>

/* The loader writes and reads every struct below through the Go types that
 * bpf2go makes of them (loader/halb_bpfel.go), byte for byte. Each struct's
 * size, and the offset of each field that follows a field of another size,
 * is asserted here: a change that moves a byte fails to compile until the
 * assertion changes with it, so that the change is made on purpose, and a
 * hole the compiler would add (a hash key that carries garbage) shows.
 * loader's TestMapLayout checks the Go side against the same numbers. */
#define HALB_ASSERT_SIZE(type, size) \
	_Static_assert(sizeof(type) == (size), #type " is not " #size " bytes")
#define HALB_ASSERT_OFFSET(type, field, off) \
	_Static_assert(__builtin_offsetof(type, field) == (off), \
		       #type "." #field " is not at " #off)

/* Sizes of the fixed maps. The loader may change the Maglev table size
 * (datapath.maglev_table_size), the conntrack size
 * (datapath.conntrack_entries) and the size of every map indexed by
 * backend id (datapath.max_backends) at load time. */
#define HALB_MAX_SERVICES 1024
#define HALB_MAX_BACKENDS 4096
#define HALB_MAX_TX_PORTS 64
#define HALB_CT_ENTRIES 65536
#define HALB_MAGLEV_SIZE 65537 /* prime, as Maglev needs */
#define HALB_MAX_LOCAL_MACS 1024 /* interfaces and the VMACs on them */

/* The small enums are packed to one byte, so that map records can hold them
 * by their own type and `bpftool map dump` prints their names. */
enum __attribute__((packed)) family {
	FAMILY_IPV4 = 4,
	FAMILY_IPV6 = 6,
};

/* How a service reaches its backends. 0 is no mode at all, so a record that
 * was never written forwards nothing. */
enum __attribute__((packed)) forward_mode {
	FORWARD_NONE = 0,
	FORWARD_DR = 1,  /* rewrite the MACs; the backend holds the VIP itself */
	FORWARD_TUN = 2, /* IPIP (RFC 2003) for IPv4 services, IP6IP6 (RFC 2473)
			  * for IPv6 ones: the backend holds the VIP and
			  * decapsulates */
	FORWARD_NAT = 3, /* rewrite the destination to the backend's address
			  * and port; its replies come back through the
			  * balancer, which rewrites their source to the
			  * VIP's (halb_nat_replies) */
	FORWARD_FULLNAT = 4, /* as NAT, and the source rewritten to an
			      * address of the balancer (the backend's src)
			      * and a port of its pool, so that the backend
			      * needs no route back through the balancer: its
			      * replies come to that address and port, which
			      * halb_fnat turns back to the client's */
};

enum __attribute__((packed)) service_flags {
	/* Persistence: hash the client address only, so every flow of one
	 * client meets the same backend while the Maglev table holds still. */
	SERVICE_F_SOURCE_HASH = 1 << 0,
};

enum __attribute__((packed)) backend_flags {
	/* The record is in use. A conntrack entry that names a backend without
	 * it is scheduled again, so removing a backend moves its flows. A
	 * drained backend (weight 0) keeps the flag and only leaves the Maglev
	 * table: its flows stay, new ones go elsewhere. */
	BACKEND_F_ACTIVE = 1 << 0,
};

HALB_ASSERT_SIZE(enum family, 1);
HALB_ASSERT_SIZE(enum forward_mode, 1);
HALB_ASSERT_SIZE(enum service_flags, 1);
HALB_ASSERT_SIZE(enum backend_flags, 1);

/* Why halb_xdp_lb or halb_tc_lb dropped a packet: the index into halb_drops.
 * The values are kept when reasons are added, so that a counter keeps its
 * name across versions. Every reason about the packet itself (the ones
 * from DROP_IP_HEADER on, and DROP_MALFORMED) is counted only for a
 * packet to a VIP in a frame addressed to this node; anyone else's goes to
 * the kernel untouched. */
enum drop_reason {
	DROP_MALFORMED = 0,   /* to a VIP: a TCP or UDP header that its IP length
			       * says is there but the program cannot read (tc:
			       * it could not be pulled into the skb's head) */
	DROP_NO_BACKEND = 1,  /* no Maglev table, or its slot names no active backend */
	DROP_NO_TX_PORT = 2,  /* the backend's interface is missing from halb_tx_ports */
	DROP_UNSUPPORTED = 3, /* the service's forward mode is not implemented here */
	DROP_NO_ROUTE = 4,    /* TUN, NAT: the kernel has no route to the backend from
			       * the balancer's address, or does not forward
			       * (net.ipv4.conf.*.forwarding, net.ipv6.conf.*.forwarding) */
	DROP_NO_NEIGH = 5,    /* TUN and NAT, XDP: the next hop's MAC is not in the
			       * neighbour table yet (the loader asks for it) */
	DROP_TOO_BIG = 6,     /* TUN: the packet and the outer header exceed the
			       * egress MTU (NAT: the packet does), and the
			       * client was not told: tc,
			       * IPv4 without DF, an ICMP error, an IPv6
			       * packet that fits the minimum MTU */
	DROP_ENCAP = 7,       /* TUN: no room for the outer header, or a frame
			       * the tc hook cannot encapsulate; NAT, tc: a
			       * VLAN tag in the frame's data */
	DROP_TOO_BIG_ANSWERED = 8, /* TUN and NAT, XDP: as DROP_TOO_BIG, and the
				    * client was sent an ICMP "fragmentation
				    * needed" or ICMPv6 "packet too big" in
				    * its place; DROP_TOO_BIG counts those
				    * that could not be answered */
	DROP_IP_HEADER = 9,   /* to a VIP: IPv4 with a version other than 4 or
			       * a header length below 5 words (RFC 791 §3.1),
			       * IPv6 with a version other than 6 */
	DROP_IP_LENGTH = 10,  /* to a VIP: an IPv4 total length or IPv6 payload
			       * length that runs past the frame, or that
			       * leaves no room for the IP header and 8 bytes
			       * of transport header. Bytes past the length
			       * (Ethernet padding) are fine. */
	DROP_TCP_HEADER = 11, /* to a VIP: TCP with a data offset below 5 words
			       * or past the segment (RFC 9293 §3.1), or a
			       * segment too short for the header */
	DROP_UDP_HEADER = 12, /* to a VIP: UDP whose length is below 8 or runs
			       * past the IP payload (RFC 768) */
	DROP_BAD_SOURCE = 13, /* to a VIP: from an address no client can have
			       * (halb_checks.h says which and why) */
	DROP_VIP_SOURCE = 14, /* for a service: from one of the VIPs, which
			       * only a forged or looped packet carries */
	DROP_REPLY_NO_ROUTE = 15, /* NAT: a backend's reply the FIB has no
				   * route for toward its client, or whose
				   * interface does not forward */
	DROP_REPLY_NO_NEIGH = 16, /* NAT, XDP: a backend's reply whose next hop
				   * toward the client has no MAC in the
				   * neighbour table yet */
	DROP_REPLY_TOO_BIG = 17,  /* NAT: a backend's reply longer than the MTU
				   * toward its client */
	DROP_NO_SPORT = 18,   /* full NAT: every source port the flow's hash
			       * may take toward its backend is held by a
			       * live flow (halb_snat_port_first, _count) */
	DROP_NAT_REPLY_WRONG_IF = 19, /* NAT and full NAT: a frame to this node
				       * from a backend's address and port (a
				       * reply, as its source says) that came in
				       * on an interface other than the one the
				       * balancer reaches that backend through
				       * (halb_backends' ifindex): a client
				       * forging a backend's source, which
				       * translated would leave from the VIP
				       * toward any address it chose. Not
				       * translated: it goes to the kernel as
				       * it came, which treats it as without
				       * halb; counted here, as no other reason
				       * is, although the program passes it. */
	DROP_REASONS,         /* the number of reasons: the size of halb_drops */
};

/* What halb_xdp_lb or halb_tc_lb did besides forwarding and dropping: the
 * index into halb_events. */
enum event {
	/* halb_tc_lb: a TUN packet whose next hop the neighbour table lacks,
	 * handed to the kernel (bpf_redirect_neigh), which resolves it and
	 * sends the packet on. */
	EVENT_NEIGH_RESOLVE = 0,
	/* An ICMP "fragmentation needed" or ICMPv6 "packet too big" about a
	 * flow of a service, sent to the flow's backend. */
	EVENT_ICMP_TOO_BIG = 1,
	/* A frame that halb_xdp_lb or halb_tc_lb would have balanced or
	 * dropped, but whose destination MAC is in halb_local_macs for no
	 * interface it came in on: a broadcast, a multicast, or a unicast
	 * frame for another host (flooded by a switch that has not learnt
	 * the MAC, or seen in promiscuous mode). It goes to the kernel
	 * untouched, as every frame that is not this node's must: the node
	 * the frame is for balances it. Counted rather than dropped, so
	 * that a node that sees its VIPs' traffic go elsewhere can tell. */
	EVENT_OTHER_HOST = 2,
	/* NAT: a new flow to a service from one of its backends' addresses
	 * (a backend as a client of a VIP), handed to the kernel untouched.
	 * Translated, the backend it met would answer it directly, from its
	 * own address, and the connection would never open. */
	EVENT_NAT_HAIRPIN = 3,
	/* NAT: an ICMP error (fragmentation needed, packet too big, port
	 * unreachable) about a NAT flow, translated with the packet it quotes
	 * and sent on, either way. */
	EVENT_NAT_ICMP = 4,
	EVENTS, /* the number of events: the size of halb_events */
};

/* A 16-byte address; words lets the program copy and hash it four bytes at
 * a time. */
union addr {
	__u8 bytes[16];
	__be32 words[4];
};
HALB_ASSERT_SIZE(union addr, 16);

/* halb_services key: one virtual service. */
struct service_key {
	union addr vip;
	__u16 port;         /* host byte order */
	__u8 proto;         /* IPPROTO_TCP or IPPROTO_UDP */
	enum family family;
};
HALB_ASSERT_SIZE(struct service_key, 20);
HALB_ASSERT_OFFSET(struct service_key, port, 16);
HALB_ASSERT_OFFSET(struct service_key, proto, 18);
HALB_ASSERT_OFFSET(struct service_key, family, 19);

/* halb_services value. */
struct service {
	__u32 id; /* index into halb_maglev and halb_service_stats */
	enum forward_mode forward;
	enum service_flags flags; /* a set of flags */
	__u16 pad;
};
HALB_ASSERT_SIZE(struct service, 8);
HALB_ASSERT_OFFSET(struct service, forward, 4);
HALB_ASSERT_OFFSET(struct service, flags, 5);

/* halb_service_ids value, indexed by service id: the key that leads to the
 * service, and its record. A packet whose flow halb_ct knows reaches its
 * service through its backend's service id and this array, and needs no
 * second hash lookup; the key must be the packet's, so that the array
 * leads where halb_services would. The loader writes an entry after the
 * service's halb_services entry and clears it before that goes; an entry
 * never written is all zeros, and its family matches no packet. */
struct service_slot {
	struct service_key key;
	struct service svc;
};
HALB_ASSERT_SIZE(struct service_slot, 28);
HALB_ASSERT_OFFSET(struct service_slot, svc, 20);

/* halb_vips key. The set of VIPs lets the program tell a broken packet to a
 * VIP (dropped and counted) from a broken packet to anyone else (left to the
 * stack) before it can read the port. */
struct vip_key {
	union addr addr;
	enum family family;
	__u8 pad[3];
};
HALB_ASSERT_SIZE(struct vip_key, 20);
HALB_ASSERT_OFFSET(struct vip_key, family, 16);

/* halb_vips value. */
struct vip {
	__u32 services; /* how many halb_services entries use this VIP; the
			 * loader keeps the count */
};
HALB_ASSERT_SIZE(struct vip, 4);

/* halb_backends value, indexed by backend id. The program reads flags,
 * ifindex and service; DR reads the MACs, TUN the addresses, NAT the
 * addresses and the port;
 * port and weight are there for bpftool readers and for a restarted
 * loader, which rebuilds its view of what it programmed from the maps
 * alone. */
struct backend {
	union addr addr;  /* the backend's own address (the tunnel end for TUN,
			   * the new destination for NAT) */
	union addr src;   /* TUN: the balancer's address toward the backend, the
			   * outer source; NAT: the same, the source of the
			   * FIB lookup for its next hop */
	enum family family;
	enum backend_flags flags; /* a set of flags */
	__u8 mac[6];      /* DR: the backend's MAC, the destination */
	__u8 src_mac[6];  /* DR: the MAC of the interface that reaches it */
	__u16 port;       /* host byte order; DR and TUN leave the packet's
			   * port as is, NAT rewrites it to this one */
	__u32 ifindex;    /* the interface that reaches it (TUN: reaches its
			   * next hop): XDP_TX (tc: a redirect to its egress)
			   * when it is the one the packet came in on, else a
			   * redirect through halb_tx_ports. TUN asks the FIB
			   * for the next hop out of it. */
	__u32 service;    /* the id of the service it serves: conntrack
			   * entries that name the backend count for this
			   * service only */
	__u32 weight;     /* its share of the Maglev table; 0: drained */
};
HALB_ASSERT_SIZE(struct backend, 60);
HALB_ASSERT_OFFSET(struct backend, family, 32);
HALB_ASSERT_OFFSET(struct backend, flags, 33);
HALB_ASSERT_OFFSET(struct backend, mac, 34);
HALB_ASSERT_OFFSET(struct backend, src_mac, 40);
HALB_ASSERT_OFFSET(struct backend, port, 46);
HALB_ASSERT_OFFSET(struct backend, ifindex, 48);
HALB_ASSERT_OFFSET(struct backend, service, 52);
HALB_ASSERT_OFFSET(struct backend, weight, 56);

/* halb_nat_replies key: a NAT backend's address, port and protocol, the
 * source of its replies. An entry with port 0 and protocol 0 says only
 * that the address is a NAT backend's (the hairpin check). */
struct backend_key {
	union addr addr;
	__u16 port;   /* host byte order */
	__u8 proto;   /* IPPROTO_TCP, IPPROTO_UDP, or 0 */
	enum family family;
};
HALB_ASSERT_SIZE(struct backend_key, 20);
HALB_ASSERT_OFFSET(struct backend_key, port, 16);
HALB_ASSERT_OFFSET(struct backend_key, proto, 18);
HALB_ASSERT_OFFSET(struct backend_key, family, 19);

/* halb_nat_replies value: what a NAT backend's reply is translated back
 * to. The loader refuses a backend address, port and protocol in two NAT
 * services, so one entry names one service and no reply needs per-flow
 * state to find its VIP: the entry is derived from the configuration
 * alone, and a node that becomes Master after a failover translates the
 * replies of flows it never saw. */
enum __attribute__((packed)) nat_reply_flags {
	/* The backend's service is a full NAT one: its replies come to the
	 * balancer's address and a port of the pool, and halb_fnat says
	 * which client they go back to. */
	NAT_REPLY_F_FULLNAT = 1 << 0,
};
HALB_ASSERT_SIZE(enum nat_reply_flags, 1);

struct nat_reply {
	union addr vip;
	__u16 port;       /* the service's port, host byte order */
	enum nat_reply_flags flags; /* a set of flags */
	__u8 pad;
	__u32 service;    /* the service's id */
	__u32 backend_id; /* the backend's id: halb_reply_stats' index */
};
HALB_ASSERT_SIZE(struct nat_reply, 28);
HALB_ASSERT_OFFSET(struct nat_reply, port, 16);
HALB_ASSERT_OFFSET(struct nat_reply, service, 20);
HALB_ASSERT_OFFSET(struct nat_reply, backend_id, 24);

/* halb_fnat key: a full NAT flow as its backend sees it, the backend's
 * address and port and the balancer's (the source the flow was given),
 * which is what the backend's replies carry. */
struct fnat_key {
	union addr backend;
	union addr snat;
	__u16 backend_port; /* host byte order */
	__u16 snat_port;    /* host byte order */
	__u8 proto;         /* IPPROTO_TCP or IPPROTO_UDP */
	enum family family;
	__u8 pad[2];
};
HALB_ASSERT_SIZE(struct fnat_key, 40);
HALB_ASSERT_OFFSET(struct fnat_key, snat, 16);
HALB_ASSERT_OFFSET(struct fnat_key, backend_port, 32);
HALB_ASSERT_OFFSET(struct fnat_key, snat_port, 34);
HALB_ASSERT_OFFSET(struct fnat_key, proto, 36);
HALB_ASSERT_OFFSET(struct fnat_key, family, 37);

/* halb_fnat value: the flow as its client sees it, where the backend's
 * replies go back to. rev comes first and is what a NAT reply's entry
 * in halb_nat_replies is (the VIP and port, NAT_REPLY_F_FULLNAT, the
 * service and backend), so that a full NAT reply is sent on as a NAT
 * one, from the one lookup. */
struct fnat_flow {
	struct nat_reply rev;
	__u16 client_port; /* host byte order */
	__u16 pad;
	union addr client;
	__u64 seen;        /* bpf_ktime_get_coarse_ns() of its last reply, or
			    * of the packet that mapped it: a port idle for
			    * HALB_SNAT_IDLE_NS may go to another flow */
};
HALB_ASSERT_SIZE(struct fnat_flow, 56);
HALB_ASSERT_OFFSET(struct fnat_flow, client_port, 28);
HALB_ASSERT_OFFSET(struct fnat_flow, client, 32);
HALB_ASSERT_OFFSET(struct fnat_flow, seen, 48);

/* halb_ct key: the 5-tuple of one direction of a flow, client to VIP. */
struct flow {
	union addr saddr;
	union addr daddr;
	__u16 sport;  /* host byte order */
	__u16 dport;  /* host byte order */
	__u8 proto;   /* IPPROTO_TCP or IPPROTO_UDP */
	enum family family;
	__u8 pad[2];
};
HALB_ASSERT_SIZE(struct flow, 40);
HALB_ASSERT_OFFSET(struct flow, sport, 32);
HALB_ASSERT_OFFSET(struct flow, dport, 34);
HALB_ASSERT_OFFSET(struct flow, proto, 36);
HALB_ASSERT_OFFSET(struct flow, family, 37);

/* halb_ct value. first_seen and packets are for `halb flows` alone: the
 * data path never reads them. */
struct ct_entry {
	__u32 backend_id;
	__u16 sport;      /* full NAT: the source port the flow was given, so
			   * that its packets need neither the hash nor
			   * halb_fnat; 0 otherwise */
	__u16 pad;
	__u32 first_seen; /* bpf_ktime_get_coarse_ns() / 1e9 when the flow was
			   * (re)scheduled: seconds of CLOCK_MONOTONIC */
	__u32 packets;    /* approximate: see schedule() */
};
HALB_ASSERT_SIZE(struct ct_entry, 16);
HALB_ASSERT_OFFSET(struct ct_entry, sport, 4);
HALB_ASSERT_OFFSET(struct ct_entry, first_seen, 8);
HALB_ASSERT_OFFSET(struct ct_entry, packets, 12);

/* halb_nexthops value (per CPU), indexed by backend id: where the last
 * FIB lookup for a TUN or NAT backend said its packets go. The FIB costs more than
 * the rest of a TUN packet's path together, so a CPU asks it once and then
 * again only when the loader says something changed (gen) or the entry has
 * aged (stamp). ifindex 0: nothing cached. */
struct nexthop {
	__u64 stamp;     /* bpf_ktime_get_coarse_ns() when it was filled */
	__u32 gen;       /* halb_nexthop_gen when it was filled */
	__u32 ifindex;   /* the egress interface */
	__u16 mtu;       /* the route's MTU, at most 0xffff */
	__u8 dmac[6];    /* the next hop's MAC */
	__u8 smac[6];    /* the egress interface's MAC */
	__u16 pad;
};
HALB_ASSERT_SIZE(struct nexthop, 32);
HALB_ASSERT_OFFSET(struct nexthop, gen, 8);
HALB_ASSERT_OFFSET(struct nexthop, ifindex, 12);
HALB_ASSERT_OFFSET(struct nexthop, mtu, 16);
HALB_ASSERT_OFFSET(struct nexthop, dmac, 18);
HALB_ASSERT_OFFSET(struct nexthop, smac, 24);

/* halb_reply_hops key: a NAT reply's client, and the interface the reply
 * came in on (the FIB's answer depends on both). */
struct reply_hop_key {
	union addr client;
	__u32 ifindex;
};
HALB_ASSERT_SIZE(struct reply_hop_key, 20);
HALB_ASSERT_OFFSET(struct reply_hop_key, ifindex, 16);

/* halb_reply_flows value: where the replies of one NAT or full NAT flow
 * (the key: the reply's struct flow, as the parser reads it) go back, as
 * the last reply that missed it found out: back, what halb_nat_replies or
 * halb_fnat said (full NAT: the client and its port too; back.seen is not
 * used), and nh, the next hop toward the client as halb_reply_hops had
 * it, for replies that arrive on ifindex. Valid while nh is (its gen and
 * stamp), so that the entries the loader and the FIB stand behind are
 * asked again at least once a second. */
struct reply_flow {
	struct fnat_flow back;
	struct nexthop nh;
	__u32 ifindex; /* the interface the replies came in on */
	__u32 pad;
};
HALB_ASSERT_SIZE(struct reply_flow, 96);
HALB_ASSERT_OFFSET(struct reply_flow, nh, 56);
HALB_ASSERT_OFFSET(struct reply_flow, ifindex, 88);

/* halb_reply_scratch value (per CPU): a halb_reply_flows entry and its
 * key as a reply's long way builds them, outside the program's stack. */
struct reply_scratch {
	struct flow key;
	struct reply_flow rf;
};
HALB_ASSERT_SIZE(struct reply_scratch, 136);
HALB_ASSERT_OFFSET(struct reply_scratch, rf, 40);

/* halb_local_macs key: a destination MAC, on a VLAN, that makes a frame
 * arriving on ifindex this node's to balance. The loader keeps the
 * attached interface's own MAC, those of its bridge or bond (untagged),
 * those of the VLANs on it (each with its VLAN id), and each VRRP virtual
 * MAC (RFC 5798 §7.3) that the node holds on a macvlan child of these
 * (use_vmac) while it is Master. A frame tagged with a VLAN the host does
 * not have is not the host's, whatever its MAC: the kernel would drop it,
 * and balanced it would leave still tagged, onto a VLAN no one routes. */
struct local_mac {
	__u32 ifindex; /* the interface the program is attached to */
	__u8 mac[6];
	__u16 vlan;    /* the VLAN id of the frame's tag (802.1Q or 802.1ad),
			* 0 when untagged or priority-tagged (IEEE 802.1Q
			* §9.6: VID 0 is no VLAN) */
};
HALB_ASSERT_SIZE(struct local_mac, 12);
HALB_ASSERT_OFFSET(struct local_mac, mac, 4);
HALB_ASSERT_OFFSET(struct local_mac, vlan, 10);

/* halb_local_macs value. */
struct local_mac_via {
	__u32 ifindex; /* the interface that holds the MAC: the key's own, or
			* its VMAC child's; for bpftool readers */
};
HALB_ASSERT_SIZE(struct local_mac_via, 4);

/* halb_mac_cache value (per CPU): the last frame's interface and
 * destination MAC that halb_local_macs held, while halb_local_macs_gen
 * was gen. */
struct local_mac_cache {
	__u32 gen;
	struct local_mac key;
};
HALB_ASSERT_SIZE(struct local_mac_cache, 16);
HALB_ASSERT_OFFSET(struct local_mac_cache, key, 4);

/* halb_clock value (per CPU): bpf_ktime_get_coarse_ns() as this CPU last
 * read it, and bpf_jiffies64() when it did. */
struct clock {
	__u64 jiffies;
	__u64 ns;
};
HALB_ASSERT_SIZE(struct clock, 16);

/* halb_service_stats and halb_backend_stats value (per CPU). */
struct stats {
	__u64 packets;
	__u64 bytes;     /* whole frames, Ethernet header included */
	__u64 new_flows; /* flows scheduled by Maglev, not found in halb_ct */
};
HALB_ASSERT_SIZE(struct stats, 24);

#endif /* HALB_H */
