/* One's-complement Internet checksums (RFC 1071) for the offloads. The sum is taken over raw memory
 * in host order: one's-complement addition is byte-order independent, so the folded result stored
 * back with memcpy is already in network order (as Linux's csum_partial does). */
#include "offload.h"

#include <arpa/inet.h>
#include <string.h>

uint64_t csum_partial(const uint8_t *p, uint32_t len, uint64_t sum) {
  /* 32-bit words into a 64-bit accumulator: 2^32 words before it could overflow. */
  while (len >= 16) {
    uint32_t w[4];
    memcpy(w, p, 16);
    sum += (uint64_t)w[0] + w[1] + w[2] + w[3];
    p += 16;
    len -= 16;
  }
  while (len >= 4) {
    uint32_t w;
    memcpy(&w, p, 4);
    sum += w;
    p += 4;
    len -= 4;
  }
  if (len >= 2) {
    uint16_t w;
    memcpy(&w, p, 2);
    sum += w;
    p += 2;
    len -= 2;
  }
  if (len) {
    uint16_t w = 0;
    memcpy(&w, p, 1); /* the odd byte is the high-order byte of a zero-padded word in network order */
    sum += w;
  }
  return sum;
}

uint16_t csum_fold(uint64_t sum) {
  sum = (sum & 0xffffffffu) + (sum >> 32);
  sum = (sum & 0xffffffffu) + (sum >> 32);
  sum = (sum & 0xffffu) + (sum >> 16);
  sum = (sum & 0xffffu) + (sum >> 16);
  return (uint16_t)sum;
}

uint64_t csum_pseudo(const uint8_t *src, const uint8_t *dst, uint32_t addr_len, uint8_t proto, uint32_t l4_len) {
  uint64_t sum = csum_partial(src, addr_len, 0);
  sum = csum_partial(dst, addr_len, sum);
  uint16_t words[2] = {htons(proto), htons((uint16_t)l4_len)};
  return csum_partial((const uint8_t *)words, 4, sum);
}
