import { createHash, randomBytes } from 'node:crypto';
import type { IncomingMessage } from 'node:http';

/**
 * Console sessions: after a login with an admin token, the browser holds a random session ID in
 * an HttpOnly, SameSite=Strict cookie scoped to /console; the registry keeps only its SHA-256 in
 * memory (a restart logs everyone out), so neither the token nor a usable session is ever
 * written anywhere. Sessions end at a fixed lifetime, on logout, or when more than MAX_SESSIONS
 * exist (the oldest goes): only admin-token holders can create them, so the cap is against
 * mistakes (a script logging in in a loop), not strangers.
 */

export const SESSION_COOKIE = 'avconsole';
/** A working day; then the operator logs in again. */
export const SESSION_LIFETIME_MS = 12 * 3600_000;
/** A few operators with a few browsers each. */
const MAX_SESSIONS = 64;
/** 32 random bytes in base64url: what a cookie value must look like before it is hashed. */
const SESSION_ID = /^[A-Za-z0-9_-]{43}$/;

export interface Session {
  /** 16 hex of the ID's hash: names the session's event streams (never the ID itself). */
  key: string;
  expiresAt: number;
}

const hashOf = (id: string) => createHash('sha256').update(`agentvpn console session ${id}`).digest('hex');

export class ConsoleSessions {
  /** By hash of the session ID; a Map keeps insertion order, so the first is the oldest. */
  private readonly sessions = new Map<string, Session>();

  /** A new session: the ID goes into the cookie, only its hash stays here. */
  create(now: number): { id: string; session: Session } {
    const id = randomBytes(32).toString('base64url');
    const hash = hashOf(id);
    const session = { key: hash.slice(0, 16), expiresAt: now + SESSION_LIFETIME_MS };
    this.sessions.set(hash, session);
    for (const old of this.sessions.keys()) {
      if (this.sessions.size <= MAX_SESSIONS) break;
      this.sessions.delete(old);
    }
    return { id, session };
  }

  /** The request's live session, or null (no cookie, a malformed or unknown one, expired). */
  of(req: IncomingMessage, now: number): Session | null {
    const id = cookieValue(req.headers.cookie, SESSION_COOKIE);
    if (id === null || !SESSION_ID.test(id)) return null;
    const hash = hashOf(id);
    const s = this.sessions.get(hash);
    if (!s) return null;
    if (s.expiresAt <= now) {
      this.sessions.delete(hash);
      return null;
    }
    return s;
  }

  /** Ends the request's session; returns it (to close its streams), or null. */
  end(req: IncomingMessage, now: number): Session | null {
    const s = this.of(req, now);
    if (s) for (const [hash, v] of this.sessions) if (v === s) this.sessions.delete(hash);
    return s;
  }

  get size(): number {
    return this.sessions.size;
  }
}

/** One cookie's value from a Cookie header (at most 4 KiB of it is looked at). */
export function cookieValue(header: string | undefined, name: string): string | null {
  if (!header) return null;
  for (const part of header.slice(0, 4096).split(';')) {
    const eq = part.indexOf('=');
    if (eq > 0 && part.slice(0, eq).trim() === name) return part.slice(eq + 1).trim();
  }
  return null;
}

/** The Set-Cookie header of a session (`maxAgeS` 0 clears it); Secure when the registry speaks TLS. */
export function sessionCookie(id: string, maxAgeS: number, secure: boolean): string {
  return `${SESSION_COOKIE}=${id}; Path=/console; HttpOnly; SameSite=Strict; Max-Age=${maxAgeS}${secure ? '; Secure' : ''}`;
}
