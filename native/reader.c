/* Readiness-driven batched reading. A uv_poll_t on the JS thread's loop watches the fd; when it
 * is readable we drain it in rounds of up to maxPackets packets into the caller's slab and hand
 * each round to JS with onBatch(count), which consumes the slots before it returns.
 *
 * Lifetime: the reader struct belongs to the JS handle (an external) and is freed by its
 * finalizer. While the poll handle is open the reader holds strong references to that handle,
 * the buffers and the callbacks, so none of them can be collected under us; the uv_close
 * callback drops them. An async cleanup hook closes the poll handle if the environment (e.g.
 * a worker) shuts down first, since its loop may not be closed with our handle still open.
 *
 * Offloads (offload_state of the fd, set when it was opened): a TUN fd with a vnet header may
 * deliver 64 KB super-packets, and a UDP fd with UDP_GRO coalesced datagrams. Either is cut into
 * plain packets, one per slot; what does not fit in this round's slots stays pending in the
 * reader's scratch buffer and goes first into the next round, so JS still sees at most maxPackets
 * plain packets per onBatch and a 64 KB read is never lost for want of slots. */
#include "addon.h"
#include "offload.h"

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <netinet/udp.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>
#include <uv.h>

#define MAX_ROUNDS 8     /* full rounds per wakeup before yielding, so one busy fd cannot starve the loop */
#define MAX_PACKETS 1024 /* UIO_MAXIOV, the kernel's limit on one recvmmsg */
/* Coalesced datagrams per recvmmsg with UDP_GRO: each needs a 64 KB buffer, so 16 is 1 MB. */
#define GRO_MSGS 16
#define GRO_CTRL 64 /* control bytes per message: one cmsg with an int (the segment size) */

enum { REF_SELF, REF_SLAB, REF_LENS, REF_ADDRS, REF_ON_BATCH, REF_ON_ERROR, REF_COUNT };

typedef struct {
  uv_poll_t poll; /* first member: the uv callbacks cast the handle back to the reader */
  napi_env env;
  int fd;
  bool udp;
  bool closing; /* uv_close has been called */
  uint8_t *slab;
  uint32_t slot_size, max_packets;
  int32_t *lens;
  uint8_t *addrs;
  napi_ref refs[REF_COUNT];
  napi_async_context async;
  napi_async_cleanup_hook_handle cleanup;
  /* recvmmsg arrays, UDP only */
  struct mmsghdr *msgs;
  struct iovec *iov;
  struct sockaddr_in6 *from;
  /* offloads */
  offload_state_t *st;    /* NULL: a plain fd */
  bool vnet, gro;         /* TUN reads carry a virtio_net_hdr; UDP reads may be coalesced */
  uint8_t *scratch;       /* super-packet or coalesced datagrams being cut into slots */
  gso_split_t split;      /* TUN: the super-packet in scratch */
  bool split_pending;
  uint8_t *ctrl;          /* UDP GRO: control buffers, GRO_CTRL per message */
  uint32_t gro_size[GRO_MSGS];
  uint32_t gro_count, gro_msg, gro_off; /* messages received, the one being cut, offset in it */
} reader_t;

static bool pending(const reader_t *r) { return r->split_pending || r->gro_msg < r->gro_count; }

static void reader_finalize(napi_env env, void *data, void *hint) {
  reader_t *r = data;
  free(r->msgs);
  free(r->iov);
  free(r->from);
  free(r->scratch);
  free(r->ctrl);
  free(r);
}

/* Drop everything that keeps JS objects alive; the last ref (REF_SELF) lets the handle be collected. */
static void release(reader_t *r) {
  if (r->cleanup) napi_remove_async_cleanup_hook(r->cleanup);
  if (r->async) napi_async_destroy(r->env, r->async);
  for (int i = REF_COUNT - 1; i >= 0; i--)
    if (r->refs[i]) napi_delete_reference(r->env, r->refs[i]);
  r->cleanup = NULL;
  r->async = NULL;
  memset(r->refs, 0, sizeof r->refs);
}

static void on_closed(uv_handle_t *h) { release((reader_t *)h); }

static void close_reader(reader_t *r) {
  if (r->closing) return;
  r->closing = true;
  uv_poll_stop(&r->poll); /* also removes the fd from epoll: closing the fd afterwards is safe */
  uv_close((uv_handle_t *)&r->poll, on_closed);
}

