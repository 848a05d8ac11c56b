// An attacker of the relay, run inside a lab namespace by the relay flood tests (ip netns exec NS
// vite-node this-file). It sends with the native batch sender (sendmmsg), so one process reaches
// a few 100k datagrams/s. Configured by environment:
//   AVF_RELAY   the relay's UDP "host:port" (IPv4)
//   AVF_KIND    "hello": HELLO frames with random Ed25519 keys and random signatures and a current
//               timestamp (never verify); "member": say a real hello with the identity of AVF_SEED
//               (hex), then blast SEND frames of AVF_SIZE payload bytes to the WireGuard key
//               AVF_DST (base64), which is a member the test keeps registered.
//   AVF_SECONDS how long to flood; AVF_RATE datagrams/s (0: as fast as the socket takes them)
// Prints one JSON line {sent, seconds, pps} when done.
import { randomBytes } from 'node:crypto';
import { Identity } from '../../src/identity/identity.js';
import { parseAddress } from '../../src/ip/prefix.js';
import { FRAME_HELLO, FRAME_HELLO_ACK, HELLO_SIZE, RELAY_VERSION, encodeHello, encodeSend, parseHostPort } from '../../src/relay/protocol.js';
import { ADDR_SIZE, native } from '../../src/tun/native.js';
import { makeEndpoint } from '../../src/net/endpoint.js';

const env = (k: string): string => process.env[k] ?? '';
const { host, port } = parseHostPort(env('AVF_RELAY'));
const relayEp = makeEndpoint(parseAddress(host)!, port);
const seconds = Number(env('AVF_SECONDS') || 5);
const rate = Number(env('AVF_RATE') || 0);
/** Datagrams per sendmmsg call, and distinct frames cycled. */
const BATCH = 256;

const { fd } = native.udpOpen(0, 4 << 20);

/** One reusable batch: BATCH slots of `slot` bytes, all to the relay. */
function makeBatch(slot: number) {
  const slab = Buffer.alloc(BATCH * slot);
  const offsets = Int32Array.from({ length: BATCH }, (_, i) => i * slot);
  const lens = new Int32Array(BATCH).fill(slot);
  const addrs = Buffer.alloc(BATCH * ADDR_SIZE);
  for (let i = 0; i < BATCH; i++) relayEp.copy(addrs, i * ADDR_SIZE);
  return { slab, offsets, lens, addrs };
}

async function memberHello(identity: Identity): Promise<void> {
  const slab = Buffer.alloc(2048);
  const lens = new Int32Array(1);
  const addrs = Buffer.alloc(ADDR_SIZE);
  let acked = false;
  const reader = native.startReader(fd, 'udp', slab, 2048, 1, lens, addrs, (n) => {
    if (n > 0 && slab[0] === FRAME_HELLO_ACK) acked = true;
  });
  for (let i = 0; i < 50 && !acked; i++) {
    const hello = encodeHello(identity, Date.now(), 0);
    native.udpSend(fd, hello, Int32Array.of(0), Int32Array.of(hello.length), relayEp, 1);
    await new Promise((r) => setTimeout(r, 200));
  }
  native.stopReader(reader);
  if (!acked) throw new Error('the relay never acked the member hello');
}

const kind = env('AVF_KIND');
let batch: ReturnType<typeof makeBatch>;
/** Freshens what must stay fresh (hello timestamps) before each batch. */
let refresh = () => {};
if (kind === 'hello') {
  batch = makeBatch(HELLO_SIZE);
  randomBytes(batch.slab.length).copy(batch.slab);
  for (let i = 0; i < BATCH; i++) {
    batch.slab[i * HELLO_SIZE] = FRAME_HELLO;
    batch.slab[i * HELLO_SIZE + 1] = RELAY_VERSION;
    batch.slab[i * HELLO_SIZE + 2] = 0;
  }
  let keyRound = 0;
  refresh = () => {
    const now = BigInt(Date.now());
    keyRound++;
    for (let i = 0; i < BATCH; i++) {
      const f = i * HELLO_SIZE;
      batch.slab.writeUInt32BE(keyRound >>> 0, f + 3); // a new key every batch
      batch.slab.writeBigUInt64BE(now, f + 35);
    }
  };
} else if (kind === 'member') {
  await memberHello(new Identity(Buffer.from(env('AVF_SEED'), 'hex')));
  const size = Number(env('AVF_SIZE') || 128);
  const dst = Buffer.from(env('AVF_DST'), 'base64');
  batch = makeBatch(33 + size);
  for (let i = 0; i < BATCH; i++) encodeSend(dst, randomBytes(size), batch.slab, i * (33 + size));
} else {
  throw new Error(`AVF_KIND must be hello or member, not "${kind}"`);
}

console.log(JSON.stringify({ flooding: kind }));
const start = performance.now();
const end = start + seconds * 1000;
let sent = 0;
while (performance.now() < end) {
  const elapsed = (performance.now() - start) / 1000;
  if (rate > 0 && sent >= rate * elapsed) {
    await new Promise((r) => setTimeout(r, 1));
    continue;
  }
  refresh();
  sent += native.udpSend(fd, batch.slab, batch.offsets, batch.lens, batch.addrs, BATCH);
  if ((sent & 0x3fff) < BATCH) await new Promise((r) => setImmediate(r)); // let timers run
}
const took = (performance.now() - start) / 1000;
console.log(JSON.stringify({ sent, seconds: Number(took.toFixed(2)), pps: Math.round(sent / took) }));
native.closeFd(fd);
process.exit(0);
