import { describe, it, expect } from 'vitest';
import fc from 'fast-check';
import { existsSync, mkdtempSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { agentIdOf } from '../../src/identity/agent-id.js';
import { AgentVpnError } from '../../src/errors.js';
import { Identity } from '../../src/identity/identity.js';
import { decide } from '../../src/trust/decide.js';
import { LAST_SEEN_WRITE_MS, WRITE_DELAY_MS, TrustStore, TRUST_STATES, fingerprint, parseTrustFile, type TrustEntry } from '../../src/trust/store.js';

const b64 = (b: Uint8Array): string => Buffer.from(b).toString('base64');
const dirOf = (): string => mkdtempSync(join(tmpdir(), 'avtrust-'));

function entry(n: number, over: Partial<TrustEntry> = {}): TrustEntry {
  const key = new Uint8Array(32).fill(n);
  return { id: agentIdOf(key), name: `agent-${n}`, ipv4: `100.64.0.${n}`, key: b64(key), keySeq: 0, state: 'pinned', firstSeen: 1, lastSeen: 2, ...over };
}

function openError(dir: string): AgentVpnError {
  try {
    TrustStore.open(dir, 'lab');
  } catch (e) {
    return e as AgentVpnError;
  }
  throw new Error('opened');
}

describe('trust store file', () => {
  it('is written atomically with mode 0600 and read back the same', () => {
    const dir = dirOf();
    const s = TrustStore.open(dir, 'lab');
    s.apply({ put: [entry(1), entry(2, { state: 'approved' })], remove: [] });
    s.flush();
    const file = join(dir, 'trust-lab.json');
    expect(statSync(file).mode & 0o777).toBe(0o600);
    expect(TrustStore.open(dir, 'lab').all()).toEqual(s.all());
    expect(TrustStore.open(dir, 'other').size).toBe(0);
    expect(s.list()[0].fingerprint).toBe(fingerprint(entry(1).key));
    expect(fingerprint(entry(1).key)).toMatch(/^SHA256:[A-Za-z0-9+/]{43}$/);
  });

  it('a corrupt file is a clear error with a hint, and is never reset', () => {
    const dir = dirOf();
    const file = join(dir, 'trust-lab.json');
    const good = JSON.stringify({ v: 1, network: 'lab', entries: [entry(1)] });
    for (const bad of [
      '{"v":1,', '[]', JSON.stringify({ v: 2, network: 'lab', entries: [] }), JSON.stringify({ v: 1, network: 'prod', entries: [] }),
      JSON.stringify({ v: 1, network: 'lab', entries: [entry(1), entry(1)] }),
      JSON.stringify({ v: 1, network: 'lab', entries: [entry(1), entry(2, { name: 'agent-1' })] }),
      JSON.stringify({ v: 1, network: 'lab', entries: [{ ...entry(1), state: 'trusted' }] }),
      JSON.stringify({ v: 1, network: 'lab', entries: [{ ...entry(1), keySeq: 1 }] }),
      JSON.stringify({ v: 1, network: 'lab', entries: [{ ...entry(1), extra: true }] }),
      JSON.stringify({ v: 1, network: 'lab', entries: [{ ...entry(1), name: null }] }),
    ]) {
      writeFileSync(file, bad);
      const e = openError(dir);
      expect(e.code).toBe('TRUST_STORE_CORRUPT');
      expect(e.message).toContain(file);
      expect(e.hint).toMatch(/restore it from a backup; moving it away forgets every pinned key/);
      expect(readFileSync(file, 'utf8')).toBe(bad);
    }
    writeFileSync(file, good);
    expect(TrustStore.open(dir, 'lab').size).toBe(1);
  });

  it('lastSeen alone is not written more than once an hour; other changes are written within WRITE_DELAY_MS', async () => {
    const dir = dirOf();
    const file = join(dir, 'trust-lab.json');
    const s = TrustStore.open(dir, 'lab');
    const t0 = Date.now();
    s.apply({ put: [entry(1)], remove: [] }, t0);
    expect(existsSync(file)).toBe(false);
    await new Promise((r) => setTimeout(r, WRITE_DELAY_MS + 200));
    const written = readFileSync(file, 'utf8');
    expect(s.writes).toBe(1);
    for (let i = 1; i <= 1000; i++) s.apply({ put: [entry(1, { lastSeen: t0 + i })], remove: [] }, t0 + i);
    s.flush();
    expect(readFileSync(file, 'utf8')).toBe(written);
    const hour = t0 + LAST_SEEN_WRITE_MS + 5000; // the delayed write happened ~1.2 s after t0
    s.apply({ put: [entry(1, { lastSeen: hour })], remove: [] }, hour);
    s.flush();
    expect(readFileSync(file, 'utf8')).not.toBe(written);
    const hourly = readFileSync(file, 'utf8');
    s.apply({ put: [entry(1, { lastSeen: hour + 1, state: 'blocked' })], remove: [] }, hour + 1);
    s.flush();
    expect(readFileSync(file, 'utf8')).not.toBe(hourly);
    // Operator actions are on disk when they return.
    s.forget('agent-1');
    expect(TrustStore.open(dir, 'lab').size).toBe(0);
  });

  it('a burst of new agents costs one write of the file, not one each', () => {
    // Before writes were delayed, each first pin rewrote the whole file: 1000 pins = 1000 writes (~350 MB at 1000 entries).
    const dir = dirOf();
    const s = TrustStore.open(dir, 'lab');
    const agents = Array.from({ length: 1000 }, (_, i) => Identity.generate());
    for (const [i, a] of agents.entries()) {
      const d = decide(s, 'tofu', { record: { id: a.id, name: `a${i}`, ipv4: `100.64.${i >> 8}.${i & 255}` }, chain: [...a.chain] });
      s.apply(d.update);
    }
    s.flush();
    console.log(`file writes for 1000 new agents: ${s.writes}`);
    expect(s.writes).toBe(1);
    expect(TrustStore.open(dir, 'lab').size).toBe(1000);
  });
});

describe('parseTrustFile (properties)', () => {
  const entryArb = fc.record({
    n: fc.integer({ min: 1, max: 250 }),
    state: fc.constantFrom(...TRUST_STATES),
    firstSeen: fc.nat(),
    lastSeen: fc.nat(),
    offered: fc.option(fc.integer({ min: 1, max: 250 }), { nil: undefined }),
  }).map(({ n, state, firstSeen, lastSeen, offered }): TrustEntry => {
    const o = offered === undefined ? undefined : entry(offered);
    return { ...entry(n), state, firstSeen, lastSeen, ...(o ? { offered: { id: o.id, name: o.name!, ipv4: o.ipv4!, key: o.key, keySeq: 0, at: lastSeen } } : {}) };
  });

  it('reads back every store it could have written', () => {
    fc.assert(fc.property(fc.uniqueArray(entryArb, { selector: (e) => e.id, maxLength: 20 }), (entries) => {
      const text = JSON.stringify({ v: 1, network: 'lab', entries });
      expect(parseTrustFile(text, 'lab')).toEqual(entries);
    }), { numRuns: 300 });
  });

  it('never throws: arbitrary JSON, arbitrary text, and valid files with one field replaced give entries or a reason', () => {
    fc.assert(fc.property(fc.jsonValue(), (v) => {
      const r = parseTrustFile(JSON.stringify(v), 'lab');
      return typeof r === 'string' || Array.isArray(r);
    }), { numRuns: 1000 });
    fc.assert(fc.property(fc.string(), (t) => {
      const r = parseTrustFile(t, 'lab');
      return typeof r === 'string' || Array.isArray(r);
    }), { numRuns: 500 });
    const fields = Object.keys(entry(1)) as (keyof TrustEntry)[];
    fc.assert(fc.property(fc.constantFrom(...fields, 'offered' as const), fc.jsonValue(), (field, value) => {
      const mutated = { ...entry(1), [field]: value };
      const r = parseTrustFile(JSON.stringify({ v: 1, network: 'lab', entries: [mutated] }), 'lab');
      // Either refused, or accepted as exactly what was written (nothing is dropped or coerced).
      return typeof r === 'string' || JSON.stringify(r[0]) === JSON.stringify(JSON.parse(JSON.stringify(mutated)));
    }), { numRuns: 2000 });
  });
});
