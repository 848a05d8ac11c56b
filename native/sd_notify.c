/*
 * sd_notify without libsystemd: one datagram to the unix socket systemd names in NOTIFY_SOCKET.
 * Node's dgram module has no AF_UNIX, hence this. A target of its own (binding.gyp
 * agentvpn_notify), so the daemon's TUN/UDP addon is untouched by it.
 *
 *   notify(socketPath: string, message: Buffer) -> undefined, or throws an Error with .code/.syscall
 *
 * socketPath is a filesystem path, or "@name" for the abstract namespace (the '@' becomes a NUL,
 * as systemd's sd_notify does). One socket per call: this runs every few seconds at most, and a
 * socket kept open would have to be re-opened anyway when systemd restarts and rebinds the path.
 */
#include <errno.h>
#include <node_api.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

static napi_value throw_errno(napi_env env, int err, const char *syscall) {
  napi_value msg, code, sys, error;
  char text[160];
  snprintf(text, sizeof text, "%s: %s", syscall, strerror(err));
  const char *name = err == ENOENT ? "ENOENT" : err == ECONNREFUSED ? "ECONNREFUSED" : err == EACCES ? "EACCES" : "EIO";
  if (napi_create_string_utf8(env, text, NAPI_AUTO_LENGTH, &msg) != napi_ok) return NULL;
  if (napi_create_error(env, NULL, msg, &error) != napi_ok) return NULL;
  if (napi_create_string_utf8(env, name, NAPI_AUTO_LENGTH, &code) == napi_ok) napi_set_named_property(env, error, "code", code);
  if (napi_create_string_utf8(env, syscall, NAPI_AUTO_LENGTH, &sys) == napi_ok) napi_set_named_property(env, error, "syscall", sys);
  napi_throw(env, error);
  return NULL;
}

static napi_value notify(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok) return NULL;
  if (argc < 2) {
    napi_throw_type_error(env, NULL, "notify(socketPath, message) needs two arguments");
    return NULL;
  }

  struct sockaddr_un sa;
  memset(&sa, 0, sizeof sa);
  sa.sun_family = AF_UNIX;
  size_t path_len = 0;
  /* sun_path holds at most 108 bytes; a longer path is refused, never truncated. */
  if (napi_get_value_string_utf8(env, argv[0], sa.sun_path, sizeof sa.sun_path, &path_len) != napi_ok) {
    napi_throw_type_error(env, NULL, "socketPath must be a string");
    return NULL;
  }
  if (path_len < 2 || path_len >= sizeof sa.sun_path - 1 || (sa.sun_path[0] != '/' && sa.sun_path[0] != '@')) {
    napi_throw_range_error(env, NULL, "socketPath must be an absolute path or @abstract name shorter than 107 bytes");
    return NULL;
  }
  if (sa.sun_path[0] == '@') sa.sun_path[0] = '\0';
  /* Abstract names are counted, not NUL-terminated: the address length says where they end. */
  socklen_t sa_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + path_len + (sa.sun_path[0] ? 1 : 0));

  void *data = NULL;
  size_t len = 0;
  bool is_buffer = false;
  if (napi_is_buffer(env, argv[1], &is_buffer) != napi_ok || !is_buffer ||
      napi_get_buffer_info(env, argv[1], &data, &len) != napi_ok) {
    napi_throw_type_error(env, NULL, "message must be a Buffer");
    return NULL;
  }

  int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return throw_errno(env, errno, "socket");
  ssize_t n = sendto(fd, data, len, MSG_NOSIGNAL, (struct sockaddr *)&sa, sa_len);
  int err = errno;
  close(fd);
  if (n < 0) return throw_errno(env, err, "sendto");
  return NULL;
}

NAPI_MODULE_INIT() {
  napi_property_descriptor fns[] = {{"notify", NULL, notify, NULL, NULL, NULL, napi_default, NULL}};
  if (napi_define_properties(env, exports, 1, fns) != napi_ok) return NULL;
  return exports;
}
