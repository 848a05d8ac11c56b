/**
 * Flood traffic for the adversarial tests and `scripts/bench-flood`: what an attacker sends,
 * built with the project's own codecs, and a lab helper that runs the sender (flood-cli.ts) in
 * a namespace and returns its report.
 *
 *   const report = await runFlood(lab, attackerNs, { kind: 'handshake', target: '192.0.2.2:51821',
 *     key: victimPublicKey, rate: 30_000, durationMs: 5_000 });   // { sent, achievedPps, ... }
 *
 * ## The datagrams (one kind per flood; a few hundred distinct ones are built once and cycled)
 *
 * | kind          | datagram                                                                       | size     | who can make it                 |
 * | ------------- | ------------------------------------------------------------------------------ | -------- | ------------------------------- |
 * | `handshake`   | a real WireGuard initiation: 01 000000, sender index (4, LE, distinct per     | 148      | anyone who knows the target's   |
 * |               | datagram), ephemeral (32), sealed static (48), sealed TAI64N (28), mac1 (16,   |          | public key (it is published)    |
 * |               | VALID for the target's key), mac2 (16, zero). From a throwaway static key, so  |          |                                 |
 * |               | the target does not know the sender; mac1 stays valid when replayed.           |          |                                 |
 * | `disco`       | a0, a KNOWN peer's WireGuard key (32), random nonce (24), random bytes the     | 94       | anyone who knows a member's key |
 * |               | size of a sealed ping (21 + 16-byte tag): looks like disco from that member,   |          |                                 |
 * |               | fails authentication (paths/disco.ts has the real format).                     |          |                                 |
 * | `relay-hello` | b0, version 3, flags 0, random Ed25519 key (32), the current time in ms (8,    | 143      | anyone                          |
 * |               | BE), the target relay's name hash (16: its name is public), random challenge   |          |                                 |
 * |               | (20), random signature (64) (relay/protocol.ts): fresh, for the target's name, |          |                                 |
 * |               | fails the relay's challenge (one MAC), is answered by a challenge at a budget. |          |                                 |
 * | `relay-send`  | b4, destination WireGuard key (32), random payload (`size`, default 128),      | 33+size  | a member: the sender first says |
 * |               | sent from the socket that a real HELLO of a member identity registered.        |          | a valid hello with its identity |
 * | `garbage`     | ee (no protocol's first byte: not WireGuard 1–4, disco a0, relay b0–bf, STUN), | `size`,  | anyone: the baseline that costs |
 * |               | then random bytes.                                                             | def. 148 | a receiver nothing              |
 */
import { join } from 'node:path';
import { randomBytes, randomInt } from 'node:crypto';
import { decodeKey } from '../crypto/keys.js';
import { generatePrivateKey } from '../crypto/x25519.js';
import { Identity } from '../identity/identity.js';
import { FRAME_HELLO, HELLO_NAME_AT, HELLO_SIZE, KEY_SIZE, RELAY_VERSION, encodeSend } from '../relay/protocol.js';
import { relayNameHash } from '../relay/relay-name.js';
import { BUILTIN_RELAY_NAME } from '../registry/relay-list.js';
import { CookieGenerator } from '../wireguard/cookie.js';
import { Handshake, LocalIdentity, createInitiation } from '../wireguard/noise.js';
import { DISCO_MAGIC } from '../paths/disco.js';
import { REPO_ROOT } from './agentvpn.js';
import type { Lab } from './netns.js';
import { sleep } from './proc.js';
import { pingStats, type PingStats } from './ping-stats.js';

export const FLOOD_KINDS = ['handshake', 'disco', 'relay-hello', 'relay-send', 'garbage'] as const;
export type FloodKind = (typeof FLOOD_KINDS)[number];

