/* TUN device: open one with TUNSETIFF (with the vnet header and TSO/USO offloads when asked and
 * the kernel agrees), write a batch of IP packets to it (coalesced into TCP super-packets when
 * the fd has offloads). */
#include "addon.h"
#include "offload.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/if_tun.h>
#include <net/if.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/uio.h>
#include <unistd.h>

/* Packets planned per round of tunWrite: one device batch; the plan lives on the stack (~40 KB). */
#define WRITE_CHUNK 128

/* Opens /dev/net/tun as name; fd >= 0, or -1 with errno set. */
static int open_tun(const char *name, size_t len, short flags, struct ifreq *ifr) {
  int fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) return -1;
  memset(ifr, 0, sizeof *ifr);
  ifr->ifr_flags = flags;
  memcpy(ifr->ifr_name, name, len);
  if (ioctl(fd, TUNSETIFF, ifr) < 0) {
    int err = errno;
    close(fd);
    errno = err;
    return -1;
  }
  return fd;
}

/* Asks for checksum and TSO offloads, and USO where the kernel has it (6.2+). Returns the
 * OFFLOAD_* flags granted, 0 if the kernel refuses even TSO. */
static uint32_t enable_offloads(int fd) {
  unsigned tso = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6;
  if (ioctl(fd, TUNSETOFFLOAD, tso | TUN_F_USO4 | TUN_F_USO6) == 0)
    return OFFLOAD_TUN_VNET | OFFLOAD_TUN_TSO | OFFLOAD_TUN_USO;
  if (ioctl(fd, TUNSETOFFLOAD, tso) == 0) return OFFLOAD_TUN_VNET | OFFLOAD_TUN_TSO;
  return 0;
}

/* tunOpen(name, offload) -> { fd, name }. An empty name lets the kernel pick tunN. With offload,
 * the fd carries a virtio_net_hdr and takes TSO/USO; when the kernel refuses any of that, the
 * device is opened again in plain mode (the name is free again: the first fd was its only owner). */
napi_value tun_open(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  bool offload = false;
  CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));

  /* One byte more than IFNAMSIZ can hold, so an over-long name is seen rather than truncated. */
  char name[IFNAMSIZ + 1];
  size_t len;
  if (napi_get_value_string_utf8(env, argv[0], name, sizeof name, &len) != napi_ok) {
    napi_throw_type_error(env, NULL, "name must be a string");
    return NULL;
  }
  if (len >= IFNAMSIZ || strlen(name) != len) return throw_errno(env, EINVAL, "TUNSETIFF", name);
  if (argc >= 2 && napi_get_value_bool(env, argv[1], &offload) != napi_ok) offload = false;

  struct ifreq ifr;
  uint32_t flags = 0;
  int fd = -1;
  if (offload) {
    /* IFF_NO_PI: raw IP packets, no 4-byte packet-info header. */
    fd = open_tun(name, len, IFF_TUN | IFF_NO_PI | IFF_VNET_HDR, &ifr);
    if (fd >= 0 && !(flags = enable_offloads(fd))) {
      close(fd);
      fd = -1;
    } else if (fd < 0 && errno != EINVAL) {
      return throw_errno(env, errno, "TUNSETIFF", name); /* EBUSY, EPERM: plain mode fails alike */
    }
  }
  if (fd < 0) fd = open_tun(name, len, IFF_TUN | IFF_NO_PI, &ifr);
  if (fd < 0) return throw_errno(env, errno, errno == ENOENT || errno == ENODEV ? "open" : "TUNSETIFF", name);
  offload_state_t *st = offload_state(fd);
  if (st) {
    memset(st, 0, sizeof *st);
    st->flags = flags;
  } else if (flags) {
    close(fd); /* out of the state table's range: we could not remember the vnet header */
    fd = open_tun(name, len, IFF_TUN | IFF_NO_PI, &ifr);
    if (fd < 0) return throw_errno(env, errno, "TUNSETIFF", name);
  }

  napi_value result, jfd, jname;
  if (napi_create_object(env, &result) != napi_ok ||
      napi_create_int32(env, fd, &jfd) != napi_ok ||
      napi_set_named_property(env, result, "fd", jfd) != napi_ok ||
      napi_create_string_utf8(env, ifr.ifr_name, strnlen(ifr.ifr_name, IFNAMSIZ), &jname) != napi_ok ||
      napi_set_named_property(env, result, "name", jname) != napi_ok) {
    offload_forget(fd);
    close(fd);
    fail_status(env);
    return NULL;
  }
  return result;
}

