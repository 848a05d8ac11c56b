import { hash } from '../crypto/blake2s.js';
import { randomFill, xopen, xseal } from '../crypto/aead.js';
import { dh } from '../crypto/x25519.js';
import { ENDPOINT_SIZE } from '../net/endpoint.js';

/**
 * Disco: the path-discovery messages agents exchange beside WireGuard on the same UDP socket
 * (DESIGN principle 2). Each is sealed between the two agents' static keys, so neither a relay
 * nor anyone on the path can read or forge one:
 *
 *   0xa0 | sender WireGuard public key (32) | nonce (24) | XChaCha20-Poly1305(payload)
 *
 * The first byte is never a WireGuard type (1..4), a STUN message (top bits 00) or a relay
 * frame (0xb0..0xbf). Payload: type (1) | counter (8, big-endian) then
 *   ping:          txid (12)
 *   pong:          txid (12) | the ping's source as we saw it (20-byte endpoint)
 *   call-me-maybe: the sender's candidate endpoints (n x 20)
 *   birthday:      role (1: 0 = request, 1 = answer) | the sender's public endpoint as STUN saw it (20).
 *                  The request, from a symmetric NAT: "I will probe you from many ports; probe random
 *                  ports of this address"; the answer, from an endpoint-independent NAT: "agreed, I
 *                  am probing; probe this endpoint" (birthday.ts)
 *
 * The counter makes every message usable once: the receiver keeps a replay window per peer, so a
 * captured ping replayed a thousand times earns no pong. It is the sender's clock in 1/16 ms,
 * bumped to stay strictly increasing, so it also grows across the sender's restarts and tells the
 * receiver how old a message is (messages further than MAX_DISCO_SKEW_MS from its clock are refused).
 */
export const DISCO_MAGIC = 0xa0;
const HEADER = 1 + 32 + 24;
const COUNTER = 8;
const COUNTS_PER_MS = 16;
/** A message's counter may be this far from our clock (relay hellos and registry requests allow the same). */
export const MAX_DISCO_SKEW_MS = 5 * 60_000;
const TAG = 16;
const LABEL = new TextEncoder().encode('agentvpn disco v1');
export const MAX_CANDIDATES = 16;

export type DiscoMessage =
  | { type: 'ping'; txid: Buffer }
  | { type: 'pong'; txid: Buffer; observed: Buffer }
  | { type: 'call-me-maybe'; candidates: Buffer[] }
  | { type: 'birthday'; answer: boolean; publicEndpoint: Buffer };

const TYPE_CODES = { ping: 1, pong: 2, 'call-me-maybe': 3, birthday: 4 } as const;

export function isDisco(buf: Uint8Array, off: number, len: number): boolean {
  return len >= HEADER + TAG + 1 + COUNTER && buf[off] === DISCO_MAGIC;
}

let lastCounter = 0;

/** The next counter of this process: its clock in 1/16 ms, strictly increasing. */
function nextCounter(): number {
  lastCounter = Math.max(lastCounter + 1, Date.now() * COUNTS_PER_MS);
  return lastCounter;
}

/** Whether a counter was stamped within MAX_DISCO_SKEW_MS of `now`. */
export function isFreshCounter(counter: number, now = Date.now()): boolean {
  return Math.abs(counter / COUNTS_PER_MS - now) <= MAX_DISCO_SKEW_MS;
}

function encodeBody(m: DiscoMessage): Buffer[] {
  switch (m.type) {
    case 'ping':
      return [m.txid];
    case 'pong':
      return [m.txid, m.observed.subarray(0, ENDPOINT_SIZE)];
    case 'call-me-maybe':
      return m.candidates.slice(0, MAX_CANDIDATES).map((c) => c.subarray(0, ENDPOINT_SIZE));
    case 'birthday':
      return [Buffer.of(m.answer ? 1 : 0), m.publicEndpoint.subarray(0, ENDPOINT_SIZE)];
  }
}

