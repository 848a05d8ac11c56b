/* The offloads' JS face: offloadStatus(fd) for `agentvpn status`, and two test-only exports that
 * run the TUN split and coalescing on buffers, with no device, so tests can check every byte. */
#include "addon.h"
#include "offload.h"

#include <stdlib.h>
#include <string.h>

static int set_bool(napi_env env, napi_value obj, const char *name, bool v) {
  napi_value b;
  return napi_get_boolean(env, v, &b) != napi_ok || napi_set_named_property(env, obj, name, b) != napi_ok;
}

static int set_count(napi_env env, napi_value obj, const char *name, uint64_t v) {
  napi_value n;
  return napi_create_double(env, (double)v, &n) != napi_ok || napi_set_named_property(env, obj, name, n) != napi_ok;
}

/* offloadStatus(fd) -> { tunVnet, tunTso, tunUso, udpGso, udpGro, gsoOffAfterEio, counters... } */
napi_value offload_status(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1], out;
  int fd;
  CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (arg_fd(env, argv[0], &fd)) return NULL;
  offload_state_t zero = {0}, *s = offload_state(fd);
  if (!s) s = &zero;
  CHECK(env, napi_create_object(env, &out));
  if (set_bool(env, out, "tunVnet", s->flags & OFFLOAD_TUN_VNET) || set_bool(env, out, "tunTso", s->flags & OFFLOAD_TUN_TSO) ||
      set_bool(env, out, "tunUso", s->flags & OFFLOAD_TUN_USO) || set_bool(env, out, "udpGso", s->flags & OFFLOAD_UDP_GSO) ||
      set_bool(env, out, "udpGro", s->flags & OFFLOAD_UDP_GRO) || set_bool(env, out, "gsoOffAfterEio", s->flags & OFFLOAD_GSO_EIO) ||
      set_count(env, out, "superReads", s->super_reads) || set_count(env, out, "segmentsSplit", s->segments_split) ||
      set_count(env, out, "badReads", s->bad_reads) || set_count(env, out, "coalescedWrites", s->coalesced) ||
      set_count(env, out, "segmentsMerged", s->segments_merged) || set_count(env, out, "gsoSends", s->gso_sends) ||
      set_count(env, out, "groReads", s->gro_reads)) {
    fail_status(env);
    return NULL;
  }
  return out;
}

static napi_value buffer_array(napi_env env, uint32_t n, uint8_t *const *data, const uint32_t *lens) {
  napi_value arr, b;
  if (napi_create_array_with_length(env, n, &arr) != napi_ok) return NULL;
  for (uint32_t i = 0; i < n; i++)
    if (napi_create_buffer_copy(env, lens[i], data[i], NULL, &b) != napi_ok || napi_set_element(env, arr, i, b) != napi_ok)
      return NULL;
  return arr;
}

/* Test only. offloadSplit(vnetHeaderAndPacket, slotSize) -> Buffer[] (the packets a TUN read would
 * become), or null when the read would be dropped. */
napi_value offload_split(napi_env env, napi_callback_info info) {
  size_t argc = 2, len;
  napi_value argv[2], result = NULL;
  uint8_t *in;
  uint32_t slot;
  CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (arg_bytes(env, argv[0], "read", &in, &len) || arg_uint32(env, argv[1], "slotSize", &slot)) return NULL;
  if (len < VNET_HDR_LEN || len > VNET_HDR_LEN + MAX_SUPER_PACKET || slot == 0 || slot > MAX_SUPER_PACKET) {
    napi_throw_range_error(env, NULL, "read must be a vnet header and up to 64 KB; slotSize 1..65535");
    return NULL;
  }
  struct virtio_net_hdr h;
  memcpy(&h, in, VNET_HDR_LEN);
  uint32_t plen = (uint32_t)len - VNET_HDR_LEN, max = MAX_SUPER_PACKET;
  uint8_t *pkt = malloc(plen + 1), *slots = malloc((size_t)max * slot);
  int32_t *lens = malloc(max * sizeof *lens);
  uint8_t **ptrs = malloc(max * sizeof *ptrs);
  uint32_t *ulens = malloc(max * sizeof *ulens);
  if (!pkt || !slots || !lens || !ptrs || !ulens) {
    napi_throw_error(env, NULL, "offloadSplit: out of memory");
    goto out;
  }
  memcpy(pkt, in + VNET_HDR_LEN, plen);
  gso_split_t s;
  int prep = gso_prepare(&s, &h, pkt, plen);
  uint32_t n = 0;
  if (prep < 0 || (prep == 0 && s.hdr_len + s.gso_size > slot) || (prep == 1 && plen > slot)) {
    napi_get_null(env, &result);
    goto out;
  }
  if (prep == 1) {
    memcpy(slots, pkt, plen);
    lens[n++] = (int32_t)plen;
  } else {
    while (s.next < s.len) n += gso_emit(&s, slots + (size_t)n * slot, slot, 7, lens + n); /* odd rounds: exercise resuming */
  }
  for (uint32_t i = 0; i < n; i++) {
    ptrs[i] = slots + (size_t)i * slot;
    ulens[i] = (uint32_t)lens[i];
  }
  result = buffer_array(env, n, ptrs, ulens);
  if (!result) fail_status(env);
out:
  free(pkt);
  free(slots);
  free(lens);
  free(ptrs);
  free(ulens);
  return result;
}

/* Test only. offloadCoalesce(slab, offsets, lens, count) -> Buffer[]: what tunWrite would write,
 * each a vnet header followed by the (super-)packet. At most 128 packets. */
napi_value offload_coalesce(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  packets_t p;
  CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (arg_packets(env, argv, argv[3], &p)) return NULL;
  if (p.count > 128) {
    napi_throw_range_error(env, NULL, "at most 128 packets");
    return NULL;
  }
  gro_unit_t units[128];
  uint32_t link[128], olens[128] = {0};
  uint8_t *pkts[128], *outs[128] = {0};
  for (uint32_t i = 0; i < p.count; i++) pkts[i] = p.slab + p.off[i];
  gro_plan_t plan = {units, link, 0};
  gro_plan(&plan, pkts, p.len, p.count);
  napi_value result = NULL;
  uint32_t made = 0;
  for (; made < plan.n_units; made++) {
    gro_unit_t *u = &units[made];
    uint32_t size = VNET_HDR_LEN + (u->count == 1 ? (uint32_t)p.len[u->first] : u->total);
    uint8_t *o = outs[made] = calloc(1, size);
    if (!o) break;
    olens[made] = size;
    if (u->count == 1) {
      memcpy(o + VNET_HDR_LEN, pkts[u->first], (size_t)p.len[u->first]);
      continue;
    }
    uint32_t at = VNET_HDR_LEN + gro_finish(u, pkts[u->first]);
    memcpy(o, &u->vnet, VNET_HDR_LEN);
    memcpy(o + VNET_HDR_LEN, u->head, u->hdr);
    for (uint32_t i = u->first; i != UINT32_MAX; i = link[i]) {
      memcpy(o + at, pkts[i] + u->hdr, (size_t)p.len[i] - u->hdr);
      at += (uint32_t)p.len[i] - u->hdr;
    }
  }
  if (made == plan.n_units) result = buffer_array(env, made, outs, olens);
  if (!result) fail_status(env);
  for (uint32_t i = 0; i < made; i++) free(outs[i]);
  return result;
}