export interface FloodSpec {
  kind: FloodKind;
  /** Where to send: "host:port" ("[v6]:port"). */
  target: string;
  /** Datagrams per second; 0 sends as fast as the socket takes them. */
  rate: number;
  durationMs: number;
  /**
   * base64 WireGuard public key. handshake: the target's (mac1 is keyed with it); disco: the
   * member to impersonate; relay-send: the destination (default: the sender's own key).
   */
  key?: string;
  /** relay-hello, relay-send: the target relay's name, which hellos are signed for (default: the registry's built-in relay's, what lab floods aim at). */
  relayName?: string;
  /** relay-send: the state directory holding the member's identity.key. */
  identityDir?: string;
  /** garbage: datagram size; relay-send: payload size after the 33-byte header. */
  size?: number;
  /** Distinct datagrams to cycle (default 256). */
  distinct?: number;
}

export interface FloodReport {
  kind: FloodKind;
  target: string;
  /** The rate asked for, null for "as fast as possible". */
  offeredPps: number | null;
  /** Datagrams the kernel accepted. */
  sent: number;
  seconds: number;
  achievedPps: number;
  distinct: number;
}

/** Enough distinct datagrams that a receiver cannot cache "seen that one" cheaply; few enough to build in ~0.1 s. */
export const DEFAULT_DISTINCT = 256;
/** A sealed disco ping: header (1 + 32 + 24) + type, counter and txid (1 + 8 + 12) + tag (16). */
const DISCO_PING_SIZE = 1 + 32 + 24 + 1 + 8 + 12 + 16;
/** Largest payload a flood datagram may carry (a full-size WireGuard packet over a 1500-byte link fits). */
const MAX_PAYLOAD = 1472;
/** First byte of garbage: no protocol on the agent's socket uses it. */
const GARBAGE_TYPE = 0xee;

export const FLOOD_CLI = join(REPO_ROOT, 'dist', 'lab', 'flood-cli.js');

function checkSize(size: number, min: number): number {
  if (!Number.isInteger(size) || size < min || size > MAX_PAYLOAD) throw new Error(`flood size must be an integer in ${min}..${MAX_PAYLOAD}`);
  return size;
}

function needKey(spec: FloodSpec): Uint8Array {
  if (!spec.key) throw new Error(`a ${spec.kind} flood needs --key (a base64 WireGuard public key)`);
  return decodeKey(spec.key, `${spec.kind} flood key`);
}

/** Valid initiations (mac1 correct for `responder`) from one throwaway static key, distinct ephemerals and indices. */
function handshakeDatagrams(responder: Uint8Array, n: number): Buffer[] {
  const local = new LocalIdentity(generatePrivateKey());
  const macs = new CookieGenerator(responder);
  const hs = new Handshake(local, responder);
  return Array.from({ length: n }, () => {
    const msg = createInitiation(local, hs, randomInt(2 ** 32));
    macs.addMacs(msg);
    return msg;
  });
}

function discoDatagrams(member: Uint8Array, n: number): Buffer[] {
  return Array.from({ length: n }, () => {
    const d = randomBytes(DISCO_PING_SIZE);
    d[0] = DISCO_MAGIC;
    d.set(member, 1);
    return d;
  });
}

function relayHelloDatagrams(n: number, now: number, relayName: Buffer): Buffer[] {
  return Array.from({ length: n }, () => {
    const f = randomBytes(HELLO_SIZE);
    f[0] = FRAME_HELLO;
    f[1] = RELAY_VERSION;
    f[2] = 0;
    f.writeBigUInt64BE(BigInt(now), 35);
    relayName.copy(f, HELLO_NAME_AT);
    return f;
  });
}

function relaySendDatagrams(dst: Uint8Array, size: number, n: number): Buffer[] {
  return Array.from({ length: n }, () => encodeSend(dst, randomBytes(size)));
}

function garbageDatagrams(size: number, n: number): Buffer[] {
  return Array.from({ length: n }, () => {
    const d = randomBytes(size);
    d[0] = GARBAGE_TYPE;
    return d;
  });
}

