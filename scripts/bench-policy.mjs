// What the policy filter costs the data path: two WireGuard Devices joined in memory (no sockets,
// no TUN), one TCP flow of 1400-byte packets alpha -> beta and ACKs back, with and without a
// PolicyFilter on both sides. Every packet takes the filter's stateful paths: alpha's outbound
// flow hit, beta's inbound grant, beta's reply-to-granted, alpha's inbound flow hit.
//   node scripts/bench-policy.mjs [--filter on|off] [--packets N]
// Prints packets/s and ns per packet (seal + open + filter, both directions counted).
//   node scripts/bench-policy.mjs --iperf SECONDS [--rounds N]
// The same question end to end: two static daemons in namespaces, iperf3 (one TCP stream) with
// and without `--policy`, alternating off/on N times; prints each run and the median ratio.
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { randomBytes } from 'node:crypto';
import { Device } from '../dist/wireguard/device.js';
import { makeEndpoint, ENDPOINT_SIZE } from '../dist/net/endpoint.js';
import { publicKeyOf } from '../dist/crypto/x25519.js';
import { parsePrefix } from '../dist/ip/prefix.js';
import { compilePolicy } from '../dist/policy/compile.js';
import { PolicyFilter } from '../dist/policy/filter.js';
import { parsePolicy } from '../dist/policy/parse.js';

const { values: args } = parseArgs({ options: {
  filter: { type: 'string', default: 'on' }, packets: { type: 'string', default: '400000' },
  iperf: { type: 'string' }, rounds: { type: 'string', default: '3' },
} });
if (args.iperf) {
  await iperfPair(Number(args.iperf), Number(args.rounds));
  process.exit(0);
}
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

async function iperfPair(seconds, rounds) {
  const { Lab, iperf3, startAgentVpn, waitForPing, wgKeyPair } = await import('../dist/lab/index.js');
  const lab = new Lab();
  try {
    const a = await lab.addNamespace('pol-a');
    const b = await lab.addNamespace('pol-b');
    await lab.connect(a, b, { a: '192.0.2.1/24', b: '192.0.2.2/24' });
    const [ka, kb] = await Promise.all([wgKeyPair(), wgKeyPair()]);
    const cfg = (me, them, mine, theirs, peerUnderlay) => ({
      privateKey: me.privateKey, listenPort: 51820, addresses: [`${mine}/24`],
      peers: [{ publicKey: them.publicKey, allowedIps: [`${theirs}/32`], endpoint: `${peerUnderlay}:51820` }],
    });
    const policyFile = join(lab.dir, 'policy.json');
    writeFileSync(policyFile, JSON.stringify({
      agents: { alpha: { wgPublicKey: ka.publicKey }, beta: { wgPublicKey: kb.publicKey } },
      grants: [{ src: ['name:alpha'], dst: ['name:beta'], ip: ['tcp:5201', 'icmp'] }],
    }));
    const results = { off: [], on: [] };
    for (let r = 0; r < rounds; r++) {
      for (const mode of ['off', 'on']) {
        const extraArgs = mode === 'on' ? ['--policy', policyFile] : [];
        const pa = await startAgentVpn(lab, a, cfg(ka, kb, '100.64.0.1', '100.64.0.2', '192.0.2.2'), 'agentvpn0', { extraArgs });
        const pb = await startAgentVpn(lab, b, cfg(kb, ka, '100.64.0.2', '100.64.0.1', '192.0.2.1'), 'agentvpn0', { extraArgs });
        try {
          await waitForPing(lab, a, '100.64.0.2', 20_000);
          const ip = await iperf3(lab, b, a, '100.64.0.2', { durationSec: seconds });
          results[mode].push(ip.bitsPerSecond / 1e6);
          console.log(`round ${r + 1} filter ${mode}: ${(ip.bitsPerSecond / 1e6).toFixed(0)} Mbit/s`);
        } finally {
          await pa.stop();
          await pb.stop();
        }
      }
    }
    const median = (xs) => [...xs].sort((x, y) => x - y)[Math.floor(xs.length / 2)];
    const ratios = results.on.map((v, i) => v / results.off[i]);
    console.log(`median: off ${median(results.off).toFixed(0)} Mbit/s, on ${median(results.on).toFixed(0)} Mbit/s, on/off ${median(ratios).toFixed(3)} (pairs ${ratios.map((x) => x.toFixed(2)).join(' ')})`);
  } finally {
    await lab.cleanup();
  }
}
