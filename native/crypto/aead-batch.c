/* ChaCha20-Poly1305 (RFC 8439) over batches of WireGuard transport messages: one call into the
 * addon seals or opens a whole batch, so the packet path pays one N-API crossing per batch instead
 * of one per packet. Pure computation: no syscalls, no protocol state. Keys, counters and replay
 * windows belong to the TypeScript protocol (src/wireguard/keypair.ts, replay.ts); this file only
 * transforms bytes where it is told to.
 *
 * The AEAD is Node's own OpenSSL (EVP_chacha20_poly1305; node-gyp ships the headers and the node
 * binary exports the symbols): on this machine's AVX-512 cores it measured faster than the system
 * libsodium 1.0.18 (figures in src/crypto/aead-batch.ts).
 *
 * WireGuard transport message (whitepaper 5.4.6), little-endian:
 *
 *   | offset | size   | field                                                        |
 *   |--------|--------|--------------------------------------------------------------|
 *   | 0      | 4      | type = 4 (u32: upper three bytes reserved, zero)             |
 *   | 4      | 4      | receiver index (the peer's session index)                    |
 *   | 8      | 8      | counter (u64), also the nonce: 0x00000000 || counter (LE)    |
 *   | 16     | n + 16 | ChaCha20-Poly1305(key, nonce, plaintext, no AD): ct || tag   |
 *
 * The plaintext length n is already padded by the caller (a multiple of 16, capped at the MTU).
 *
 * sealBatch(src, srcOffsets, lens, dst, dstOffsets, keys, keyIndex, receivers, counters, count)
 *   For i < count: writes the message for the lens[i] plaintext bytes at src[srcOffsets[i]] to
 *   dst[dstOffsets[i]] (lens[i] + 32 bytes), keyed by keys[32 * keyIndex[i]], with receiver index
 *   receivers[i] and counter counters[i] (a Float64Array: integers up to 2^53, exact). The output
 *   may not overlap any input. Returns count. Any entry out of bounds throws a RangeError and
 *   nothing is sealed: those values come from our own device, never from the network.
 *
 * openBatch(slab, offsets, lens, keys, keyIndex, ok, count)
 *   For i < count: authenticates the whole message at slab[offsets[i]] (lens[i] >= 32 bytes,
 *   counter read from its header) and decrypts it in place: the plaintext (lens[i] - 32 bytes)
 *   lands at offsets[i] + 16. ok[i] = 1 when it authenticated, else 0 and the plaintext bytes are
 *   zeroed (unauthenticated bytes never reach the caller). A forged packet fails only itself.
 *   Returns how many opened. Bounds are checked for the whole batch first, as for sealBatch. */
#include <node_api.h>
#include <openssl/evp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define KEY_SIZE 32
#define TAG_SIZE 16
#define HEADER_SIZE 16
#define MESSAGE_TRANSPORT 4
#define MAX_EXACT_COUNTER 9007199254740992.0 /* 2^53: beyond it a double no longer holds every integer */

/* One cipher context per addon instance (main thread or worker): EVP contexts are not thread-safe,
 * and re-keying one context per packet is cheaper than creating one. */
typedef struct {
  EVP_CIPHER_CTX *ctx;
} instance;

static void store32(uint8_t *p, uint32_t v) {
  p[0] = (uint8_t)v;
  p[1] = (uint8_t)(v >> 8);
  p[2] = (uint8_t)(v >> 16);
  p[3] = (uint8_t)(v >> 24);
}

/* The 12-byte nonce: 4 zero bytes, then the 8 counter bytes exactly as the header carries them. */
static void nonce_of(uint8_t nonce[12], const uint8_t counter_le[8]) {
  memset(nonce, 0, 4);
  memcpy(nonce + 4, counter_le, 8);
}

static int seal_one(EVP_CIPHER_CTX *ctx, uint8_t *out, const uint8_t *in, int len, const uint8_t *key, const uint8_t nonce[12]) {
  int n = 0, fin = 0;
  return EVP_EncryptInit_ex(ctx, NULL, NULL, key, nonce) == 1 && EVP_EncryptUpdate(ctx, out, &n, in, len) == 1 &&
         EVP_EncryptFinal_ex(ctx, out + n, &fin) == 1 && EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_GET_TAG, TAG_SIZE, out + len) == 1;
}

/* Decrypts `len` bytes in place and checks the tag that follows them; 1 only when it matches. */
static int open_one(EVP_CIPHER_CTX *ctx, uint8_t *data, int len, const uint8_t *key, const uint8_t nonce[12]) {
  int n = 0, fin = 0;
  return EVP_DecryptInit_ex(ctx, NULL, NULL, key, nonce) == 1 &&
         EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_SET_TAG, TAG_SIZE, data + len) == 1 && EVP_DecryptUpdate(ctx, data, &n, data, len) == 1 &&
         EVP_DecryptFinal_ex(ctx, data + n, &fin) == 1;
}