static void on_env_teardown(napi_async_cleanup_hook_handle h, void *arg) { close_reader(arg); }

/* Call a JS function held in refs[which] with one argument, as a libuv callback does (microtasks
 * and nextTicks run afterwards). Returns false if it threw; the exception is left pending. */
static bool call_js(reader_t *r, int which, napi_value arg) {
  napi_value fn, recv, result;
  if (napi_get_reference_value(r->env, r->refs[which], &fn) != napi_ok ||
      napi_get_global(r->env, &recv) != napi_ok) /* make_callback wants an object receiver */
    return false;
  return napi_make_callback(r->env, r->async, recv, fn, 1, &arg, &result) == napi_ok;
}

/* Hand an error to onError. Errors never escape to the process: if there is no onError, or it
 * throws as well, the error is dropped. */
static void report(reader_t *r, napi_value error) {
  napi_value ignored;
  if (error && r->refs[REF_ON_ERROR] && !call_js(r, REF_ON_ERROR, error))
    napi_get_and_clear_last_exception(r->env, &ignored);
}

static void report_pending(reader_t *r) {
  napi_value error = NULL;
  bool pending = false;
  napi_is_exception_pending(r->env, &pending);
  if (pending && napi_get_and_clear_last_exception(r->env, &error) == napi_ok) report(r, error);
}

static uint32_t read_tun(reader_t *r, int *err) {
  uint32_t n = 0;
  while (n < r->max_packets) {
    ssize_t got = read(r->fd, r->slab + (size_t)n * r->slot_size, r->slot_size);
    if (got >= 0)
      r->lens[n++] = (int32_t)got;
    else if (errno != EINTR) {
      if (errno != EAGAIN && errno != EWOULDBLOCK) *err = errno;
      break;
    }
  }
  return n;
}

/* TUN with a vnet header: iov[1] is the next slot, so a plain packet lands in place; a super-packet
 * overflows into scratch + slot_size, and its head is moved to scratch to make it contiguous. */
static uint32_t read_tun_vnet(reader_t *r, bool may_read, int *err) {
  uint32_t n = 0;
  while (n < r->max_packets) {
    if (r->split_pending) {
      uint32_t k = gso_emit(&r->split, r->slab + (size_t)n * r->slot_size, r->slot_size, r->max_packets - n, r->lens + n);
      r->st->segments_split += k;
      n += k;
      r->split_pending = r->split.next < r->split.len;
      continue;
    }
    if (!may_read) break;
    struct virtio_net_hdr h;
    uint8_t *slot = r->slab + (size_t)n * r->slot_size;
    struct iovec iov[3] = {{&h, VNET_HDR_LEN}, {slot, r->slot_size}, {r->scratch + r->slot_size, MAX_SUPER_PACKET}};
    ssize_t got = readv(r->fd, iov, 3);
    if (got < 0) {
      if (errno == EINTR) continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK) *err = errno;
      break;
    }
    uint32_t len = got > (ssize_t)VNET_HDR_LEN ? (uint32_t)got - VNET_HDR_LEN : 0;
    if (h.gso_type == VIRTIO_NET_HDR_GSO_NONE) {
      if (len > r->slot_size || gso_prepare(&r->split, &h, slot, len) < 0) r->st->bad_reads++;
      else if (len > 0) r->lens[n++] = (int32_t)len;
      continue;
    }
    memcpy(r->scratch, slot, len < r->slot_size ? len : r->slot_size);
    if (gso_prepare(&r->split, &h, r->scratch, len) != 0 || r->split.hdr_len + r->split.gso_size > r->slot_size) {
      r->st->bad_reads++; /* a segment would not fit a slot, or the header lies */
      continue;
    }
    r->st->super_reads++;
    r->split_pending = true;
  }
  return n;
}

/* ICMP errors a UDP socket may report on a later receive; they say nothing about this read. */
static bool transient_udp(int err) {
  return err == EINTR || err == ECONNREFUSED || err == EHOSTUNREACH || err == ENETUNREACH ||
         err == EHOSTDOWN || err == ENETDOWN || err == EMSGSIZE;
}

