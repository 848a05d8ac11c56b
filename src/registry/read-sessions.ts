import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import { EMPTY_WINDOW, isReplayed, takeTimestamp, type ReplayWindow } from './replay-window.js';

/**
 * Read sessions: a member proves itself once with an Ed25519-signed request (POST /v1/sessions)
 * and gets a random secret; its reads then carry an HMAC-SHA256 under that secret instead of a
 * signature. A signature check costs ~40 µs here (~90 µs before libsodium) and every signed read also wrote its timestamp
 * to the database; an HMAC costs ~2 µs and its timestamp goes to the session's window in memory.
 *
 * - The MAC covers a label, the method, the path with its query and the timestamp, like the
 *   signed form (protocol.ts requestMessage); each timestamp is taken once per session.
 * - A session is this instance's alone (memory): another instance, or this one after a restart,
 *   answers SESSION_UNKNOWN and the client opens a new one with a signed request.
 * - Sessions last SESSION_LIFETIME_MS; membership and the agent's current key are checked on
 *   every read, so removing or blocking a member, or its key rotation, ends its sessions at once.
 * - Bounded: a member holds at most SESSIONS_PER_AGENT (the oldest goes), and all of them at most
 *   MAX_SESSIONS (the soonest to expire goes); only members can open one.
 * - The secret travels in the answer: without TLS, whoever reads that answer can read as the
 *   member until the session ends (he could read the answers themselves as well).
 */

/** A session's life: long enough that a busy agent opens few, short enough that a leaked secret soon expires. */
export const SESSION_LIFETIME_MS = 10 * 60_000;
/** An agent's daemon, CLI and SDK may each hold one, against a few instances. */
export const SESSIONS_PER_AGENT = 4;
/** All sessions of this instance: ~200 bytes each, so at most ~20 MB. */
export const MAX_SESSIONS = 100_000;

const MAC_LABEL = 'agentvpn session v1';

interface Session {
  agent: string;
  network: string;
  /** The agent's key that signed the opening request: a session ends when the agent rotates away from it. */
  key: Buffer;
  secret: Buffer;
  expiresAt: number;
  window: ReplayWindow;
}

export type SessionCheck =
  | { ok: true; agent: string; key: Buffer }
  | { ok: false; code: 'SESSION_UNKNOWN' | 'UNAUTHORIZED' | 'REPLAYED'; message: string };

/** The MAC of a read: what client and registry both compute. */
export function sessionMac(secret: Buffer, method: string, pathWithQuery: string, timestamp: number): Buffer {
  return createHmac('sha256', secret).update(`${MAC_LABEL}\n${method} ${pathWithQuery}\n${timestamp}`).digest();
}

/** `Authorization: AgentVPN-Session <id> <timestamp> <mac>` for a read under a session (protocol.ts parses it). */
export function sessionAuthorization(session: { id: string; secret: Buffer }, method: string, pathWithQuery: string, timestamp: number): string {
  return `AgentVPN-Session ${session.id} ${timestamp} ${sessionMac(session.secret, method, pathWithQuery, timestamp).toString('base64url')}`;
}

export class ReadSessions {
  /** Insertion order is expiry order (every session lives as long), so the first is the soonest to expire. */
  private readonly byId = new Map<string, Session>();
  private readonly byAgent = new Map<string, string[]>();

  constructor(private readonly limits = { perAgent: SESSIONS_PER_AGENT, total: MAX_SESSIONS, lifetimeMs: SESSION_LIFETIME_MS }) {}

  get size(): number {
    return this.byId.size;
  }

  /** A new session for a member that just proved itself. */
  open(agent: string, network: string, key: Uint8Array, now: number): { id: string; secret: Buffer; expiresAt: number } {
    this.expire(now);
    const held = this.byAgent.get(agent) ?? [];
    while (held.length >= this.limits.perAgent) this.byId.delete(held.shift()!);
    while (this.byId.size >= this.limits.total) this.drop(this.byId.keys().next().value!);
    const id = randomBytes(16).toString('base64url');
    const session: Session = { agent, network, key: Buffer.from(key), secret: randomBytes(32), expiresAt: now + this.limits.lifetimeMs, window: EMPTY_WINDOW };
    this.byId.set(id, session);
    held.push(id);
    this.byAgent.set(agent, held);
    return { id, secret: session.secret, expiresAt: session.expiresAt };
  }

  /** Checks a read's MAC (before its timestamp is taken: a forged one costs no state). */
  check(id: string, network: string, method: string, pathWithQuery: string, timestamp: number, mac: Buffer, now: number): SessionCheck {
    const s = this.byId.get(id);
    if (!s || s.expiresAt <= now) {
      if (s) this.drop(id);
      return { ok: false, code: 'SESSION_UNKNOWN', message: 'the read session is unknown to this registry instance or has expired: open a new one' };
    }
    const expected = sessionMac(s.secret, method, pathWithQuery, timestamp);
    if (s.network !== network || mac.length !== expected.length || !timingSafeEqual(mac, expected)) {
      return { ok: false, code: 'UNAUTHORIZED', message: 'the read session MAC does not verify' };
    }
    if (isReplayed(s.window, timestamp)) return { ok: false, code: 'REPLAYED', message: `session request timestamp ${timestamp} was already used (a replayed request?)` };
    s.window = takeTimestamp(s.window, timestamp, now);
    return { ok: true, agent: s.agent, key: s.key };
  }

  private expire(now: number): void {
    for (const [id, s] of this.byId) {
      if (s.expiresAt > now) break;
      this.drop(id);
    }
  }

  private drop(id: string): void {
    const s = this.byId.get(id);
    if (!s) return;
    this.byId.delete(id);
    const held = this.byAgent.get(s.agent)!;
    held.splice(held.indexOf(id), 1);
    if (held.length === 0) this.byAgent.delete(s.agent);
  }
}
