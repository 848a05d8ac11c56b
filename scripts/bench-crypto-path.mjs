// The packet path's JavaScript and crypto cost without any syscall: two WireGuard Devices joined by
// a memory link, ROUNDS batches of 64 x 1400-byte IPv4 packets sealed by one (handleTunBatch) and
// opened by the other (handleUdpBatch). Prints packets/s and the plaintext Gbit/s one core moves
// through seal + open. Meant for A/B runs under farm-bench, e.g. against a copy of an older dist/:
//
//   flock /tmp/agentvpn-bench.lock farm-bench --vs 'node scripts/bench-crypto-path.mjs --dist /tmp/old-dist' \
//     -- node scripts/bench-crypto-path.mjs
//
// Options: --rounds N (default 20000), --batch N (default 64), --size BYTES (default 1400), --dist DIR.
import { resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';

const { values: args } = parseArgs({
  options: {
    rounds: { type: 'string', default: '20000' },
    batch: { type: 'string', default: '64' },
    size: { type: 'string', default: '1400' },
    dist: { type: 'string', default: new URL('../dist', import.meta.url).pathname },
  },
});
const ROUNDS = Number(args.rounds);
const BATCH = Number(args.batch);
const SIZE = Number(args.size);
const dist = pathToFileURL(resolve(args.dist)).href;
const { Device } = await import(`${dist}/wireguard/device.js`);
const { makeEndpoint } = await import(`${dist}/net/endpoint.js`);
const { parsePrefix } = await import(`${dist}/ip/prefix.js`);
const { generatePrivateKey, publicKeyOf } = await import(`${dist}/crypto/x25519.js`);

const SLOT = 2048; // room for the largest message of a 1420 MTU
const ENDPOINT = 20;

/** One side: a Device whose UDP sends land in the other side's inbound slab, copied once each. */
function side(addr, port) {
  const s = { endpoint: makeEndpoint(Uint8Array.from(addr), port), inSlab: Buffer.alloc(SLOT * BATCH * 2), inLens: new Int32Array(BATCH * 2), inAddrs: Buffer.alloc(ENDPOINT * BATCH * 2), inCount: 0, tunPackets: 0, tunBytes: 0 };
  s.io = {
    sendUdp(slab, offsets, lens, _addrs, count) {
      const to = s.peer;
      for (let i = 0; i < count; i++) {
        const n = to.inCount++;
        slab.copy(to.inSlab, n * SLOT, offsets[i], offsets[i] + lens[i]);
        to.inLens[n] = lens[i];
        s.endpoint.copy(to.inAddrs, n * ENDPOINT);
      }
      return count;
    },
    writeTun(_slab, _offsets, lens, count) {
      s.tunPackets += count;
      for (let i = 0; i < count; i++) s.tunBytes += lens[i];
      return count;
    },
  };
  s.key = generatePrivateKey();
  s.device = new Device({ privateKey: s.key, mtu: 1420, io: s.io, batchSize: BATCH });
  return s;
}

function deliver(to) {
  const n = to.inCount;
  to.inCount = 0;
  if (n > 0) to.device.handleUdpBatch(to.inSlab, SLOT, to.inLens, to.inAddrs, n);
  to.device.processHandshakes();
  return n;
}

const a = side([192, 0, 2, 1], 51820);
const b = side([192, 0, 2, 2], 51820);
a.peer = b;
b.peer = a;
a.device.addPeer({ publicKey: publicKeyOf(b.key), endpoint: b.endpoint, allowedIps: [parsePrefix('100.64.0.2/32')] });
b.device.addPeer({ publicKey: publicKeyOf(a.key), endpoint: a.endpoint, allowedIps: [parsePrefix('100.64.0.1/32')] });

// A TUN batch of IPv4/UDP packets from 100.64.0.1 to 100.64.0.2.
const tunSlot = a.device.tunSlotSize;
const tunSlab = Buffer.alloc(tunSlot * BATCH);
const tunLens = new Int32Array(BATCH).fill(SIZE);
const template = Buffer.alloc(SIZE, 0x61);
template[0] = 0x45;
template.writeUInt16BE(SIZE, 2);
template[8] = 64;
template[9] = 17;
template.set([100, 64, 0, 1], 12);
template.set([100, 64, 0, 2], 16);
function fillTun() {
  for (let i = 0; i < BATCH; i++) template.copy(tunSlab, i * tunSlot);
}

// Handshake: the first packet is staged, the initiation and response cross, the staged packet follows.
fillTun();
a.device.handleTunBatch(tunSlab, tunSlot, tunLens, 1);
while (deliver(b) + deliver(a) > 0);
if (b.tunPackets !== 1) throw new Error(`bench-crypto-path: handshake failed (${b.tunPackets} packets arrived)`);
b.tunPackets = 0;
b.tunBytes = 0;

const start = process.hrtime.bigint();
for (let r = 0; r < ROUNDS; r++) {
  fillTun(); // sealing pads in place; the TUN would hand us fresh packets
  a.device.handleTunBatch(tunSlab, tunSlot, tunLens, BATCH);
  deliver(b);
}
const seconds = Number(process.hrtime.bigint() - start) / 1e9;
const expected = ROUNDS * BATCH;
if (b.tunPackets !== expected) throw new Error(`bench-crypto-path: ${b.tunPackets} of ${expected} packets arrived`);
console.log(JSON.stringify({
  rounds: ROUNDS, batch: BATCH, size: SIZE, seconds: +seconds.toFixed(3),
  packetsPerSecond: Math.round(expected / seconds), gbitPerSecond: +((b.tunBytes * 8) / seconds / 1e9).toFixed(3),
}));