/** The datagrams a flood cycles through; `member` is the relay-send sender's identity. */
export function floodDatagrams(spec: FloodSpec, member?: Identity, now = Date.now()): Buffer[] {
  const n = spec.distinct ?? DEFAULT_DISTINCT;
  if (!Number.isInteger(n) || n < 1 || n > 65_536) throw new Error('distinct must be an integer in 1..65536');
  switch (spec.kind) {
    case 'handshake':
      return handshakeDatagrams(needKey(spec), n);
    case 'disco':
      return discoDatagrams(needKey(spec), n);
    case 'relay-hello':
      return relayHelloDatagrams(n, now, relayNameHash(spec.relayName ?? BUILTIN_RELAY_NAME));
    case 'relay-send': {
      if (!member) throw new Error('a relay-send flood needs the member identity (--identity-dir)');
      const dst = spec.key ? needKey(spec) : member.wgPublicKey;
      return relaySendDatagrams(dst.subarray(0, KEY_SIZE), checkSize(spec.size ?? 128, 1), n);
    }
    case 'garbage':
      return garbageDatagrams(checkSize(spec.size ?? 148, 1), n);
  }
}

/** The flood CLI's arguments for a spec. */
export function floodArgs(spec: FloodSpec): string[] {
  const args = ['--kind', spec.kind, '--target', spec.target, '--rate', String(spec.rate), '--duration-ms', String(spec.durationMs)];
  if (spec.key) args.push('--key', spec.key);
  if (spec.identityDir) args.push('--identity-dir', spec.identityDir);
  if (spec.relayName !== undefined) args.push('--relay-name', spec.relayName);
  if (spec.size !== undefined) args.push('--size', String(spec.size));
  if (spec.distinct !== undefined) args.push('--distinct', String(spec.distinct));
  return args;
}

/** Runs one flood from namespace `ns` (node dist/lab/flood-cli.js) and returns its report. */
export async function runFlood(lab: Lab, ns: string, spec: FloodSpec): Promise<FloodReport> {
  const r = await lab.exec(ns, [process.execPath, FLOOD_CLI, ...floodArgs(spec)], { timeoutMs: spec.durationMs + 30_000 });
  const last = r.stdout.trim().split('\n').pop() ?? '';
  try {
    if (r.code !== 0) throw new Error('non-zero exit');
    return JSON.parse(last) as FloodReport;
  } catch {
    throw new Error(`flood ${spec.kind} from ${ns} failed (code ${r.code}): ${(r.stderr.trim() || r.stdout.trim()).slice(-1000)}`);
  }
}

export interface PingUnderFlood {
  flood: FloodReport;
  ping: PingStats;
}

/** Time the flood runs before the pings start (node start-up and building the datagrams) and after they end. */
const FLOOD_LEAD_MS = 1_000;
const FLOOD_TAIL_MS = 500;

/**
 * Pings `dst` from `pingNs` (every `intervalSec`, `count` times) while `spec` floods from
 * `floodNs`; the flood starts first and outlasts the pings (spec.durationMs is set to fit).
 */
export async function pingUnderFlood(
  lab: Lab, floodNs: string, spec: Omit<FloodSpec, 'durationMs'>, pingNs: string, dst: string,
  opts: { count?: number; intervalSec?: number } = {},
): Promise<PingUnderFlood> {
  const count = opts.count ?? 300;
  const intervalSec = opts.intervalSec ?? 0.01;
  const durationMs = FLOOD_LEAD_MS + Math.ceil(count * intervalSec * 1000) + 1000 + FLOOD_TAIL_MS;
  const flood = runFlood(lab, floodNs, { ...spec, durationMs });
  flood.catch(() => {}); // awaited below; a failure must not be unhandled while the pings run
  await sleep(FLOOD_LEAD_MS);
  const ping = await pingStats(lab, pingNs, dst, { count, intervalSec, timeoutSec: 1 });
  return { flood: await flood, ping };
}
