/* Module entry, closeFd, and the helpers every export shares: argument checks and errno errors. */
#include "addon.h"
#include "offload.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

/* An N-API call failed: make sure JS sees an exception (the call may already have set one). */
void fail_status(napi_env env) {
  const napi_extended_error_info *info = NULL;
  napi_get_last_error_info(env, &info); /* read before the next call clears it */
  const char *msg = info && info->error_message ? info->error_message : "N-API call failed";
  bool pending = false;
  napi_is_exception_pending(env, &pending);
  if (!pending) napi_throw_error(env, NULL, msg);
}

/* An Error shaped like Node's system errors: message "<syscall> <subject>: <strerror>",
 * code "EBUSY" etc., errno negative as in Node, and syscall. NULL (exception pending) on failure. */
napi_value errno_error(napi_env env, int err, const char *syscall, const char *subject) {
  char msg[256];
  if (subject)
    snprintf(msg, sizeof msg, "%s %s: %s", syscall, subject, strerror(err));
  else
    snprintf(msg, sizeof msg, "%s: %s", syscall, strerror(err));
  napi_value code, text, error, num, sys;
  /* libuv's error codes are negated errno values on Unix, so it names them for us. */
  if (napi_create_string_utf8(env, uv_err_name(-err), NAPI_AUTO_LENGTH, &code) != napi_ok ||
      napi_create_string_utf8(env, msg, NAPI_AUTO_LENGTH, &text) != napi_ok ||
      napi_create_error(env, code, text, &error) != napi_ok ||
      napi_create_int32(env, -err, &num) != napi_ok ||
      napi_set_named_property(env, error, "errno", num) != napi_ok ||
      napi_create_string_utf8(env, syscall, NAPI_AUTO_LENGTH, &sys) != napi_ok ||
      napi_set_named_property(env, error, "syscall", sys) != napi_ok) {
    fail_status(env);
    return NULL;
  }
  return error;
}

napi_value throw_errno(napi_env env, int err, const char *syscall, const char *subject) {
  napi_value error = errno_error(env, err, syscall, subject);
  if (error) napi_throw(env, error);
  return NULL;
}

static int type_error(napi_env env, const char *what, const char *expected) {
  char msg[128];
  snprintf(msg, sizeof msg, "%s must be %s", what, expected);
  napi_throw_type_error(env, NULL, msg);
  return -1;
}

/* A whole number in [0, max]. */
static int arg_whole(napi_env env, napi_value v, const char *what, double max, double *out) {
  if (napi_get_value_double(env, v, out) != napi_ok || !isfinite(*out) || *out != floor(*out) ||
      *out < 0 || *out > max)
    return type_error(env, what, "a non-negative integer");
  return 0;
}

int arg_fd(napi_env env, napi_value v, int *fd) {
  double d;
  if (arg_whole(env, v, "fd", INT_MAX, &d)) return -1;
  *fd = (int)d;
  return 0;
}

int arg_uint32(napi_env env, napi_value v, const char *what, uint32_t *out) {
  double d;
  if (arg_whole(env, v, what, UINT32_MAX, &d)) return -1;
  *out = (uint32_t)d;
  return 0;
}

/* A Buffer (any ArrayBufferView is accepted, as Node's Buffer::HasInstance does). */
int arg_bytes(napi_env env, napi_value v, const char *what, uint8_t **data, size_t *len) {
  bool ok = false;
  if (napi_is_buffer(env, v, &ok) != napi_ok || !ok ||
      napi_get_buffer_info(env, v, (void **)data, len) != napi_ok)
    return type_error(env, what, "a Buffer");
  return 0;
}

int arg_int32s(napi_env env, napi_value v, const char *what, int32_t **data, size_t *len) {
  bool ok = false;
  napi_typedarray_type type;
  if (napi_is_typedarray(env, v, &ok) != napi_ok || !ok ||
      napi_get_typedarray_info(env, v, &type, len, (void **)data, NULL, NULL) != napi_ok ||
      type != napi_int32_array)
    return type_error(env, what, "an Int32Array");
  return 0;
}

/* argv = [slab, offsets, lens]; every packet i < count must lie inside the slab. */
int arg_packets(napi_env env, napi_value *argv, napi_value count, packets_t *p) {
  size_t slab_len, n_off, n_len;
  int32_t *off, *len;
  if (arg_bytes(env, argv[0], "slab", &p->slab, &slab_len) ||
      arg_int32s(env, argv[1], "offsets", &off, &n_off) ||
      arg_int32s(env, argv[2], "lens", &len, &n_len) ||
      arg_uint32(env, count, "count", &p->count))
    return -1;
  if (p->count > n_off || p->count > n_len) {
    napi_throw_range_error(env, NULL, "count exceeds the length of offsets or lens");
    return -1;
  }
  for (uint32_t i = 0; i < p->count; i++) {
    if (off[i] < 0 || len[i] < 0 || (size_t)off[i] + (size_t)len[i] > slab_len) {
      char msg[96];
      snprintf(msg, sizeof msg, "packet %u (offset %d, length %d) lies outside the slab", i, off[i], len[i]);
      napi_throw_range_error(env, NULL, msg);
      return -1;
    }
  }
  p->off = off;
  p->len = len;
  return 0;
}

static napi_value close_fd(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  int fd;
  CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (arg_fd(env, argv[0], &fd)) return NULL; /* missing arguments read as undefined */
  offload_forget(fd);
  /* Linux releases the fd even when close() reports EINTR: never retry. */
  if (close(fd) < 0 && errno != EINTR) return throw_errno(env, errno, "close", NULL);
  return NULL;
}

NAPI_MODULE_INIT() {
  napi_property_descriptor fns[] = {
      {"tunOpen", NULL, tun_open, NULL, NULL, NULL, napi_enumerable, NULL},
      {"udpOpen", NULL, udp_open, NULL, NULL, NULL, napi_enumerable, NULL},
      {"startReader", NULL, start_reader, NULL, NULL, NULL, napi_enumerable, NULL},
      {"stopReader", NULL, stop_reader, NULL, NULL, NULL, napi_enumerable, NULL},
      {"tunWrite", NULL, tun_write, NULL, NULL, NULL, napi_enumerable, NULL},
      {"udpSend", NULL, udp_send, NULL, NULL, NULL, napi_enumerable, NULL},
      {"closeFd", NULL, close_fd, NULL, NULL, NULL, napi_enumerable, NULL},
      {"offloadStatus", NULL, offload_status, NULL, NULL, NULL, napi_enumerable, NULL},
      {"offloadSplit", NULL, offload_split, NULL, NULL, NULL, napi_enumerable, NULL},
      {"offloadCoalesce", NULL, offload_coalesce, NULL, NULL, NULL, napi_enumerable, NULL},
  };
  CHECK(env, napi_define_properties(env, exports, sizeof fns / sizeof fns[0], fns));
  return exports;
}
