import type { IncomingMessage } from 'node:http';
import { describe, expect, it } from 'vitest';
import { ConsoleSessions, SESSION_LIFETIME_MS, cookieValue, sessionCookie } from '../../src/registry/console/sessions.js';

/** Console sessions: random IDs kept hashed, a fixed lifetime, a cap that drops the oldest, strict cookies. */
const withCookie = (cookie?: string) => ({ headers: cookie === undefined ? {} : { cookie } }) as unknown as IncomingMessage;

describe('console sessions', () => {
  it('finds a session by its cookie only until it expires or ends', () => {
    const sessions = new ConsoleSessions();
    const now = 1_000_000;
    const { id, session } = sessions.create(now);
    expect(id).toMatch(/^[A-Za-z0-9_-]{43}$/);
    expect(session.key).not.toContain(id.slice(0, 8));
    expect(sessions.of(withCookie(`a=b; avconsole=${id}; c=d`), now)).toBe(session);
    expect(sessions.of(withCookie(`avconsole=${id}x`), now)).toBeNull();
    expect(sessions.of(withCookie(), now)).toBeNull();
    expect(sessions.of(withCookie(`avconsole=${id}`), now + SESSION_LIFETIME_MS)).toBeNull();
    const other = sessions.create(now);
    expect(sessions.end(withCookie(`avconsole=${other.id}`), now)).toBe(other.session);
    expect(sessions.of(withCookie(`avconsole=${other.id}`), now)).toBeNull();
  });

  it('keeps at most 64 sessions: past that the oldest goes', () => {
    const sessions = new ConsoleSessions();
    const ids = Array.from({ length: 70 }, () => sessions.create(0).id);
    const alive = ids.filter((id) => sessions.of(withCookie(`avconsole=${id}`), 1) !== null).length;
    console.log(`70 logins: ${sessions.size} sessions kept, ${alive} cookies still valid`);
    expect(sessions.size).toBe(64);
    expect(sessions.of(withCookie(`avconsole=${ids[0]}`), 1)).toBeNull();
    expect(sessions.of(withCookie(`avconsole=${ids[69]}`), 1)).not.toBeNull();
  });

  it('cookies are HttpOnly, SameSite=Strict, scoped to /console, Secure over TLS', () => {
    expect(sessionCookie('abc', 60, true)).toBe('avconsole=abc; Path=/console; HttpOnly; SameSite=Strict; Max-Age=60; Secure');
    expect(sessionCookie('', 0, false)).toBe('avconsole=; Path=/console; HttpOnly; SameSite=Strict; Max-Age=0');
    expect(cookieValue('x=1;avconsole = v ; y=2', 'avconsole')).toBe('v');
    expect(cookieValue('x'.repeat(5000) + ';avconsole=v', 'avconsole')).toBeNull(); // only the first 4 KiB are read
  });
});
