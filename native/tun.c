/* TUN device: open one with TUNSETIFF, write a batch of IP packets to it. */
#include "addon.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/if_tun.h>
#include <net/if.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

/* tunOpen(name) -> { fd, name }. An empty name lets the kernel pick tunN. */
napi_value tun_open(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));

  /* One byte more than IFNAMSIZ can hold, so an over-long name is seen rather than truncated. */
  char name[IFNAMSIZ + 1];
  size_t len;
  if (napi_get_value_string_utf8(env, argv[0], name, sizeof name, &len) != napi_ok) {
    napi_throw_type_error(env, NULL, "name must be a string");
    return NULL;
  }
  if (len >= IFNAMSIZ || strlen(name) != len) return throw_errno(env, EINVAL, "TUNSETIFF", name);

  int fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) return throw_errno(env, errno, "open", "/dev/net/tun");

  struct ifreq ifr;
  memset(&ifr, 0, sizeof ifr);
  ifr.ifr_flags = IFF_TUN | IFF_NO_PI; /* raw IP packets, no 4-byte packet-info header */
  memcpy(ifr.ifr_name, name, len);
  if (ioctl(fd, TUNSETIFF, &ifr) < 0) {
    int err = errno;
    close(fd);
    return throw_errno(env, err, "TUNSETIFF", name);
  }

  napi_value result, jfd, jname;
  if (napi_create_object(env, &result) != napi_ok ||
      napi_create_int32(env, fd, &jfd) != napi_ok ||
      napi_set_named_property(env, result, "fd", jfd) != napi_ok ||
      napi_create_string_utf8(env, ifr.ifr_name, strnlen(ifr.ifr_name, IFNAMSIZ), &jname) != napi_ok ||
      napi_set_named_property(env, result, "name", jname) != napi_ok) {
    close(fd);
    fail_status(env);
    return NULL;
  }
  return result;
}

/* tunWrite(fd, slab, offsets, lens, count) -> packets written. One write() per packet: a TUN
 * fd takes exactly one IP packet per write. Packets the kernel refuses are dropped, as a NIC
 * would: EAGAIN/ENOBUFS (no memory), EINVAL (not an IPv4/IPv6 packet), EIO (interface down). */
napi_value tun_write(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value argv[5];
  int fd;
  packets_t p;
  CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (arg_fd(env, argv[0], &fd) || arg_packets(env, argv + 1, argv[4], &p)) return NULL;

  uint32_t written = 0;
  for (uint32_t i = 0; i < p.count; i++) {
    ssize_t n;
    do n = write(fd, p.slab + p.off[i], (size_t)p.len[i]);
    while (n < 0 && errno == EINTR);
    if (n >= 0)
      written++;
    else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != ENOBUFS && errno != EINVAL && errno != EIO)
      return throw_errno(env, errno, "write", NULL);
  }
  napi_value result;
  CHECK(env, napi_create_uint32(env, written, &result));
  return result;
}
