/* UDP socket: a dual-stack AF_INET6 socket, batched sends with sendmmsg (with UDP_SEGMENT where
 * the kernel has it: a run of equal-sized datagrams to one address goes down the stack as one),
 * UDP_GRO on receive (reader.c cuts what it coalesces), endpoint encoding. */
#include "addon.h"
#include "offload.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/udp.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* Messages per sendmmsg call; the arrays live on the stack (about 7 KB, plus the iov pool). */
#define SEND_CHUNK 64
/* Datagrams per UDP_SEGMENT message: the kernel's UDP_MAX_SEGMENTS is 64 before 6.x (128 after). */
#define GSO_MAX_SEGMENTS 64
/* Bytes per UDP_SEGMENT message: an IPv4 datagram's payload limit (65535 - 20 - 8), also below IPv6's. */
#define GSO_MAX_BYTES 65507
/* iovecs for one sendmmsg round with GSO: enough for a full 64-datagram device batch and more. */
#define SEND_IOV 256

void addr_encode(const struct sockaddr_in6 *sa, uint8_t *out) {
  memcpy(out, &sa->sin6_addr, 16);
  memcpy(out + 16, &sa->sin6_port, 2); /* already big-endian */
  out[18] = out[19] = 0;
}

void addr_decode(const uint8_t *in, struct sockaddr_in6 *sa) {
  memset(sa, 0, sizeof *sa);
  sa->sin6_family = AF_INET6;
  memcpy(&sa->sin6_addr, in, 16);
  memcpy(&sa->sin6_port, in + 16, 2);
}

/* Root may exceed net.core.{r,w}mem_max with the *FORCE options; otherwise fall back. */
static int set_buffer(int fd, int force_opt, int opt, int bytes) {
  if (setsockopt(fd, SOL_SOCKET, force_opt, &bytes, sizeof bytes) == 0) return 0;
  return setsockopt(fd, SOL_SOCKET, opt, &bytes, sizeof bytes);
}

/* UDP_SEGMENT and UDP_GRO where the kernel has them (4.18 / 5.0); returns the OFFLOAD_* flags. */
static uint32_t enable_offloads(int fd) {
  uint32_t flags = 0;
  int zero = 0, one = 1;
  /* Setting the socket's default segment size to 0 (none) only probes that the option exists. */
  if (setsockopt(fd, SOL_UDP, UDP_SEGMENT, &zero, sizeof zero) == 0) flags |= OFFLOAD_UDP_GSO;
  if (setsockopt(fd, SOL_UDP, UDP_GRO, &one, sizeof one) == 0) flags |= OFFLOAD_UDP_GRO;
  return flags;
}

/* udpOpen(port, bufferBytes, bindAddr?, offload?) -> { fd, port }. bufferBytes 0 keeps the kernel's
 * defaults. bindAddr: 16 bytes, an IPv6 address or an IPv4 one as ::ffff:a.b.c.d (::ffff:0.0.0.0
 * is IPv4's any); without it the socket is bound to [::], both families. offload: GSO and GRO. */
