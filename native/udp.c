/* UDP socket: a dual-stack AF_INET6 socket, batched sends with sendmmsg, endpoint encoding. */
#include "addon.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* Packets per sendmmsg call; the arrays live on the stack (about 7 KB). */
#define SEND_CHUNK 64

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

/* udpOpen(port, bufferBytes, bindAddr?) -> { fd, port }. bufferBytes 0 keeps the kernel's
 * defaults. bindAddr: 16 bytes, an IPv6 address or an IPv4 one as ::ffff:a.b.c.d (::ffff:0.0.0.0
 * is IPv4's any); without it the socket is bound to [::], both families. */
napi_value udp_open(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
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

  napi_value result, jfd, jport;
  if (napi_create_object(env, &result) != napi_ok ||
      napi_create_int32(env, fd, &jfd) != napi_ok ||
      napi_set_named_property(env, result, "fd", jfd) != napi_ok ||
      napi_create_uint32(env, ntohs(sa.sin6_port), &jport) != napi_ok ||
      napi_set_named_property(env, result, "port", jport) != napi_ok) {
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

/* udpSend(fd, slab, offsets, lens, addrs, count) -> datagrams sent. A full send buffer
 * (EAGAIN, ENOBUFS, ENOMEM) drops the rest of the batch: UDP may lose packets, and blocking
 * the event loop would be worse. */
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

  struct mmsghdr msgs[SEND_CHUNK];
  struct iovec iov[SEND_CHUNK];
  struct sockaddr_in6 to[SEND_CHUNK];
  uint32_t sent = 0, i = 0;
  while (i < p.count) {
    unsigned n = p.count - i < SEND_CHUNK ? p.count - i : SEND_CHUNK;
    memset(msgs, 0, n * sizeof msgs[0]);
    for (unsigned k = 0; k < n; k++) {
      addr_decode(addrs + (size_t)(i + k) * ADDR_SIZE, &to[k]);
      iov[k].iov_base = p.slab + p.off[i + k];
      iov[k].iov_len = (size_t)p.len[i + k];
      msgs[k].msg_hdr.msg_name = &to[k];
      msgs[k].msg_hdr.msg_namelen = sizeof to[k];
      msgs[k].msg_hdr.msg_iov = &iov[k];
      msgs[k].msg_hdr.msg_iovlen = 1;
    }
    /* sendmmsg stops at the first failing datagram: it returns the count before it, or -1 if
     * the very first one failed, so errno always belongs to datagram i. */
    int r = sendmmsg(fd, msgs, n, 0);
    if (r > 0) {
      sent += (uint32_t)r;
      i += (uint32_t)r;
    } else if (r < 0 && errno == EINTR) {
      continue;
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
