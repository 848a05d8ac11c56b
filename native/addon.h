/* Shared declarations of the agentvpn native addon: thin syscall wrappers, no protocol logic. */
#ifndef AGENTVPN_ADDON_H
#define AGENTVPN_ADDON_H

#include <netinet/in.h>
#include <node_api.h>
#include <stdint.h>

/* Endpoint encoding shared with TypeScript: 16-byte IPv6 address (IPv4 as ::ffff:a.b.c.d),
 * 2-byte big-endian port, 2 zero bytes. */
#define ADDR_SIZE 20

/* Run an N-API call; on failure leave an exception pending and return NULL from the caller. */
#define CHECK(env, call)          \
  do {                            \
    if ((call) != napi_ok) {      \
      fail_status(env);           \
      return NULL;                \
    }                             \
  } while (0)

/* A batch of outgoing packets: packet i is slab[off[i] .. off[i] + len[i]). Bounds are checked. */
typedef struct {
  uint8_t *slab;
  const int32_t *off;
  const int32_t *len;
  uint32_t count;
} packets_t;

/* addon.c: errors and argument parsing. The arg_* helpers return 0, or -1 with an exception pending. */
void fail_status(napi_env env);
napi_value errno_error(napi_env env, int err, const char *syscall, const char *subject);
napi_value throw_errno(napi_env env, int err, const char *syscall, const char *subject);
int arg_fd(napi_env env, napi_value v, int *fd);
int arg_uint32(napi_env env, napi_value v, const char *what, uint32_t *out);
int arg_bytes(napi_env env, napi_value v, const char *what, uint8_t **data, size_t *len);
int arg_int32s(napi_env env, napi_value v, const char *what, int32_t **data, size_t *len);
int arg_packets(napi_env env, napi_value *argv, napi_value count, packets_t *p);

/* udp.c: endpoint encoding. */
void addr_encode(const struct sockaddr_in6 *sa, uint8_t *out);
void addr_decode(const uint8_t *in, struct sockaddr_in6 *sa);

/* The exported functions. */
napi_value tun_open(napi_env env, napi_callback_info info);
napi_value tun_write(napi_env env, napi_callback_info info);
napi_value udp_open(napi_env env, napi_callback_info info);
napi_value udp_send(napi_env env, napi_callback_info info);
napi_value start_reader(napi_env env, napi_callback_info info);
napi_value stop_reader(napi_env env, napi_callback_info info);
napi_value offload_status(napi_env env, napi_callback_info info);
napi_value offload_split(napi_env env, napi_callback_info info);
napi_value offload_coalesce(napi_env env, napi_callback_info info);

#endif