/* The context keeps the last packet's key (and its Poly1305 key) until the next init: overwrite
 * them once per batch, so no session key outlives its batch here (the JS side wipes its copies). */
static void forget_key(EVP_CIPHER_CTX *ctx) {
  static const uint8_t zero[KEY_SIZE];
  EVP_CipherInit_ex(ctx, NULL, NULL, zero, zero, 1);
}

/* ---- argument plumbing ----------------------------------------------------------------------- */

typedef struct {
  void *data;
  size_t length; /* in elements */
} view;

/* A typed array of the given type, or 0 with a TypeError pending. */
static int typed(napi_env env, napi_value v, napi_typedarray_type want, const char *name, view *out) {
  bool is_typed = false;
  napi_typedarray_type type;
  napi_value ab;
  size_t offset;
  if (napi_is_typedarray(env, v, &is_typed) != napi_ok || !is_typed ||
      napi_get_typedarray_info(env, v, &type, &out->length, &out->data, &ab, &offset) != napi_ok || type != want) {
    char msg[96];
    snprintf(msg, sizeof msg, "aead batch: %s has the wrong type", name);
    napi_throw_type_error(env, NULL, msg);
    return 0;
  }
  return 1;
}

static int count_arg(napi_env env, napi_value v, uint32_t *out) {
  if (napi_get_value_uint32(env, v, out) != napi_ok) {
    napi_throw_type_error(env, NULL, "aead batch: count must be a number");
    return 0;
  }
  return 1;
}

static int range_error(napi_env env, const char *msg) {
  napi_throw_range_error(env, NULL, msg);
  return 0;
}

/* offset + len within a buffer of `size` bytes, all as 64-bit so nothing wraps. */
static int within(int64_t offset, int64_t len, size_t size) {
  return offset >= 0 && len >= 0 && offset + len <= (int64_t)size;
}

static int overlaps(const uint8_t *a, size_t alen, const uint8_t *b, size_t blen) {
  return a < b + blen && b < a + alen;
}

static napi_value seal_batch(napi_env env, napi_callback_info info) {
  size_t argc = 10;
  napi_value argv[10];
  instance *inst;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, (void **)&inst) != napi_ok || argc != 10) {
    napi_throw_type_error(env, NULL, "sealBatch(src, srcOffsets, lens, dst, dstOffsets, keys, keyIndex, receivers, counters, count)");
    return NULL;
  }
  view src, src_off, lens, dst, dst_off, keys, key_index, receivers, counters;
  uint32_t count;
  if (!typed(env, argv[0], napi_uint8_array, "src", &src) || !typed(env, argv[1], napi_int32_array, "srcOffsets", &src_off) ||
      !typed(env, argv[2], napi_int32_array, "lens", &lens) || !typed(env, argv[3], napi_uint8_array, "dst", &dst) ||
      !typed(env, argv[4], napi_int32_array, "dstOffsets", &dst_off) || !typed(env, argv[5], napi_uint8_array, "keys", &keys) ||
      !typed(env, argv[6], napi_int32_array, "keyIndex", &key_index) || !typed(env, argv[7], napi_uint32_array, "receivers", &receivers) ||
      !typed(env, argv[8], napi_float64_array, "counters", &counters) || !count_arg(env, argv[9], &count))
    return NULL;
  if (count > src_off.length || count > lens.length || count > dst_off.length || count > key_index.length || count > receivers.length ||
      count > counters.length) {
    range_error(env, "sealBatch: count exceeds an array");
    return NULL;
  }
  const int32_t *so = src_off.data, *ln = lens.data, *dof = dst_off.data, *ki = key_index.data;
  const uint32_t *rcv = receivers.data;
  const double *ctr = counters.data;
  uint8_t *in = src.data, *out = dst.data;
  const uint8_t *k = keys.data;
  /* Validate everything before the first byte is written: a half-sealed batch helps nobody. */
  for (uint32_t i = 0; i < count; i++) {
    int64_t need = (int64_t)ln[i] + HEADER_SIZE + TAG_SIZE;
    if (!within(so[i], ln[i], src.length) || !within(dof[i], need, dst.length) || !within((int64_t)ki[i] * KEY_SIZE, KEY_SIZE, keys.length) ||
        overlaps(in + so[i], (size_t)ln[i], out + dof[i], (size_t)need)) {
      range_error(env, "sealBatch: a packet, its output or its key is out of bounds (or output overlaps input)");
      return NULL;
    }
    if (!(ctr[i] >= 0 && ctr[i] < MAX_EXACT_COUNTER && ctr[i] == (double)(uint64_t)ctr[i])) {
      range_error(env, "sealBatch: a counter is not an integer in [0, 2^53)");
      return NULL;
    }
  }
  for (uint32_t i = 0; i < count; i++) {
    uint8_t *msg = out + dof[i];
    uint64_t c = (uint64_t)ctr[i];
    uint8_t nonce[12];
    store32(msg, MESSAGE_TRANSPORT);
    store32(msg + 4, rcv[i]);
    store32(msg + 8, (uint32_t)c);
    store32(msg + 12, (uint32_t)(c >> 32));
    nonce_of(nonce, msg + 8);
    if (!seal_one(inst->ctx, msg + HEADER_SIZE, in + so[i], ln[i], k + (size_t)ki[i] * KEY_SIZE, nonce)) {
      forget_key(inst->ctx);
      napi_throw_error(env, "AEAD_FAILED", "sealBatch: OpenSSL refused to seal");
      return NULL;
    }
  }
  forget_key(inst->ctx);
  napi_value result;
  napi_create_uint32(env, count, &result);
  return result;
}