function encodePayload(m: DiscoMessage, counter: number): Buffer {
  const head = Buffer.alloc(1 + COUNTER);
  head[0] = TYPE_CODES[m.type];
  head.writeBigUInt64BE(BigInt(counter), 1);
  return Buffer.concat([head, ...encodeBody(m)]);
}

function decodePayload(p: Buffer): DiscoMessage | null {
  const body = p.subarray(1 + COUNTER);
  if (p[0] === TYPE_CODES.ping && body.length === 12) return { type: 'ping', txid: Buffer.from(body) };
  if (p[0] === TYPE_CODES.pong && body.length === 12 + ENDPOINT_SIZE) {
    return { type: 'pong', txid: Buffer.from(body.subarray(0, 12)), observed: Buffer.from(body.subarray(12)) };
  }
  if (p[0] === TYPE_CODES['call-me-maybe'] && body.length % ENDPOINT_SIZE === 0 && body.length / ENDPOINT_SIZE <= MAX_CANDIDATES) {
    const candidates: Buffer[] = [];
    for (let i = 0; i < body.length; i += ENDPOINT_SIZE) candidates.push(Buffer.from(body.subarray(i, i + ENDPOINT_SIZE)));
    return { type: 'call-me-maybe', candidates };
  }
  if (p[0] === TYPE_CODES.birthday && body.length === 1 + ENDPOINT_SIZE && body[0] <= 1) {
    return { type: 'birthday', answer: body[0] === 1, publicEndpoint: Buffer.from(body.subarray(1)) };
  }
  return null;
}

/** Seals and opens disco messages for one local WireGuard key; pairwise keys are cached. */
export class DiscoCodec {
  private readonly keys = new Map<string, Uint8Array>();

  constructor(private readonly privateKey: Uint8Array, private readonly publicKey: Uint8Array) {}

  private keyFor(peer: Uint8Array): Uint8Array | null {
    const id = Buffer.from(peer).toString('latin1');
    let key = this.keys.get(id);
    if (!key) {
      try {
        key = hash(LABEL, dh(this.privateKey, peer));
      } catch {
        return null; // low-order point: not a real peer key
      }
      this.keys.set(id, key);
    }
    return key;
  }

  /** `counter` is for tests that need an old or replayed stamp; messages take the process's next one. */
  seal(to: Uint8Array, m: DiscoMessage, counter = nextCounter()): Buffer | null {
    const key = this.keyFor(to);
    if (!key) return null;
    const payload = encodePayload(m, counter);
    const out = Buffer.alloc(HEADER + payload.length + TAG);
    out[0] = DISCO_MAGIC;
    out.set(this.publicKey, 1);
    const nonce = out.subarray(33, HEADER);
    randomFill(nonce);
    xseal(out.subarray(HEADER), payload, out.subarray(0, 33), nonce, key);
    return out;
  }

  /**
   * The sender's key, message and counter, or null when it does not authenticate. The caller
   * checks the counter against the sender's replay window.
   */
  open(buf: Uint8Array, off: number, len: number): { from: Buffer; message: DiscoMessage; counter: number } | null {
    if (!isDisco(buf, off, len)) return null;
    const from = Buffer.from(buf.subarray(off + 1, off + 33));
    const key = this.keyFor(from);
    if (!key) return null;
    const payload = Buffer.alloc(len - HEADER - TAG);
    if (!xopen(payload, buf.subarray(off + HEADER, off + len), buf.subarray(off, off + 33), buf.subarray(off + 33, off + HEADER), key)) return null;
    const message = decodePayload(payload);
    return message ? { from, message, counter: Number(payload.readBigUInt64BE(1)) } : null;
  }

  forget(peer: Uint8Array): void {
    this.keys.delete(Buffer.from(peer).toString('latin1'));
  }
}

export function newTxid(): Buffer {
  const t = Buffer.alloc(12);
  randomFill(t);
  return t;
}