napi_value udp_open(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  bool offload = false;
  uint32_t port, bytes;
  uint8_t *bind_addr = NULL;
  size_t bind_len = 0;
  napi_valuetype t3 = napi_undefined;
  CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (arg_uint32(env, argv[0], "port", &port) || arg_uint32(env, argv[1], "bufferBytes", &bytes)) return NULL;
  if (port > 65535 || bytes > INT32_MAX) {
    napi_throw_range_error(env, NULL, "port must be 0..65535 and bufferBytes below 2 GiB");
    return NULL;
  }
  if (argc >= 4 && napi_get_value_bool(env, argv[3], &offload) != napi_ok) offload = false;
  if (argc >= 3) CHECK(env, napi_typeof(env, argv[2], &t3));
  if (t3 != napi_undefined) {
    if (arg_bytes(env, argv[2], "bindAddr", &bind_addr, &bind_len)) return NULL;
    if (bind_len != 16) {
      napi_throw_range_error(env, NULL, "bindAddr must be 16 bytes");
      return NULL;
    }
  }

  int fd = socket(AF_INET6, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return throw_errno(env, errno, "socket", "AF_INET6");

  const char *syscall = "setsockopt";
  char subject[INET6_ADDRSTRLEN + 16] = "";
  int off = 0;
  if (setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &off, sizeof off) < 0) goto fail;
  if (bytes > 0 && (set_buffer(fd, SO_RCVBUFFORCE, SO_RCVBUF, (int)bytes) < 0 ||
                    set_buffer(fd, SO_SNDBUFFORCE, SO_SNDBUF, (int)bytes) < 0))
    goto fail;

  struct sockaddr_in6 sa;
  memset(&sa, 0, sizeof sa);
  sa.sin6_family = AF_INET6;
  sa.sin6_port = htons((uint16_t)port);
  sa.sin6_addr = in6addr_any;
  if (bind_addr) memcpy(&sa.sin6_addr, bind_addr, 16);
  syscall = "bind";
  char host[INET6_ADDRSTRLEN] = "::";
  if (bind_addr) inet_ntop(AF_INET6, bind_addr, host, sizeof host);
  snprintf(subject, sizeof subject, "[%s]:%u", host, port);
  if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0) goto fail;
  socklen_t salen = sizeof sa;
  syscall = "getsockname";
  if (getsockname(fd, (struct sockaddr *)&sa, &salen) < 0) goto fail;
  offload_state_t *st = offload_state(fd);
  if (st) {
    memset(st, 0, sizeof *st);
    if (offload) st->flags = enable_offloads(fd);
  }

  napi_value result, jfd, jport;
  if (napi_create_object(env, &result) != napi_ok ||
      napi_create_int32(env, fd, &jfd) != napi_ok ||
      napi_set_named_property(env, result, "fd", jfd) != napi_ok ||
      napi_create_uint32(env, ntohs(sa.sin6_port), &jport) != napi_ok ||
      napi_set_named_property(env, result, "port", jport) != napi_ok) {
    offload_forget(fd);
    close(fd);
    fail_status(env);
    return NULL;
  }
  return result;

fail:;
  int err = errno;
  close(fd);
  return throw_errno(env, err, syscall, subject[0] ? subject : NULL);
}

/* Errors that belong to one datagram (its destination or size): skip it, send the rest. */
static int datagram_error(int err) {
  switch (err) {
    case EMSGSIZE: case EINVAL: case EACCES: case EPERM: case EAFNOSUPPORT: case EADDRNOTAVAIL:
    case ENETUNREACH: case EHOSTUNREACH: case ENETDOWN: case EHOSTDOWN: case ECONNREFUSED:
      return 1;
    default:
      return 0;
  }
}

/* How many datagrams from i on may share one UDP_SEGMENT message: same address, same size (the
 * last may be shorter), within the kernel's count and byte limits. */
static uint32_t gso_run(const packets_t *p, const uint8_t *addrs, uint32_t i, uint32_t limit) {
  int32_t size = p->len[i];
  uint32_t n = 1, bytes = (uint32_t)size;
  if (size <= 0) return 1;
  while (i + n < p->count && n < limit && n < GSO_MAX_SEGMENTS) {
    int32_t next = p->len[i + n];
    if (next <= 0 || next > size || bytes + (uint32_t)next > GSO_MAX_BYTES ||
        memcmp(addrs + (size_t)i * ADDR_SIZE, addrs + (size_t)(i + n) * ADDR_SIZE, ADDR_SIZE) != 0)
      break;
    bytes += (uint32_t)next;
    n++;
    if (next < size) break; /* a shorter one ends the run */
  }
  return n;
}

/* udpSend(fd, slab, offsets, lens, addrs, count) -> datagrams sent. A full send buffer
 * (EAGAIN, ENOBUFS, ENOMEM) drops the rest of the batch: UDP may lose packets, and blocking
 * the event loop would be worse. With GSO, a message that the kernel refuses is sent again as
 * plain datagrams; EIO (the route cannot checksum for us) also turns GSO off for the fd. */
