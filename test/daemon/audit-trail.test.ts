import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { agentVerifyOptions } from '../../src/audit/agent-dir.js';
import { verifyLogDir } from '../../src/audit/verify.js';
import { AuditTrail } from '../../src/daemon/audit-trail.js';
import { Identity } from '../../src/identity/identity.js';

const silent = pino({ level: 'silent' });
const dirs: string[] = [];
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

async function openTrail() {
  const state = mkdtempSync(join(tmpdir(), 'avtrail-'));
  dirs.push(state);
  const identity = Identity.loadOrCreate(state);
  return { state, identity, trail: await AuditTrail.open(state, identity, silent) };
}

const entries = (trail: AuditTrail) => trail.log.read(0).map((l) => JSON.parse(l.toString()) as { type: string; subject: string; details: Record<string, unknown> });

describe('the agent audit trail', () => {
  it('a path made to flap writes a burst, then is held back and counted in the next entry', async () => {
    const { trail } = await openTrail();
    for (let i = 0; i < 50; i++) trail.record('path.changed', 'avpeer', { kind: i % 2 ? 'direct' : 'relay', endpoint: '192.0.2.1:1' });
    trail.record('path.changed', 'avother', { kind: 'direct', endpoint: '192.0.2.2:1' });
    trail.record('peer.added', 'avpeer', {}); // not a noisy type: never held back
    await trail.log.flushed();
    const written = entries(trail);
    const flaps = written.filter((e) => e.type === 'path.changed' && e.subject === 'avpeer');
    console.log(`50 path changes of one peer wrote ${flaps.length} entries`);
    expect(flaps.length).toBe(10);
    expect(written.filter((e) => e.subject === 'avother')).toHaveLength(1);
    expect(written.some((e) => e.type === 'peer.added')).toBe(true);
    // In the next window, the first change carries the count of the 40 held back.
    vi.useFakeTimers({ toFake: ['Date'] });
    try {
      vi.setSystemTime(Date.now() + 301_000);
      trail.record('path.changed', 'avpeer', { kind: 'direct', endpoint: '192.0.2.1:1' });
    } finally {
      vi.useRealTimers();
    }
    await trail.log.flushed();
    const next = entries(trail).filter((e) => e.type === 'path.changed' && e.subject === 'avpeer');
    expect(next).toHaveLength(11);
    expect(next[10]!.details.suppressed).toBe(40);
    await trail.close();
  });

  it('policy denies become one entry per peer per call, with the packets since the last one', async () => {
    const { trail } = await openTrail();
    trail.recordDenies([{ id: 'ava', name: 'a', denies: { noGrant: 5 } }, { id: 'avb', name: 'b', denies: null }]);
    trail.recordDenies([{ id: 'ava', name: 'a', denies: { noGrant: 5 } }]); // nothing new
    trail.recordDenies([{ id: 'ava', name: 'a', denies: { noGrant: 9, fragment: 1 } }]);
    await trail.log.flushed();
    const denies = entries(trail).filter((e) => e.type === 'policy.denied');
    expect(denies.map((e) => e.details.packets)).toEqual([5, 5]);
    expect(denies[1]!.details.total).toBe(10);
    await trail.close();
  });

  it('after a key rotation checkpoints are signed by the new key, chain.json proves it, and the directory verifies alone', async () => {
    const { state, identity, trail } = await openTrail();
    await trail.append('test.before', '', {});
    await trail.log.checkpoint();
    const next = identity.rotate();
    trail.setIdentity(next);
    await trail.append('test.after', '', {});
    await trail.close();
    const chain = JSON.parse(readFileSync(join(state, 'audit', 'chain.json'), 'utf8')) as { chain: unknown[] };
    expect(chain.chain).toHaveLength(2);
    const report = await verifyLogDir(join(state, 'audit'), agentVerifyOptions(join(state, 'audit')));
    expect(report.problems).toEqual([]);
    expect(report.checkpoints).toBe(2);
    // With only the first key, the second checkpoint (signed by the rotated key) is refused.
    const firstKeyOnly = { ...agentVerifyOptions(join(state, 'audit')), keys: [identity.publicKey] };
    expect((await verifyLogDir(join(state, 'audit'), firstKeyOnly)).problems[0]?.kind).toBe('checkpoint');
  });

  it('a second daemon on the same state directory is refused with a hint', async () => {
    const { state, identity, trail } = await openTrail();
    // A lock held by another live process (our parent stands in for it).
    await trail.close();
    const { writeFileSync } = await import('node:fs');
    writeFileSync(join(state, 'audit', 'lock'), `${process.ppid}\n`);
    await expect(AuditTrail.open(state, identity, silent)).rejects.toMatchObject({ code: 'AUDIT_LOCKED' });
    writeFileSync(join(state, 'audit', 'lock'), '999999999\n'); // a dead writer's lock is taken over
    const again = await AuditTrail.open(state, identity, silent);
    await again.close();
  });
});
