import { describe, expect, it } from 'vitest';
import { ConsoleState } from '../../src/registry/console/state.js';
import { PathReports } from '../../src/registry/console/path-reports.js';
import { Fleet } from '../../src/registry/fleet-state.js';
import { NO_REGISTRY_LOG } from '../../src/registry/registry-log.js';
import { SignatureBudget } from '../../src/registry/signature-budget.js';
import type { AuditRefusal, RegistryStats, RegistryStore } from '../../src/registry/store.js';

/** The console's state: refusals read once each through a cursor, newest first and capped; tokens' state. */
describe('console state', () => {
  it('reads each audit refusal from the store once and shows the newest 100, of its network only', async () => {
    const refusals: AuditRefusal[] = [];
    let rowsRead = 0;
    const add = (n: number, network = 'default') => {
      for (let i = 0; i < n; i++) {
        refusals.push({ id: refusals.length + 1, agent: 'a', network, at: 0, code: 'AUDIT_INCONSISTENT', reason: `fork ${refusals.length + 1}`, held: 0, size: 0, checkpoint: null });
      }
    };
    const now = 1_000;
    const store = {
      tokens: async () => [
        { hash: 'ab'.repeat(32), network: 'default', createdAt: 0, expiresAt: null, usesLeft: null, tags: [] },
        { hash: 'cd'.repeat(32), network: 'default', createdAt: 0, expiresAt: 500, usesLeft: 3, tags: ['gpu'] },
        { hash: 'ef'.repeat(32), network: 'default', createdAt: 0, expiresAt: null, usesLeft: 0, tags: [] },
      ],
      blocked: async () => [],
      auditRefusals: async (after: number, limit: number) => {
        const rows = refusals.filter((r) => r.id > after).slice(0, limit);
        rowsRead += rows.length;
        return rows;
      },
    } as unknown as RegistryStore;
    const fleet = new Fleet();
    const ctx = { store, fleet, events: NO_REGISTRY_LOG, stats: () => ({}) as RegistryStats, signatures: new SignatureBudget(), defaultNetwork: 'default' };
    const state = new ConsoleState(ctx, new PathReports(ctx));
    add(3);
    add(1, 'other');
    let s = await state.build('default', now);
    expect((s.refusals as Array<{ id: number }>).map((r) => r.id)).toEqual([3, 2, 1]);
    add(1200);
    s = await state.build('default', now);
    s = await state.build('default', now);
    const ids = (s.refusals as Array<{ id: number }>).map((r) => r.id);
    console.log(`${refusals.length} refusals, 3 builds: ${rowsRead} rows read from the store, ${ids.length} shown`);
    expect(rowsRead).toBe(refusals.length);
    expect(ids.length).toBe(100);
    expect(ids[0]).toBe(1204);
    expect(s.audit).toBeNull(); // a registry without a log of its own
    expect((s.tokens as Array<{ id: string; usable: boolean }>).map((t) => [t.id, t.usable])).toEqual([['ab'.repeat(8), true], ['cd'.repeat(8), false], ['ef'.repeat(8), false]]);
  });
});