static napi_value open_batch(napi_env env, napi_callback_info info) {
  size_t argc = 7;
  napi_value argv[7];
  instance *inst;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, (void **)&inst) != napi_ok || argc != 7) {
    napi_throw_type_error(env, NULL, "openBatch(slab, offsets, lens, keys, keyIndex, ok, count)");
    return NULL;
  }
  view slab, offsets, lens, keys, key_index, ok;
  uint32_t count;
  if (!typed(env, argv[0], napi_uint8_array, "slab", &slab) || !typed(env, argv[1], napi_int32_array, "offsets", &offsets) ||
      !typed(env, argv[2], napi_int32_array, "lens", &lens) || !typed(env, argv[3], napi_uint8_array, "keys", &keys) ||
      !typed(env, argv[4], napi_int32_array, "keyIndex", &key_index) || !typed(env, argv[5], napi_uint8_array, "ok", &ok) ||
      !count_arg(env, argv[6], &count))
    return NULL;
  if (count > offsets.length || count > lens.length || count > key_index.length || count > ok.length) {
    range_error(env, "openBatch: count exceeds an array");
    return NULL;
  }
  const int32_t *of = offsets.data, *ln = lens.data, *ki = key_index.data;
  uint8_t *buf = slab.data, *okv = ok.data;
  const uint8_t *k = keys.data;
  for (uint32_t i = 0; i < count; i++) {
    if (ln[i] < HEADER_SIZE + TAG_SIZE || !within(of[i], ln[i], slab.length) || !within((int64_t)ki[i] * KEY_SIZE, KEY_SIZE, keys.length)) {
      range_error(env, "openBatch: a packet or its key is out of bounds (or shorter than 32 bytes)");
      return NULL;
    }
  }
  uint32_t opened = 0;
  for (uint32_t i = 0; i < count; i++) {
    uint8_t *msg = buf + of[i];
    int plain = ln[i] - HEADER_SIZE - TAG_SIZE;
    uint8_t nonce[12];
    nonce_of(nonce, msg + 8);
    okv[i] = (uint8_t)open_one(inst->ctx, msg + HEADER_SIZE, plain, k + (size_t)ki[i] * KEY_SIZE, nonce);
    if (okv[i]) opened++;
    else memset(msg + HEADER_SIZE, 0, (size_t)plain);
  }
  forget_key(inst->ctx);
  napi_value result;
  napi_create_uint32(env, opened, &result);
  return result;
}

static void free_instance(napi_env env, void *data, void *hint) {
  (void)env;
  (void)hint;
  instance *inst = data;
  EVP_CIPHER_CTX_free(inst->ctx);
  free(inst);
}

/* Adds sealBatch and openBatch to the crypto addon's exports (called from its module init). */
napi_value aead_batch_init(napi_env env, napi_value exports);

napi_value aead_batch_init(napi_env env, napi_value exports) {
  instance *inst = calloc(1, sizeof *inst);
  if (!inst) return NULL;
  inst->ctx = EVP_CIPHER_CTX_new();
  /* Choose the cipher once; each packet then only sets its key and nonce. */
  if (!inst->ctx || EVP_CipherInit_ex(inst->ctx, EVP_chacha20_poly1305(), NULL, NULL, NULL, 1) != 1) {
    EVP_CIPHER_CTX_free(inst->ctx);
    free(inst);
    napi_throw_error(env, "AEAD_UNAVAILABLE", "aead batch: OpenSSL has no ChaCha20-Poly1305");
    return NULL;
  }
  napi_value seal_fn, open_fn;
  if (napi_create_function(env, "sealBatch", NAPI_AUTO_LENGTH, seal_batch, inst, &seal_fn) != napi_ok ||
      napi_create_function(env, "openBatch", NAPI_AUTO_LENGTH, open_batch, inst, &open_fn) != napi_ok ||
      napi_set_named_property(env, exports, "sealBatch", seal_fn) != napi_ok ||
      napi_set_named_property(env, exports, "openBatch", open_fn) != napi_ok ||
      napi_set_instance_data(env, inst, free_instance, NULL) != napi_ok) {
    free_instance(env, inst, NULL);
    return NULL;
  }
  return exports;
}
