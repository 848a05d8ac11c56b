/* BLAKE2s (RFC 7693) for the handshake path: mac1/mac2 checks, cookies and the Noise hashes.
 * It is here, not in JavaScript, because a flood of handshake messages is priced in mac1 checks:
 * ~5 us each in JS against well under 1 us here. Pure computation: no syscalls, no protocol.
 *
 * blake2s(out, key, input): writes BLAKE2s(input) keyed with `key` (0..32 bytes, empty = unkeyed)
 * into out (1..32 bytes: the digest length is out's length). */
#include <node_api.h>
#include <stdint.h>
#include <string.h>

static const uint32_t IV[8] = {0x6A09E667, 0xBB67AE85, 0x3C6EF372, 0xA54FF53A,
                               0x510E527F, 0x9B05688C, 0x1F83D9AB, 0x5BE0CD19};

static const uint8_t SIGMA[10][16] = {
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}, {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3},
    {11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4}, {7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8},
    {9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13}, {2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9},
    {12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11}, {13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10},
    {6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5}, {10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0},
};

static inline uint32_t rotr(uint32_t x, int n) { return (x >> n) | (x << (32 - n)); }

static inline uint32_t load32(const uint8_t *p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

#define G(a, b, c, d, x, y)        \
  do {                             \
    v[a] = v[a] + v[b] + (x);      \
    v[d] = rotr(v[d] ^ v[a], 16);  \
    v[c] = v[c] + v[d];            \
    v[b] = rotr(v[b] ^ v[c], 12);  \
    v[a] = v[a] + v[b] + (y);      \
    v[d] = rotr(v[d] ^ v[a], 8);   \
    v[c] = v[c] + v[d];            \
    v[b] = rotr(v[b] ^ v[c], 7);   \
  } while (0)

/* One compression of a 64-byte block; `t` counts the bytes hashed so far, `last` marks the final block. */
static void compress(uint32_t h[8], const uint8_t block[64], uint64_t t, int last) {
  uint32_t m[16], v[16];
  for (int i = 0; i < 16; i++) m[i] = load32(block + 4 * i);
  for (int i = 0; i < 8; i++) {
    v[i] = h[i];
    v[i + 8] = IV[i];
  }
  v[12] ^= (uint32_t)t;
  v[13] ^= (uint32_t)(t >> 32);
  if (last) v[14] = ~v[14];
  for (int r = 0; r < 10; r++) {
    const uint8_t *s = SIGMA[r];
    G(0, 4, 8, 12, m[s[0]], m[s[1]]);
    G(1, 5, 9, 13, m[s[2]], m[s[3]]);
    G(2, 6, 10, 14, m[s[4]], m[s[5]]);
    G(3, 7, 11, 15, m[s[6]], m[s[7]]);
    G(0, 5, 10, 15, m[s[8]], m[s[9]]);
    G(1, 6, 11, 12, m[s[10]], m[s[11]]);
    G(2, 7, 8, 13, m[s[12]], m[s[13]]);
    G(3, 4, 9, 14, m[s[14]], m[s[15]]);
  }
  for (int i = 0; i < 8; i++) h[i] ^= v[i] ^ v[i + 8];
}

static void blake2s(uint8_t *out, size_t outlen, const uint8_t *key, size_t keylen, const uint8_t *in, size_t inlen) {
  uint32_t h[8];
  uint8_t block[64];
  uint64_t t = 0;
  memcpy(h, IV, sizeof h);
  h[0] ^= 0x01010000u ^ ((uint32_t)keylen << 8) ^ (uint32_t)outlen;
  if (keylen > 0) {
    memset(block, 0, 64);
    memcpy(block, key, keylen);
    t = 64;
    compress(h, block, t, inlen == 0);
  }
  /* Every full block but the last is compressed as it comes; the last (possibly partial) one is padded. */
  while (inlen > 64) {
    t += 64;
    compress(h, in, t, 0);
    in += 64;
    inlen -= 64;
  }
  if (inlen > 0 || keylen == 0) {
    memset(block, 0, 64);
    memcpy(block, in, inlen);
    t += inlen;
    compress(h, block, t, 1);
  }
  for (size_t i = 0; i < outlen; i++) out[i] = (uint8_t)(h[i / 4] >> (8 * (i % 4)));
}

/* A typed array's bytes, or -1 with a TypeError pending. */
static int bytes_of(napi_env env, napi_value v, uint8_t **data, size_t *len) {
  bool is_typed = false;
  napi_typedarray_type type;
  size_t length, offset;
  napi_value ab;
  void *p;
  if (napi_is_typedarray(env, v, &is_typed) != napi_ok || !is_typed ||
      napi_get_typedarray_info(env, v, &type, &length, &p, &ab, &offset) != napi_ok || type != napi_uint8_array) {
    napi_throw_type_error(env, NULL, "blake2s: arguments must be Uint8Arrays");
    return -1;
  }
  *data = p;
  *len = length;
  return 0;
}

static napi_value blake2s_export(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  uint8_t *out, *key, *in;
  size_t outlen, keylen, inlen;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != 3) {
    napi_throw_type_error(env, NULL, "blake2s(out, key, input) takes three arguments");
    return NULL;
  }
  if (bytes_of(env, argv[0], &out, &outlen) || bytes_of(env, argv[1], &key, &keylen) || bytes_of(env, argv[2], &in, &inlen)) return NULL;
  if (outlen < 1 || outlen > 32 || keylen > 32) {
    napi_throw_range_error(env, NULL, "blake2s: out must be 1..32 bytes and key at most 32");
    return NULL;
  }
  blake2s(out, outlen, key, keylen, in, inlen);
  return NULL;
}

napi_value aead_batch_init(napi_env env, napi_value exports); /* native/crypto/aead-batch.c */

static napi_value init(napi_env env, napi_value exports) {
  napi_value fn;
  if (napi_create_function(env, "blake2s", NAPI_AUTO_LENGTH, blake2s_export, NULL, &fn) != napi_ok ||
      napi_set_named_property(env, exports, "blake2s", fn) != napi_ok)
    return NULL;
  return aead_batch_init(env, exports);
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
