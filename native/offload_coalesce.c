/* TUN GRO on write: the TCP segments of one flow in a write batch are merged into one super-packet
 * written with a virtio_net_hdr (GSO TCPV4/6, NEEDS_CSUM), so the kernel's stack takes 64 KB per
 * write instead of 1.4 KB. We merge only what the kernel's own GRO (tcp_gro_receive) would:
 *   - IPv4 without options or fragments, or IPv6 with TCP as the first next header;
 *     lengths in the IP header equal to the packet's;
 *   - flags exactly ACK or ACK|PSH, payload not empty, and no segment after one with PSH;
 *   - same addresses, ports, ack number, window, TCP options (bytes), TOS/TTL/DF (IPv4),
 *     version/traffic class/flow label/hop limit (IPv6);
 *   - contiguous sequence numbers, every segment but the last exactly the first's payload size,
 *     at most 64 segments and 64 KB in all;
 *   - valid TCP checksums: the kernel does not verify a CHECKSUM_PARTIAL packet, so a segment whose
 *     checksum is wrong is written alone, for the kernel to drop as it always did.
 * Segments are only appended, to the flow's latest unit, so no flow is ever reordered. */
#include "offload.h"

#include <arpa/inet.h>
#include <string.h>

#define TCP_ACK 0x10
#define TCP_PSH 0x08
#define PROTO_TCP 6

static uint16_t get16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static void put16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }
static uint32_t get32(const uint8_t *p) { return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3]; }

/* Fills u's TCP fields if pkt is a segment the kernel could merge; false otherwise. */
static bool tcp_candidate(gro_unit_t *u, const uint8_t *pkt, uint32_t len) {
  if (len < 40) return false;
  if (pkt[0] == 0x45) {
    if (pkt[9] != PROTO_TCP || get16(pkt + 2) != len || (get16(pkt + 6) & 0x3fff) != 0) return false; /* MF or offset: a fragment */
    u->l3 = 20;
    u->v6 = false;
  } else if (pkt[0] >> 4 == 6) {
    if (len < 60 || pkt[6] != PROTO_TCP || get16(pkt + 4) != len - 40) return false;
    u->l3 = 40;
    u->v6 = true;
  } else {
    return false;
  }
  const uint8_t *th = pkt + u->l3;
  uint32_t thl = (th[12] >> 4) * 4u;
  if (thl < 20 || u->l3 + thl >= len) return false; /* also: no payload */
  if (th[13] != TCP_ACK && th[13] != (TCP_ACK | TCP_PSH)) return false;
  u->hdr = u->l3 + thl;
  u->gso = u->tail = len - u->hdr;
  u->seq_next = get32(th + 4) + u->gso;
  u->psh = th[13] & TCP_PSH;
  u->tcp = true;
  return true;
}

static bool same_flow(const gro_unit_t *u, const uint8_t *a, const uint8_t *b) {
  return u->v6 == ((b[0] >> 4) == 6) &&
         (u->v6 ? memcmp(a + 8, b + 8, 32) == 0 : memcmp(a + 12, b + 12, 8) == 0) &&
         memcmp(a + u->l3, b + u->l3, 4) == 0; /* ports */
}

static bool checksum_ok(const uint8_t *pkt, uint32_t len, uint32_t l3, bool v6) {
  const uint8_t *src = pkt + (v6 ? 8 : 12);
  uint64_t sum = csum_pseudo(src, src + (v6 ? 16 : 4), v6 ? 16 : 4, PROTO_TCP, len - l3);
  return csum_fold(csum_partial(pkt + l3, len - l3, sum)) == 0xffff;
}

