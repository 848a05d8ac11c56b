/* Offloads of the packet path: TUN TSO/USO (split the kernel's super-packets), TUN GRO (coalesce
 * the segments of one TCP flow into super-packets), UDP GSO/GRO, and the per-fd offload state.
 * Pure packet work, no syscalls, except in the state table's users (tun.c, udp.c, reader.c). */
#ifndef AGENTVPN_OFFLOAD_H
#define AGENTVPN_OFFLOAD_H

#include <linux/virtio_net.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/uio.h>

/* Older uapi headers lack these (kernel 6.2+ has them). */
#ifndef TUN_F_USO4
#define TUN_F_USO4 0x20
#define TUN_F_USO6 0x40
#endif
#ifndef VIRTIO_NET_HDR_GSO_UDP_L4
#define VIRTIO_NET_HDR_GSO_UDP_L4 5
#endif

#define VNET_HDR_LEN ((uint32_t)sizeof(struct virtio_net_hdr))
/* The largest IP packet a TUN read or write carries (IPv4 total length / IPv6 payload length are 16 bits). */
#define MAX_SUPER_PACKET 65535u
/* Segments per coalesced TUN write: the kernel's own GRO stops at 64 (MAX_SKB_FRAGS-ish, gro_max_size). */
#define GRO_MAX_SEGMENTS 64

/* ---- one's-complement checksums (RFC 1071), summed in host order over raw memory ---- */
uint64_t csum_partial(const uint8_t *p, uint32_t len, uint64_t sum);
uint16_t csum_fold(uint64_t sum);
/* The pseudo-header sum for TCP/UDP over IPv4 (addr_len 4) or IPv6 (16); addresses at src, dst. */
uint64_t csum_pseudo(const uint8_t *src, const uint8_t *dst, uint32_t addr_len, uint8_t proto, uint32_t l4_len);

/* ---- TUN reads: split a super-packet (offload_split.c) ---- */
typedef struct {
  uint8_t *pkt;      /* the super-packet, headers first */
  uint32_t len;      /* its length */
  uint32_t l3_len;   /* IP header bytes */
  uint32_t hdr_len;  /* IP + TCP/UDP header bytes */
  uint32_t gso_size; /* payload bytes per segment */
  uint32_t next;     /* offset of the next segment's payload; == len when done */
  uint32_t index;    /* number of the next segment */
  bool v6, udp;
} gso_split_t;

/* Checks a read's vnet header against its packet and prepares the split. 0 = ready (s->next < s->len),
 * 1 = not a GSO packet (its checksum is completed in place if the kernel left it partial), -1 = bad: drop. */
int gso_prepare(gso_split_t *s, const struct virtio_net_hdr *h, uint8_t *pkt, uint32_t len);
/* Writes up to `room` segments into consecutive slots (slot i at slots + i*slot_size, length in lens[i]);
 * returns how many. Every segment is a complete IP packet with correct lengths and checksums. */
uint32_t gso_emit(gso_split_t *s, uint8_t *slots, uint32_t slot_size, uint32_t room, int32_t *lens);

/* ---- TUN writes: coalesce TCP segments (offload_coalesce.c) ---- */
/* One write to the TUN: a plain packet, or the segments of one TCP flow merged into a super-packet. */
typedef struct {
  struct virtio_net_hdr vnet;
  uint8_t head[120];              /* merged: the first segment's IP + TCP headers, rewritten for the whole */
  uint32_t first, last, count;    /* packets carried: first, then link[] from it, ending at last */
  uint32_t total;                 /* merged IP packet length */
  uint32_t l3, hdr, gso, tail;    /* IP header, IP + TCP headers, first payload, last payload */
  uint32_t seq_next;              /* the sequence number an appended segment must carry */
  bool tcp, v6, psh, csum_checked;
} gro_unit_t;

typedef struct {
  gro_unit_t *units; /* room for one per packet */
  uint32_t *link;    /* link[i]: the packet after i in its unit */
  uint32_t n_units;
} gro_plan_t;

/* Plans the writes for packets pkts[i] (lens[i] bytes): TCP segments of one flow that the kernel's
 * GRO would merge become one unit; everything else is a unit of its own. */
void gro_plan(gro_plan_t *plan, uint8_t *const *pkts, const int32_t *lens, uint32_t count);
/* Fills the vnet header and head of a unit of count > 1 (lengths, IPv4 header checksum, PSH,
 * the TCP pseudo-header sum that CHECKSUM_PARTIAL wants). Returns the bytes of head to write. */
uint32_t gro_finish(gro_unit_t *u, const uint8_t *first_pkt);

/* ---- per-fd offload state (offload_state.c) ---- */
enum {
  OFFLOAD_TUN_VNET = 1 << 0, /* the TUN fd carries a virtio_net_hdr on every read and write */
  OFFLOAD_TUN_TSO = 1 << 1,  /* TUNSETOFFLOAD accepted TSO4/6: reads may be TCP super-packets */
  OFFLOAD_TUN_USO = 1 << 2,  /* ... and USO4/6: UDP super-packets */
  OFFLOAD_UDP_GSO = 1 << 3,  /* UDP_SEGMENT on send */
  OFFLOAD_UDP_GRO = 1 << 4,  /* UDP_GRO on receive */
  OFFLOAD_GSO_EIO = 1 << 5,  /* GSO was on and a send failed with EIO (no checksum offload on the route): now off */
};

/* What each offload did, for `agentvpn status`. */
typedef struct {
  uint32_t flags;
  uint64_t super_reads;    /* TUN reads that were super-packets */
  uint64_t segments_split; /* segments made from them */
  uint64_t bad_reads;      /* TUN reads dropped: a vnet header that does not match its packet */
  uint64_t coalesced;      /* TUN writes that carried more than one segment */
  uint64_t segments_merged;
  uint64_t gso_sends;      /* UDP datagrams carrying more than one segment */
  uint64_t gro_reads;      /* UDP datagrams received coalesced */
} offload_state_t;

/* The state of fd (NULL if fd is out of the table's range: such fds run without offloads). */
offload_state_t *offload_state(int fd);
/* Forgets fd's state (it was closed). */
void offload_forget(int fd);

#endif
