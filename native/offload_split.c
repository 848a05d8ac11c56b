/* TUN TSO/USO on read: the kernel hands us one super-packet of up to 64 KB (a virtio_net_hdr says
 * how to cut it); we cut it into the MTU-sized IP packets it stands for, as a NIC would on the
 * wire, so everything above sees plain packets.
 *
 * Per segment: IP header copied, IPv4 total length / IPv6 payload length set, IPv4 id incremented
 * per segment and its header checksum recomputed; TCP seq advanced, FIN and PSH kept on the last
 * segment only, CWR on the first only; UDP length set; the TCP/UDP checksum computed in full. The
 * header lengths come from the packet itself: the vnet header's hdr_len is only a hint. */
#include "offload.h"

#include <arpa/inet.h>
#include <string.h>

#define TCP_FIN 0x01
#define TCP_PSH 0x08
#define TCP_CWR 0x80
#define PROTO_TCP 6
#define PROTO_UDP 17

static uint16_t get16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static void put16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }
static uint32_t get32(const uint8_t *p) { return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3]; }
static void put32(uint8_t *p, uint32_t v) { put16(p, (uint16_t)(v >> 16)); put16(p + 2, (uint16_t)v); }

/* The kernel left the transport checksum to us (CHECKSUM_PARTIAL): the field holds the pseudo-header
 * sum; summing from csum_start to the end and complementing completes it. */
static int complete_csum(const struct virtio_net_hdr *h, uint8_t *pkt, uint32_t len) {
  uint32_t start = h->csum_start, at = (uint32_t)h->csum_start + h->csum_offset;
  if (start >= len || at + 2 > len) return -1;
  uint16_t c = (uint16_t)~csum_fold(csum_partial(pkt + start, len - start, 0));
  memcpy(pkt + at, &c, 2);
  return 1;
}

int gso_prepare(gso_split_t *s, const struct virtio_net_hdr *h, uint8_t *pkt, uint32_t len) {
  if (h->gso_type == VIRTIO_NET_HDR_GSO_NONE)
    return (h->flags & VIRTIO_NET_HDR_F_NEEDS_CSUM) ? complete_csum(h, pkt, len) : 1;
  uint8_t type = h->gso_type & (uint8_t)~VIRTIO_NET_HDR_GSO_ECN;
  if (len < 20 || len > MAX_SUPER_PACKET || h->gso_size == 0) return -1;
  uint8_t version = pkt[0] >> 4, proto;
  memset(s, 0, sizeof *s);
  if (version == 4) {
    s->l3_len = (pkt[0] & 0x0f) * 4u;
    proto = pkt[9];
    if (s->l3_len < 20 || type == VIRTIO_NET_HDR_GSO_TCPV6) return -1;
  } else if (version == 6) {
    s->l3_len = 40;
    proto = len >= 40 ? pkt[6] : 0; /* extension headers are not offloaded to us: TCP or UDP comes first */
    s->v6 = true;
    if (type == VIRTIO_NET_HDR_GSO_TCPV4) return -1;
  } else {
    return -1;
  }
  if (type == VIRTIO_NET_HDR_GSO_TCPV4 || type == VIRTIO_NET_HDR_GSO_TCPV6) {
    if (proto != PROTO_TCP || s->l3_len + 20 > len) return -1;
    s->hdr_len = s->l3_len + (pkt[s->l3_len + 12] >> 4) * 4u;
    if (s->hdr_len < s->l3_len + 20) return -1;
  } else if (type == VIRTIO_NET_HDR_GSO_UDP_L4) {
    if (proto != PROTO_UDP) return -1;
    s->hdr_len = s->l3_len + 8;
    s->udp = true;
  } else {
    return -1;
  }
  if (s->hdr_len >= len) return -1;
  s->pkt = pkt;
  s->len = len;
  s->gso_size = h->gso_size;
  s->next = s->hdr_len;
  return 0;
}

uint32_t gso_emit(gso_split_t *s, uint8_t *slots, uint32_t slot_size, uint32_t room, int32_t *lens) {
  const uint8_t *in = s->pkt;
  uint32_t l3 = s->l3_len, hl = s->hdr_len, k = 0;
  const uint8_t *src = in + (s->v6 ? 8 : 12), *dst = src + (s->v6 ? 16 : 4);
  for (; k < room && s->next < s->len; k++) {
    uint32_t payload = s->len - s->next < s->gso_size ? s->len - s->next : s->gso_size;
    uint32_t total = hl + payload;
    bool last = s->next + payload == s->len;
    uint8_t *out = slots + (size_t)k * slot_size;
    memcpy(out, in, hl);
    memcpy(out + hl, in + s->next, payload);
    if (s->v6) {
      put16(out + 4, (uint16_t)(total - 40));
    } else {
      put16(out + 2, (uint16_t)total);
      put16(out + 4, (uint16_t)(get16(in + 4) + s->index));
      out[10] = out[11] = 0;
      uint16_t c = (uint16_t)~csum_fold(csum_partial(out, l3, 0));
      memcpy(out + 10, &c, 2);
    }
    uint8_t *l4 = out + l3;
    uint16_t csum;
    if (s->udp) {
      put16(l4 + 4, (uint16_t)(total - l3));
      l4[6] = l4[7] = 0;
      csum = (uint16_t)~csum_fold(csum_partial(l4, total - l3, csum_pseudo(src, dst, s->v6 ? 16 : 4, PROTO_UDP, total - l3)));
      if (csum == 0) csum = 0xffff; /* 0 means "no checksum" in UDP */
      memcpy(l4 + 6, &csum, 2);
    } else {
      put32(l4 + 4, get32(in + l3 + 4) + (s->next - hl));
      if (!last) l4[13] &= (uint8_t)~(TCP_FIN | TCP_PSH);
      if (s->index > 0) l4[13] &= (uint8_t)~TCP_CWR;
      l4[16] = l4[17] = 0;
      csum = (uint16_t)~csum_fold(csum_partial(l4, total - l3, csum_pseudo(src, dst, s->v6 ? 16 : 4, PROTO_TCP, total - l3)));
      memcpy(l4 + 16, &csum, 2);
    }
    lens[k] = (int32_t)total;
    s->next += payload;
    s->index++;
  }
  return k;
}
