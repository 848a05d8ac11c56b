// An attacker of the relay, run inside a lab namespace by the relay flood tests (ip netns exec NS
// vite-node this-file). It sends with the native batch sender (sendmmsg), so one process reaches
// a few 100k datagrams/s. Configured by environment:
//   AVF_RELAY   the relay's UDP "host:port" (IPv4)
//   AVF_KIND    "hello": HELLO frames with random Ed25519 keys and random signatures, a current
//               timestamp and a real challenge the relay made for this socket (so each passes the
//               challenge and costs the relay its signature budget; they never verify);
//               "challenge": challenge requests (each costs the relay one MAC and an answer, at a
//               budget); "member": say a real hello with the identity of AVF_SEED
//               (hex), then blast SEND frames of AVF_SIZE payload bytes to the WireGuard key
//               AVF_DST (base64), which is a member the test keeps registered.
//   AVF_SECONDS how long to flood; AVF_RATE datagrams/s (0: as fast as the socket takes them)
// Prints one JSON line {sent, seconds, pps} when done.
import { randomBytes } from 'node:crypto';
import { Identity } from '../../src/identity/identity.js';
import { parseAddress } from '../../src/ip/prefix.js';
import { CHALLENGE_SIZE } from '../../src/relay/challenge.js';
import {
  CHALLENGE_REQUEST_SIZE, FRAME_HELLO, FRAME_HELLO_ACK, HELLO_CHALLENGE_AT, HELLO_NAME_AT, HELLO_SIZE, RELAY_VERSION, encodeChallengeRequest, encodeHello, encodeSend, parseChallenge, parseHostPort,
} from '../../src/relay/protocol.js';
import { ADDR_SIZE, native } from '../../src/tun/native.js';
import { makeEndpoint } from '../../src/net/endpoint.js';
import { relayNameHash } from '../../src/relay/relay-name.js';

/** The relay of these floods is unnamed: hellos for the empty name. */
const UNNAMED = relayNameHash('');

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

/** Asks the relay for a challenge for this socket, then (with an identity) says hello over it until acked. */
async function challengeAndHello(identity: Identity | null): Promise<Buffer> {
  const slab = Buffer.alloc(2048);
  const lens = new Int32Array(1);
  const addrs = Buffer.alloc(ADDR_SIZE);
  let acked = false;
  let challenge: Buffer | null = null;
  const reader = native.startReader(fd, 'udp', slab, 2048, 1, lens, addrs, (n) => {
    if (n > 0 && slab[0] === FRAME_HELLO_ACK) acked = true;
    const c = n > 0 ? parseChallenge(slab.subarray(0, lens[0])) : null;
    if (c) challenge = Buffer.from(c);
  });
  for (let i = 0; i < 50 && !acked && !(challenge && !identity); i++) {
    const frame = challenge && identity ? encodeHello(identity, Date.now(), 0, UNNAMED, challenge) : encodeChallengeRequest();
    native.udpSend(fd, frame, Int32Array.of(0), Int32Array.of(frame.length), relayEp, 1);
    await new Promise((r) => setTimeout(r, 200));
  }
  native.stopReader(reader);
  if (!challenge) throw new Error('the relay never answered a challenge request');
  if (identity && !acked) throw new Error('the relay never acked the member hello');
  return challenge;
}

const kind = env('AVF_KIND');
let batch: ReturnType<typeof makeBatch>;
/** Freshens what must stay fresh (hello timestamps) before each batch. */
let refresh = () => {};
if (kind === 'hello') {
  const challenge = await challengeAndHello(null);
  batch = makeBatch(HELLO_SIZE);
  randomBytes(batch.slab.length).copy(batch.slab);
  for (let i = 0; i < BATCH; i++) {
    batch.slab[i * HELLO_SIZE] = FRAME_HELLO;
    batch.slab[i * HELLO_SIZE + 1] = RELAY_VERSION;
    batch.slab[i * HELLO_SIZE + 2] = 0;
    UNNAMED.copy(batch.slab, i * HELLO_SIZE + HELLO_NAME_AT); // the relay's own (empty) name: the flood meets the challenge check
    challenge.copy(batch.slab, i * HELLO_SIZE + HELLO_CHALLENGE_AT, 0, CHALLENGE_SIZE);
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
} else if (kind === 'challenge') {
  batch = makeBatch(CHALLENGE_REQUEST_SIZE);
  for (let i = 0; i < BATCH; i++) encodeChallengeRequest().copy(batch.slab, i * CHALLENGE_REQUEST_SIZE);
} else if (kind === 'member') {
  await challengeAndHello(new Identity(Buffer.from(env('AVF_SEED'), 'hex')));
  const size = Number(env('AVF_SIZE') || 128);
  const dst = Buffer.from(env('AVF_DST'), 'base64');
  batch = makeBatch(33 + size);
  for (let i = 0; i < BATCH; i++) encodeSend(dst, randomBytes(size), batch.slab, i * (33 + size));
} else {
  throw new Error(`AVF_KIND must be hello, challenge or member, not "${kind}"`);
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
