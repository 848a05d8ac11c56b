/**
 * The flood sender a lab namespace runs: `node dist/lab/flood-cli.js --kind K --target HOST:PORT
 * --rate PPS --duration-ms MS [--key B64] [--identity-dir DIR] [--relay-name NAME] [--size N] [--distinct N]`.
 * Prints one JSON line (a FloodReport) on stdout; errors go to stderr as `error: ...`, exit 1.
 *
 * It sends with the native batched sender (sendmmsg, up to 1024 datagrams per call), paced by a
 * token bucket on a 1 ms timer, so one process reaches several 100k datagrams/s. The datagrams
 * themselves are built by flood.ts. For `relay-send` it first asks the relay for a challenge and says
 * a real HELLO over it with the member's identity from the same socket, and waits for the ack, so the
 * relay takes the SENDs as that member's.
 */
import { parseArgs } from 'node:util';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseAddress } from '../ip/prefix.js';
import { Identity } from '../identity/identity.js';
import { encodeChallengeRequest, encodeHello, parseChallenge, parseHelloAck, parseHostPort } from '../relay/protocol.js';
import { relayNameHash } from '../relay/relay-name.js';
import { BUILTIN_RELAY_NAME } from '../registry/relay-list.js';
import { ADDR_SIZE, native } from '../tun/native.js';
import { makeEndpoint } from '../net/endpoint.js';
import { FLOOD_KINDS, floodDatagrams, type FloodKind, type FloodReport, type FloodSpec } from './flood.js';

/** Datagrams per native call: the reader's own batch limit, and ~16 sendmmsg calls of 64. */
const BATCH = 1024;
/** Socket buffer: a few ms of datagrams at full rate, so a busy receiver does not stall the sender. */
const SOCKET_BUFFER_BYTES = 4 * 1024 * 1024;
/** The pacing bucket holds at most this much time's worth of datagrams (bursts stay short). */
const MAX_BURST_MS = 20;
/** How long a relay-send flood waits for its hello to be acknowledged, and how often it repeats it. */
const HELLO_TIMEOUT_MS = 5_000;
const HELLO_RETRY_MS = 500;

function parseSpec(argv: string[]): FloodSpec {
  const { values } = parseArgs({
    args: argv,
    options: {
      kind: { type: 'string' },
      target: { type: 'string' },
      rate: { type: 'string', default: '0' },
      'duration-ms': { type: 'string', default: '5000' },
      key: { type: 'string' },
      'identity-dir': { type: 'string' },
      'relay-name': { type: 'string' },
      size: { type: 'string' },
      distinct: { type: 'string' },
    },
  });
  const kind = values.kind as FloodKind;
  if (!FLOOD_KINDS.includes(kind)) throw new Error(`--kind must be one of ${FLOOD_KINDS.join(', ')}`);
  if (!values.target) throw new Error('--target HOST:PORT is required');
  const rate = Number(values.rate);
  const durationMs = Number(values['duration-ms']);
  if (!(rate >= 0) || !(durationMs > 0)) throw new Error('--rate must be >= 0 and --duration-ms > 0');
  return {
    kind, target: values.target, rate, durationMs, key: values.key, identityDir: values['identity-dir'], relayName: values['relay-name'],
    size: values.size === undefined ? undefined : Number(values.size),
    distinct: values.distinct === undefined ? undefined : Number(values.distinct),
  };
}

function targetEndpoint(target: string): Buffer {
  const { host, port } = parseHostPort(target, 'flood target');
  const addr = parseAddress(host);
  if (!addr) throw new Error(`flood target host must be an IP address, got ${host}`);
  return makeEndpoint(addr, port);
}