/* May segment b (already parsed into c) follow unit u, whose first packet is a? */
static bool can_append(const gro_unit_t *u, const uint8_t *a, const gro_unit_t *c, const uint8_t *b) {
  const uint8_t *ta = a + u->l3, *tb = b + c->l3;
  if (c->hdr != u->hdr || u->psh || u->tail != u->gso || c->gso > u->gso) return false;
  if (u->count >= GRO_MAX_SEGMENTS || u->total + c->gso > MAX_SUPER_PACKET) return false;
  if (get32(tb + 4) != u->seq_next) return false;
  if (memcmp(ta + 8, tb + 8, 4) != 0 || memcmp(ta + 14, tb + 14, 2) != 0) return false; /* ack, window */
  if (memcmp(ta + 20, tb + 20, u->hdr - u->l3 - 20) != 0) return false;             /* options */
  if (u->v6) return memcmp(a, b, 4) == 0 && a[7] == b[7];
  return a[1] == b[1] && a[8] == b[8] && (a[6] & 0x40) == (b[6] & 0x40); /* TOS, TTL, DF */
}

void gro_plan(gro_plan_t *plan, uint8_t *const *pkts, const int32_t *lens, uint32_t count) {
  plan->n_units = 0;
  for (uint32_t i = 0; i < count; i++) {
    const uint8_t *b = pkts[i];
    uint32_t len = (uint32_t)lens[i];
    gro_unit_t c;
    memset(&c, 0, sizeof c);
    c.first = c.last = i;
    c.count = 1;
    c.total = len;
    plan->link[i] = UINT32_MAX;
    if (tcp_candidate(&c, b, len)) {
      /* The flow's latest unit, if any: only it may grow, so the flow keeps its order. */
      for (uint32_t k = plan->n_units; k-- > 0;) {
        gro_unit_t *u = &plan->units[k];
        const uint8_t *a = pkts[u->first];
        if (!u->tcp || !same_flow(u, a, b)) continue;
        if (!can_append(u, a, &c, b)) break;
        if (!u->csum_checked && !checksum_ok(a, (uint32_t)lens[u->first], u->l3, u->v6)) {
          u->tcp = false; /* written alone; never merged with */
          break;
        }
        u->csum_checked = true;
        if (!checksum_ok(b, len, c.l3, c.v6)) {
          c.tcp = false;
          break;
        }
        plan->link[u->last] = i;
        u->last = i;
        u->count++;
        u->total += c.gso;
        u->tail = c.gso;
        u->seq_next += c.gso;
        u->psh = c.psh;
        goto merged;
      }
    }
    plan->units[plan->n_units++] = c;
  merged:;
  }
}

uint32_t gro_finish(gro_unit_t *u, const uint8_t *first_pkt) {
  uint8_t *h = u->head;
  memcpy(h, first_pkt, u->hdr);
  if (u->v6) {
    put16(h + 4, (uint16_t)(u->total - 40));
  } else {
    put16(h + 2, (uint16_t)u->total);
    h[10] = h[11] = 0;
    uint16_t c = (uint16_t)~csum_fold(csum_partial(h, u->l3, 0));
    memcpy(h + 10, &c, 2);
  }
  if (u->psh) h[u->l3 + 13] |= TCP_PSH;
  /* CHECKSUM_PARTIAL: the field holds the folded pseudo-header sum, not complemented; the kernel
   * (or the segmenting NIC) adds the rest. */
  const uint8_t *src = h + (u->v6 ? 8 : 12);
  uint16_t pseudo = csum_fold(csum_pseudo(src, src + (u->v6 ? 16 : 4), u->v6 ? 16 : 4, PROTO_TCP, u->total - u->l3));
  memcpy(h + u->l3 + 16, &pseudo, 2);
  memset(&u->vnet, 0, sizeof u->vnet);
  u->vnet.flags = VIRTIO_NET_HDR_F_NEEDS_CSUM;
  u->vnet.gso_type = u->v6 ? VIRTIO_NET_HDR_GSO_TCPV6 : VIRTIO_NET_HDR_GSO_TCPV4;
  u->vnet.hdr_len = (uint16_t)u->hdr;
  u->vnet.gso_size = (uint16_t)u->gso;
  u->vnet.csum_start = (uint16_t)u->l3;
  u->vnet.csum_offset = 16;
  return u->hdr;
}