napi_value udp_send(napi_env env, napi_callback_info info) {
  size_t argc = 6;
  napi_value argv[6];
  int fd;
  packets_t p;
  uint8_t *addrs;
  size_t addrs_len;
  CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (arg_fd(env, argv[0], &fd) || arg_packets(env, argv + 1, argv[5], &p) ||
      arg_bytes(env, argv[4], "addrs", &addrs, &addrs_len))
    return NULL;
  if (addrs_len / ADDR_SIZE < p.count) {
    napi_throw_range_error(env, NULL, "addrs holds fewer than count addresses");
    return NULL;
  }

  offload_state_t *st = offload_state(fd);
  struct mmsghdr msgs[SEND_CHUNK];
  struct iovec iov[SEND_IOV];
  struct sockaddr_in6 to[SEND_CHUNK];
  uint32_t segs[SEND_CHUNK]; /* datagrams per message */
  union {
    char buf[CMSG_SPACE(sizeof(uint16_t))];
    struct cmsghdr align;
  } ctrl[SEND_CHUNK];
  uint32_t sent = 0, i = 0;
  bool plain_next = false; /* resend one GSO message's datagrams without GSO */
  while (i < p.count) {
    bool gso = st && (st->flags & OFFLOAD_UDP_GSO) && !plain_next;
    unsigned n = 0, used = 0;
    memset(msgs, 0, sizeof msgs);
    for (uint32_t j = i; j < p.count && n < SEND_CHUNK && used < SEND_IOV; n++) {
      uint32_t k = gso ? gso_run(&p, addrs, j, SEND_IOV - used) : 1;
      addr_decode(addrs + (size_t)j * ADDR_SIZE, &to[n]);
      for (uint32_t q = 0; q < k; q++)
        iov[used + q] = (struct iovec){p.slab + p.off[j + q], (size_t)p.len[j + q]};
      struct msghdr *m = &msgs[n].msg_hdr;
      m->msg_name = &to[n];
      m->msg_namelen = sizeof to[n];
      m->msg_iov = &iov[used];
      m->msg_iovlen = k;
      if (k > 1) {
        memset(&ctrl[n], 0, sizeof ctrl[n]);
        m->msg_control = ctrl[n].buf;
        m->msg_controllen = sizeof ctrl[n].buf;
        struct cmsghdr *c = CMSG_FIRSTHDR(m);
        c->cmsg_level = SOL_UDP;
        c->cmsg_type = UDP_SEGMENT;
        c->cmsg_len = CMSG_LEN(sizeof(uint16_t));
        uint16_t size = (uint16_t)p.len[j];
        memcpy(CMSG_DATA(c), &size, sizeof size);
      }
      segs[n] = k;
      used += k;
      j += k;
    }
    plain_next = false;
    /* sendmmsg stops at the first failing message: it returns the count before it, or -1 if the
     * very first one failed, so errno always belongs to message 0 of this round. */
    int r = sendmmsg(fd, msgs, n, 0);
    if (r > 0) {
      for (int k = 0; k < r; k++) {
        sent += segs[k];
        i += segs[k];
        if (segs[k] > 1) st->gso_sends++;
      }
    } else if (r < 0 && errno == EINTR) {
      continue;
    } else if (r < 0 && segs[0] > 1 && errno != EAGAIN && errno != EWOULDBLOCK && errno != ENOBUFS && errno != ENOMEM) {
      if (errno == EIO) st->flags = (st->flags & ~(uint32_t)OFFLOAD_UDP_GSO) | OFFLOAD_GSO_EIO;
      plain_next = true;
    } else if (r < 0 && datagram_error(errno)) {
      i++;
    } else if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS || errno == ENOMEM)) {
      break;
    } else {
      return throw_errno(env, r < 0 ? errno : EIO, "sendmmsg", NULL);
    }
  }
  napi_value result;
  CHECK(env, napi_create_uint32(env, sent, &result));
  return result;
}
