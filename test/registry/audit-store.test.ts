// The SQLite store's side of agents' audit logs: one transaction per ship that re-checks the held
// size (two ships racing at one size: one wins, the other gets AUDIT_GAP and stores nothing), and
// entry, checkpoint and refusal rows that no UPDATE or DELETE can touch.
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { extendRange } from '../../src/audit/compact-range.js';
import { leafHash } from '../../src/audit/merkle.js';
import { SqliteStore } from '../../src/registry/sqlite-store.js';
import type { AuditAppend } from '../../src/registry/store.js';

const AGENT = 'av' + 'a'.repeat(52);

function ship(from: number, n: number, frontier: Buffer[]): AuditAppend {
  const entries = Array.from({ length: n }, (_, i) => ({ seq: from + i, line: `line ${from + i}`, leafHash: leafHash(Buffer.from(`line ${from + i}`)) }));
  return { agent: AGENT, from, entries, frontier: extendRange(frontier, from, entries.map((e) => e.leafHash)), cosigned: `note ${from + n}`, now: 1 };
}

describe('audit store', () => {
  let dir: string;
  let store: SqliteStore;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'agentvpn-audit-store-'));
    store = new SqliteStore(join(dir, 'registry.db'));
  });
  afterEach(async () => {
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('appends ships in order; a second ship at a size already taken gets AUDIT_GAP and stores nothing', async () => {
    expect(await store.auditHead(AGENT)).toEqual({ agent: AGENT, size: 0, frontier: [], cosigned: null });
    const first = ship(0, 3, []);
    expect(await store.appendAudit(first)).toEqual({ ok: true });
    const racing = ship(0, 5, []);
    expect(await store.appendAudit(racing)).toEqual({ ok: false, code: 'AUDIT_GAP', held: 3, cosigned: 'note 3' });
    const head = await store.auditHead(AGENT);
    expect(head.size).toBe(3);
    expect(await store.appendAudit(ship(3, 2, head.frontier))).toEqual({ ok: true });
    expect((await store.auditEntries(AGENT, 0, 100)).map((e) => e.line)).toEqual(['line 0', 'line 1', 'line 2', 'line 3', 'line 4']);
    expect((await store.auditCheckpoints(AGENT, 0, 10)).map((c) => c.size)).toEqual([3, 5]);
    expect((await store.auditHeads()).map((h) => [h.agent, h.size])).toEqual([[AGENT, 5]]);
  });

  it('refuses UPDATE and DELETE on entries, checkpoints and refusals', async () => {
    await store.appendAudit(ship(0, 2, []));
    await store.addAuditRefusal({ agent: AGENT, network: 'default', at: 1, code: 'AUDIT_INCONSISTENT', reason: 'fork', held: 2, size: 2, checkpoint: 'x' });
    const db = new Database(join(dir, 'registry.db'));
    try {
      for (const sql of ["UPDATE audit_entries SET line = 'edited'", 'DELETE FROM audit_entries', "UPDATE audit_checkpoints SET note = 'x'", 'DELETE FROM audit_checkpoints', 'DELETE FROM audit_refusals']) {
        expect(() => db.exec(sql), sql).toThrow(/append-only/);
      }
    } finally {
      db.close();
    }
    expect((await store.auditRefusals(0, 10)).map((r) => r.reason)).toEqual(['fork']);
  });
});