/* Errors that drop the packet, as a NIC would: EAGAIN/ENOBUFS (no memory), EINVAL (not an
 * IPv4/IPv6 packet, or a vnet header the kernel refuses), EIO (interface down). Other errors throw. */
static int write_iov(int fd, struct iovec *iov, int n) {
  ssize_t w;
  do w = writev(fd, iov, n);
  while (w < 0 && errno == EINTR);
  if (w >= 0) return 1;
  if (errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS || errno == EINVAL || errno == EIO) return 0;
  return -1;
}

static const struct virtio_net_hdr plain_hdr; /* all zero: no GSO, checksum complete */

/* Writes one packet, behind an empty vnet header when the fd has one. */
static int write_plain(int fd, bool vnet, uint8_t *pkt, int32_t len) {
  struct iovec iov[2] = {{(void *)&plain_hdr, VNET_HDR_LEN}, {pkt, (size_t)len}};
  return vnet ? write_iov(fd, iov, 2) : write_iov(fd, iov + 1, 1);
}

/* Writes a chunk through the coalescing plan; returns packets written or -1 (errno set). */
static int64_t write_coalesced(int fd, offload_state_t *st, uint8_t *const *pkts, const int32_t *lens, uint32_t count) {
  gro_unit_t units[WRITE_CHUNK];
  uint32_t link[WRITE_CHUNK];
  gro_plan_t plan = {units, link, 0};
  gro_plan(&plan, pkts, lens, count);
  int64_t written = 0;
  struct iovec iov[GRO_MAX_SEGMENTS + 2];
  for (uint32_t k = 0; k < plan.n_units; k++) {
    gro_unit_t *u = &units[k];
    int r;
    if (u->count == 1) {
      r = write_plain(fd, true, pkts[u->first], lens[u->first]);
    } else {
      uint32_t head = gro_finish(u, pkts[u->first]);
      iov[0] = (struct iovec){&u->vnet, VNET_HDR_LEN};
      iov[1] = (struct iovec){u->head, head};
      int n = 2;
      for (uint32_t i = u->first; i != UINT32_MAX; i = link[i])
        iov[n++] = (struct iovec){pkts[i] + u->hdr, (size_t)lens[i] - u->hdr};
      r = write_iov(fd, iov, n);
      if (r == 0 && errno == EINVAL) {
        /* The kernel refused the super-packet: its segments still go, one by one. */
        for (uint32_t i = u->first; i != UINT32_MAX && r >= 0; i = link[i]) {
          int one = write_plain(fd, true, pkts[i], lens[i]);
          if (one < 0) return -1;
          written += one;
        }
        continue;
      }
      if (r > 0) {
        st->coalesced++;
        st->segments_merged += u->count;
      }
    }
    if (r < 0) return -1;
    written += r ? u->count : 0;
  }
  return written;
}

/* tunWrite(fd, slab, offsets, lens, count) -> packets written. A TUN fd takes one IP packet (or,
 * with offloads, one super-packet) per write. Packets the kernel refuses are dropped. */
napi_value tun_write(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value argv[5];
  int fd;
  packets_t p;
  CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (arg_fd(env, argv[0], &fd) || arg_packets(env, argv + 1, argv[4], &p)) return NULL;

  offload_state_t *st = offload_state(fd);
  bool vnet = st && (st->flags & OFFLOAD_TUN_VNET);
  int64_t written = 0;
  for (uint32_t i = 0; i < p.count;) {
    uint32_t n = p.count - i < WRITE_CHUNK ? p.count - i : WRITE_CHUNK;
    if (vnet) {
      uint8_t *pkts[WRITE_CHUNK];
      for (uint32_t k = 0; k < n; k++) pkts[k] = p.slab + p.off[i + k];
      int64_t w = write_coalesced(fd, st, pkts, p.len + i, n);
      if (w < 0) return throw_errno(env, errno, "writev", NULL);
      written += w;
    } else {
      for (uint32_t k = 0; k < n; k++) {
        int r = write_plain(fd, false, p.slab + p.off[i + k], p.len[i + k]);
        if (r < 0) return throw_errno(env, errno, "write", NULL);
        written += r;
      }
    }
    i += n;
  }
  napi_value result;
  CHECK(env, napi_create_uint32(env, (uint32_t)written, &result));
  return result;
}