static uint32_t read_udp(reader_t *r, int *err) {
  for (;;) {
    for (uint32_t k = 0; k < r->max_packets; k++) r->msgs[k].msg_hdr.msg_namelen = sizeof r->from[k];
    int n = recvmmsg(r->fd, r->msgs, r->max_packets, 0, NULL);
    if (n >= 0) {
      for (int k = 0; k < n; k++) {
        r->lens[k] = (int32_t)r->msgs[k].msg_len;
        addr_encode(&r->from[k], r->addrs + (size_t)k * ADDR_SIZE);
      }
      return (uint32_t)n;
    }
    if (transient_udp(errno)) continue;
    /* ENOBUFS/ENOMEM: nothing lost yet; the fd stays readable and we come back. */
    if (errno != EAGAIN && errno != EWOULDBLOCK && errno != ENOBUFS && errno != ENOMEM) *err = errno;
    return 0;
  }
}

/* The segment size of a coalesced datagram (UDP_GRO cmsg), or 0 for a datagram of its own. */
static uint32_t gro_segment_size(struct msghdr *m) {
  for (struct cmsghdr *c = CMSG_FIRSTHDR(m); c; c = CMSG_NXTHDR(m, c)) {
    if (c->cmsg_level == SOL_UDP && c->cmsg_type == UDP_GRO && c->cmsg_len >= CMSG_LEN(sizeof(int))) {
      int size;
      memcpy(&size, CMSG_DATA(c), sizeof size);
      return size > 0 ? (uint32_t)size : 0;
    }
  }
  return 0;
}

/* UDP with UDP_GRO: recvmmsg of up to GRO_MSGS datagrams of up to 64 KB into scratch, then each is
 * cut at its segment size into slots (all segments but the last have exactly that size). */
static uint32_t read_udp_gro(reader_t *r, bool may_read, int *err) {
  uint32_t n = 0;
  while (n < r->max_packets) {
    if (r->gro_msg < r->gro_count) {
      uint32_t m = r->gro_msg, len = r->msgs[m].msg_len, seg = r->gro_size[m] ? r->gro_size[m] : len;
      const uint8_t *data = r->scratch + (size_t)m * MAX_SUPER_PACKET;
      if (seg < len) r->st->gro_reads += r->gro_off == 0;
      while (n < r->max_packets && r->gro_off < len) {
        uint32_t piece = len - r->gro_off < seg ? len - r->gro_off : seg;
        memcpy(r->slab + (size_t)n * r->slot_size, data + r->gro_off, piece < r->slot_size ? piece : r->slot_size);
        r->lens[n] = (int32_t)(piece < r->slot_size ? piece : r->slot_size); /* truncated as a plain read would be */
        addr_encode(&r->from[m], r->addrs + (size_t)n * ADDR_SIZE);
        n++;
        r->gro_off += piece;
      }
      if (r->gro_off >= len) {
        r->gro_msg++;
        r->gro_off = 0;
      }
      continue;
    }
    if (!may_read) break;
    for (uint32_t k = 0; k < GRO_MSGS; k++) {
      r->msgs[k].msg_hdr.msg_namelen = sizeof r->from[k];
      r->msgs[k].msg_hdr.msg_controllen = GRO_CTRL;
    }
    int got = recvmmsg(r->fd, r->msgs, GRO_MSGS, 0, NULL);
    if (got < 0) {
      if (transient_udp(errno)) continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK && errno != ENOBUFS && errno != ENOMEM) *err = errno;
      break;
    }
    for (int k = 0; k < got; k++) r->gro_size[k] = gro_segment_size(&r->msgs[k].msg_hdr);
    r->gro_count = (uint32_t)got;
    r->gro_msg = r->gro_off = 0;
    if (got < GRO_MSGS) may_read = false; /* drained: what is left of this wakeup is in scratch */
  }
  return n;
}