/** Sends a real HELLO (over the relay's challenge) from fd until the relay acknowledges it (the relay then knows this socket as the member). */
async function helloRelay(fd: number, to: Buffer, member: Identity, relayName: string): Promise<void> {
  const nameHash = relayNameHash(relayName);
  const slot = 2048;
  const slab = Buffer.alloc(slot * 64);
  const lens = new Int32Array(64);
  let acked = false;
  let challenge: Buffer | null = null;
  const reader = native.startReader(fd, 'udp', slab, slot, 64, lens, Buffer.alloc(ADDR_SIZE * 64), (n) => {
    for (let i = 0; i < n; i++) {
      const frame = slab.subarray(i * slot, i * slot + lens[i]!);
      const ack = parseHelloAck(frame);
      if (ack && Buffer.compare(ack.wgKey, member.wgPublicKey) === 0) acked = true;
      const c = parseChallenge(frame);
      if (c) challenge = Buffer.from(c);
    }
  });
  try {
    const deadline = Date.now() + HELLO_TIMEOUT_MS;
    while (!acked && Date.now() < deadline) {
      const hello = challenge ? encodeHello(member, Date.now(), 0, nameHash, challenge) : encodeChallengeRequest();
      native.udpSend(fd, hello, Int32Array.of(0), Int32Array.of(hello.length), to, 1);
      const had: Buffer | null = challenge;
      for (let t = 0; t < HELLO_RETRY_MS && !acked && challenge === had; t += 10) await sleep(10);
    }
  } finally {
    native.stopReader(reader);
  }
  if (!acked) throw new Error(`the relay at the target did not acknowledge the hello of ${member.id} within ${HELLO_TIMEOUT_MS} ms (is it a member?)`);
}

async function flood(spec: FloodSpec): Promise<FloodReport> {
  const to = targetEndpoint(spec.target);
  const member = spec.kind === 'relay-send' ? Identity.loadOrCreate(requireDir(spec.identityDir)) : undefined;
  const datagrams = floodDatagrams(spec, member);
  const slot = Math.max(...datagrams.map((d) => d.length));
  const slab = Buffer.alloc(slot * datagrams.length);
  datagrams.forEach((d, i) => d.copy(slab, i * slot));
  const offsets = new Int32Array(BATCH);
  const lens = new Int32Array(BATCH);
  const addrs = Buffer.alloc(ADDR_SIZE * BATCH);
  for (let i = 0; i < BATCH; i++) to.copy(addrs, i * ADDR_SIZE);

  const { fd } = native.udpOpen(0, SOCKET_BUFFER_BYTES);
  try {
    if (member) await helloRelay(fd, to, member, spec.relayName ?? BUILTIN_RELAY_NAME);
    let next = 0;
    let sent = 0;
    const start = performance.now();
    const end = start + spec.durationMs;
    const maxCredit = Math.max(BATCH, (spec.rate * MAX_BURST_MS) / 1000);
    let credit = 0;
    let last = start;
    for (let now = start; now < end; now = performance.now()) {
      let due = BATCH;
      if (spec.rate > 0) {
        credit = Math.min(maxCredit, credit + ((now - last) * spec.rate) / 1000);
        last = now;
        due = Math.min(BATCH, Math.floor(credit));
        if (due === 0) {
          await sleep(1);
          continue;
        }
      }
      for (let i = 0; i < due; i++) {
        offsets[i] = next * slot;
        lens[i] = datagrams[next]!.length;
        next = next + 1 === datagrams.length ? 0 : next + 1;
      }
      const n = native.udpSend(fd, slab, offsets, lens, addrs, due);
      sent += n;
      credit -= due; // what the kernel refused (full buffer) is lost, as a real flood's would be
      if (n < due) await sleep(0); // socket buffer full: let the kernel drain it
    }
    const seconds = (performance.now() - start) / 1000;
    return {
      kind: spec.kind, target: spec.target, offeredPps: spec.rate > 0 ? spec.rate : null,
      sent, seconds, achievedPps: Math.round(sent / seconds), distinct: datagrams.length,
    };
  } finally {
    native.closeFd(fd);
  }
}

function requireDir(dir: string | undefined): string {
  if (!dir) throw new Error('a relay-send flood needs --identity-dir (the state directory of a member agent)');
  return dir;
}

try {
  const report = await flood(parseSpec(process.argv.slice(2)));
  process.stdout.write(`${JSON.stringify(report)}\n`);
} catch (e) {
  process.stderr.write(`error: ${e instanceof Error ? e.message : String(e)}\n`);
  process.exitCode = 1;
}
