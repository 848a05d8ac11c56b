// What the policy filter costs the data path: two WireGuard Devices joined in memory (no sockets,
// no TUN), one TCP flow of 1400-byte packets alpha -> beta and ACKs back, with and without a
// PolicyFilter on both sides. Every packet takes the filter's stateful paths: alpha's outbound
// flow hit, beta's inbound grant, beta's reply-to-granted, alpha's inbound flow hit.
//   node scripts/bench-policy.mjs [--filter on|off] [--packets N]
// Prints packets/s and ns per packet (seal + open + filter, both directions counted).
import { parseArgs } from 'node:util';
import { randomBytes } from 'node:crypto';
import { Device } from '../dist/wireguard/device.js';
import { makeEndpoint, ENDPOINT_SIZE } from '../dist/wireguard/endpoint.js';
import { publicKeyOf } from '../dist/crypto/x25519.js';
import { parsePrefix } from '../dist/ip/prefix.js';
import { compilePolicy } from '../dist/policy/compile.js';
import { PolicyFilter } from '../dist/policy/filter.js';
import { parsePolicy } from '../dist/policy/parse.js';

const { values: args } = parseArgs({ options: { filter: { type: 'string', default: 'on' }, packets: { type: 'string', default: '400000' } } });
const withFilter = args.filter === 'on';
const total = Number(args.packets);
const BATCH = 64;
const SLOT = 2048;

const keys = { alpha: randomBytes(32), beta: randomBytes(32) };
const facts = (name, n) => ({ id: name, name, tags: [], capabilities: [], ipv4: `100.64.0.${n}`, ipv6: `fd00:a::${n}`,
  wgPublicKey: Buffer.from(publicKeyOf(keys[name])).toString('base64') });
const policy = parsePolicy('{"grants": [{"src": ["name:alpha"], "dst": ["name:beta"], "ip": ["tcp:5432", "icmp"]}]}');

function side(name, n, other, otherN) {
  const s = { inbox: Buffer.alloc(SLOT * BATCH), inLens: new Int32Array(BATCH), inCount: 0, tunWritten: 0 };
  s.endpoint = makeEndpoint(Uint8Array.from([192, 0, 2, n]), 51820);
  let filter;
  if (withFilter) {
    filter = new PolicyFilter();
    filter.setPolicy(compilePolicy(policy, facts(name, n), [facts(other, otherN)]));
  }
  s.device = new Device({
    privateKey: keys[name], mtu: 1420, batchSize: BATCH, filter,
    io: {
      sendUdp: (slab, offsets, lens, _addrs, count) => {
        for (let i = 0; i < count; i++) {
          slab.copy(s.peer.inbox, s.peer.inCount * SLOT, offsets[i], offsets[i] + lens[i]);
          s.peer.inLens[s.peer.inCount++] = lens[i];
        }
        return count;
      },
      writeTun: (_slab, _offsets, _lens, count) => (s.tunWritten += count, count),
    },
  });
  return s;
}
const a = side('alpha', 1, 'beta', 2);
const b = side('beta', 2, 'alpha', 1);
a.peer = b;
b.peer = a;
a.device.addPeer({ publicKey: publicKeyOf(keys.beta), allowedIps: [parsePrefix('100.64.0.2/32')], endpoint: b.endpoint });
b.device.addPeer({ publicKey: publicKeyOf(keys.alpha), allowedIps: [parsePrefix('100.64.0.1/32')], endpoint: a.endpoint });

const addrs = Buffer.alloc(ENDPOINT_SIZE * BATCH);
function pump(s, from) {
  if (s.inCount === 0) return 0;
  for (let i = 0; i < s.inCount; i++) from.endpoint.copy(addrs, i * ENDPOINT_SIZE);
  const n = s.inCount;
  s.inCount = 0;
  s.device.handleUdpBatch(s.inbox, SLOT, s.inLens, addrs, n);
  s.device.processHandshakes();
  return n;
}

/** A TUN batch of `count` TCP packets src:sport -> dst:dport with `flags`, `size` bytes each. */
function tcpBatch(src, dst, sport, dport, flags, size, slot) {
  const slab = Buffer.alloc(slot * BATCH);
  const lens = new Int32Array(BATCH).fill(size);
  for (let i = 0; i < BATCH; i++) {
    const o = i * slot;
    slab[o] = 0x45;
    slab.writeUInt16BE(size, o + 2);
    slab[o + 8] = 64;
    slab[o + 9] = 6;
    slab.set(src, o + 12);
    slab.set(dst, o + 16);
    slab.writeUInt16BE(sport, o + 20);
    slab.writeUInt16BE(dport, o + 22);
    slab[o + 32] = 5 << 4;
    slab[o + 33] = flags;
  }
  return { slab, lens };
}
const slot = a.device.tunSlotSize;
const data = tcpBatch([100, 64, 0, 1], [100, 64, 0, 2], 40000, 5432, 0x10, 1400, slot);
const acks = tcpBatch([100, 64, 0, 2], [100, 64, 0, 1], 5432, 40000, 0x10, 40, slot);
const syn = tcpBatch([100, 64, 0, 1], [100, 64, 0, 2], 40000, 5432, 0x02, 60, slot);

// Handshake and the flow's first packet (the SYN opens it in alpha's filter).
a.device.handleTunBatch(syn.slab, slot, syn.lens, 1);
for (let i = 0; i < 10; i++) { pump(b, a); pump(a, b); }
if (b.tunWritten < 1) throw new Error('bench: the handshake did not complete');

const rounds = Math.ceil(total / BATCH);
const t0 = process.hrtime.bigint();
for (let r = 0; r < rounds; r++) {
  a.device.handleTunBatch(data.slab, slot, data.lens, BATCH);
  pump(b, a);
  b.device.handleTunBatch(acks.slab, slot, acks.lens, BATCH);
  pump(a, b);
}
const ns = Number(process.hrtime.bigint() - t0);
const packets = rounds * BATCH * 2;
const delivered = a.tunWritten + b.tunWritten - 1;
if (delivered !== packets) throw new Error(`bench: ${packets - delivered} packets did not arrive (filter ${args.filter})`);
console.log(`filter ${args.filter}: ${packets} packets (1400 B data + 40 B ACKs) in ${(ns / 1e6).toFixed(0)} ms: ${(packets / (ns / 1e9) / 1e3).toFixed(0)} kpackets/s, ${(ns / packets).toFixed(0)} ns/packet`);