static void on_readable(uv_poll_t *h, int status, int events) {
  reader_t *r = (reader_t *)h;
  napi_handle_scope scope;
  if (r->closing || napi_open_handle_scope(r->env, &scope) != napi_ok) return;
  int err = status < 0 ? -status : 0;
  /* Past MAX_ROUNDS only what is already pending is delivered (at most 64 KB: bounded). */
  for (int round = 0; (round < MAX_ROUNDS || pending(r)) && !err && !r->closing; round++) {
    bool may_read = round < MAX_ROUNDS;
    uint32_t n = r->gro ? read_udp_gro(r, may_read, &err)
                 : r->vnet ? read_tun_vnet(r, may_read, &err)
                 : r->udp ? read_udp(r, &err) : read_tun(r, &err);
    napi_value count;
    if (n > 0 && (napi_create_uint32(r->env, n, &count) != napi_ok || !call_js(r, REF_ON_BATCH, count)))
      report_pending(r);
    if (n < r->max_packets && !pending(r)) break; /* drained (or failed): wait for the next wakeup */
  }
  /* A hard error (not EAGAIN, not a transient ICMP one) would repeat on every wakeup: stop
   * polling and tell JS. The handle stays open until stopReader. */
  if (err && !r->closing) {
    uv_poll_stop(&r->poll);
    report(r, errno_error(r->env, err, r->udp ? "recvmmsg" : "read", NULL));
    report_pending(r); /* errno_error itself failed */
  }
  napi_close_handle_scope(r->env, scope);
}

static int arg_function(napi_env env, napi_value v, bool optional, napi_value *out) {
  napi_valuetype t;
  if (napi_typeof(env, v, &t) != napi_ok) return -1;
  if (t == napi_function || (optional && (t == napi_undefined || t == napi_null))) {
    *out = t == napi_function ? v : NULL;
    return 0;
  }
  napi_throw_type_error(env, NULL, optional ? "onError must be a function or undefined" : "onBatch must be a function");
  return -1;
}

