// A registry database written by the previous version (schema 2) opens in this one: its members and
// tokens keep working, with no tags, and the tables of versions 3 and 4 are added.
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { Identity } from '../../src/identity/identity.js';
import { parsePrefix } from '../../src/ip/prefix.js';
import { hashToken } from '../../src/registry/protocol.js';
import { SqliteStore } from '../../src/registry/sqlite-store.js';

/** The tables of schema version 2 that version 3 changes (the others are created as they were). */
const SCHEMA_V2 = `
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE tokens (hash TEXT PRIMARY KEY, network TEXT NOT NULL, created_at INTEGER NOT NULL, expires_at INTEGER, uses_left INTEGER);
CREATE TABLE members (id TEXT NOT NULL, network TEXT NOT NULL, name TEXT NOT NULL, ipv4 TEXT NOT NULL, joined_at INTEGER NOT NULL,
  PRIMARY KEY (network, id), UNIQUE (network, name), UNIQUE (network, ipv4));
INSERT INTO meta (key, value) VALUES ('schema_version', '2');
`;

describe('registry database migration', () => {
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'agentvpn-migrate-'));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('opens a version-2 database: members get no tags, old tokens still admit, and it is marked version 4', async () => {
    const path = join(dir, 'registry.db');
    const old = new Database(path);
    old.exec(SCHEMA_V2);
    const member = Identity.generate();
    old.prepare('INSERT INTO members VALUES (?, ?, ?, ?, ?)').run(member.id, 'default', 'alpha', '100.64.0.99', 1);
    old.prepare('INSERT INTO tokens VALUES (?, ?, ?, NULL, NULL)').run(hashToken('avt_old'), 'default', 1);
    old.close();

    const store = new SqliteStore(path);
    try {
      expect(await store.members()).toEqual([{ id: member.id, network: 'default', name: 'alpha', ipv4: '100.64.0.99', joinedAt: 1, tags: [] }]);
      const newcomer = Identity.generate();
      const r = await store.admit({ network: 'default', id: newcomer.id, name: 'beta', tokenHash: hashToken('avt_old'), timestamp: Date.now(), pool: parsePrefix('100.64.0.0/10')!, now: Date.now() });
      expect(r).toMatchObject({ ok: true, member: { name: 'beta', tags: [] } });
      expect(await store.lastActionSeq()).toBe(0);
      expect(await store.blocked()).toEqual([]);
    } finally {
      await store.close();
    }
    const check = new Database(path, { readonly: true });
    expect(check.prepare("SELECT value FROM meta WHERE key = 'schema_version'").get()).toEqual({ value: '4' });
    check.close();
    // Opening it again changes nothing (the columns are not added twice).
    await new SqliteStore(path).close();
  });
});