/* startReader(fd, kind, slab, slotSize, maxPackets, lens, addrs, onBatch, onError?) -> handle */
napi_value start_reader(napi_env env, napi_callback_info info) {
  size_t argc = 9;
  napi_value argv[9], on_batch, on_error;
  int fd;
  char kind[4];
  uint8_t *slab, *addrs = NULL;
  size_t slab_len, lens_len, addrs_len = 0, kind_len;
  uint32_t slot_size, max_packets;
  int32_t *lens;
  napi_valuetype addrs_type;
  CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (arg_fd(env, argv[0], &fd)) return NULL;
  if (napi_get_value_string_utf8(env, argv[1], kind, sizeof kind, &kind_len) != napi_ok ||
      (strcmp(kind, "tun") != 0 && strcmp(kind, "udp") != 0)) {
    napi_throw_type_error(env, NULL, "kind must be 'tun' or 'udp'");
    return NULL;
  }
  bool udp = kind[0] == 'u';
  CHECK(env, napi_typeof(env, argv[6], &addrs_type));
  if (arg_bytes(env, argv[2], "slab", &slab, &slab_len) ||
      arg_uint32(env, argv[3], "slotSize", &slot_size) ||
      arg_uint32(env, argv[4], "maxPackets", &max_packets) ||
      arg_int32s(env, argv[5], "lens", &lens, &lens_len) ||
      ((udp || (addrs_type != napi_null && addrs_type != napi_undefined)) && arg_bytes(env, argv[6], "addrs", &addrs, &addrs_len)) ||
      arg_function(env, argv[7], false, &on_batch) || arg_function(env, argv[8], true, &on_error))
    return NULL;
  if (slot_size == 0 || max_packets == 0 || max_packets > MAX_PACKETS) {
    napi_throw_range_error(env, NULL, "slotSize must be > 0 and maxPackets 1..1024");
    return NULL;
  }
  if ((uint64_t)slot_size * max_packets > slab_len || lens_len < max_packets ||
      (udp && addrs_len < (size_t)max_packets * ADDR_SIZE)) {
    napi_throw_range_error(env, NULL, "slab, lens or addrs is too small for maxPackets");
    return NULL;
  }

  offload_state_t *st = offload_state(fd);
  bool vnet = !udp && st && (st->flags & OFFLOAD_TUN_VNET);
  bool gro = udp && st && (st->flags & OFFLOAD_UDP_GRO);
  uint32_t n_msgs = gro && max_packets < GRO_MSGS ? GRO_MSGS : max_packets;
  reader_t *r = calloc(1, sizeof *r);
  bool ok = r != NULL;
  if (ok && udp) {
    r->msgs = calloc(n_msgs, sizeof *r->msgs);
    r->iov = calloc(n_msgs, sizeof *r->iov);
    r->from = calloc(n_msgs, sizeof *r->from);
    ok = r->msgs && r->iov && r->from;
  }
  if (ok && (vnet || gro)) {
    r->scratch = malloc(vnet ? (size_t)slot_size + MAX_SUPER_PACKET : (size_t)GRO_MSGS * MAX_SUPER_PACKET);
    if (gro) r->ctrl = calloc(GRO_MSGS, GRO_CTRL);
    ok = r->scratch && (!gro || r->ctrl);
  }
  napi_value handle;
  if (!ok ||
      napi_create_external(env, r, reader_finalize, NULL, &handle) != napi_ok) {
    if (r) reader_finalize(env, r, NULL);
    napi_throw_error(env, NULL, "startReader: out of memory");
    return NULL;
  }
  /* From here on the external owns r. */
  r->env = env;
  r->fd = fd;
  r->udp = udp;
  r->slab = slab;
  r->slot_size = slot_size;
  r->max_packets = max_packets;
  r->lens = lens;
  r->addrs = addrs;
  r->st = st;
  r->vnet = vnet;
  r->gro = gro;
  for (uint32_t k = 0; gro && k < GRO_MSGS; k++) {
    r->iov[k].iov_base = r->scratch + (size_t)k * MAX_SUPER_PACKET;
    r->iov[k].iov_len = MAX_SUPER_PACKET;
    r->msgs[k].msg_hdr.msg_iov = &r->iov[k];
    r->msgs[k].msg_hdr.msg_iovlen = 1;
    r->msgs[k].msg_hdr.msg_name = &r->from[k];
    r->msgs[k].msg_hdr.msg_control = r->ctrl + (size_t)k * GRO_CTRL;
  }
  for (uint32_t k = 0; udp && !gro && k < max_packets; k++) {
    r->iov[k].iov_base = slab + (size_t)k * slot_size;
    r->iov[k].iov_len = slot_size;
    r->msgs[k].msg_hdr.msg_iov = &r->iov[k];
    r->msgs[k].msg_hdr.msg_iovlen = 1;
    r->msgs[k].msg_hdr.msg_name = &r->from[k];
  }

  napi_value name, held[REF_COUNT] = {handle, argv[2], argv[5], addrs ? argv[6] : NULL, on_batch, on_error};
  uv_loop_t *loop;
  int uverr;
  for (int i = 0; i < REF_COUNT; i++)
    if (held[i] && napi_create_reference(env, held[i], 1, &r->refs[i]) != napi_ok) goto napi_fail;
  if (napi_create_string_utf8(env, "agentvpn.reader", NAPI_AUTO_LENGTH, &name) != napi_ok ||
      napi_async_init(env, NULL, name, &r->async) != napi_ok ||
      napi_get_uv_event_loop(env, &loop) != napi_ok)
    goto napi_fail;
  if ((uverr = uv_poll_init(loop, &r->poll, fd)) < 0) {
    release(r);
    return throw_errno(env, -uverr, "uv_poll_init", NULL);
  }
  /* The handle is now open: from here on every failure path must close it. */
  if ((uverr = uv_poll_start(&r->poll, UV_READABLE, on_readable)) < 0) {
    close_reader(r);
    return throw_errno(env, -uverr, "uv_poll_start", NULL);
  }
  if (napi_add_async_cleanup_hook(env, on_env_teardown, r, &r->cleanup) != napi_ok) {
    fail_status(env);
    close_reader(r);
    return NULL;
  }
  return handle;

napi_fail:
  fail_status(env);
  release(r);
  return NULL;
}

/* stopReader(handle): idempotent. The fd is out of epoll when this returns; the references are
 * dropped once libuv has closed the handle (next loop iteration). */
napi_value stop_reader(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  napi_valuetype t;
  reader_t *r;
  CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  CHECK(env, napi_typeof(env, argv[0], &t));
  if (t != napi_external) {
    napi_throw_type_error(env, NULL, "not a reader handle");
    return NULL;
  }
  CHECK(env, napi_get_value_external(env, argv[0], (void **)&r));
  close_reader(r);
  return NULL;
}
