import { describe, it, expect } from 'vitest';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Identity } from '../../src/identity/identity.js';
import { TrustGate } from '../../src/trust/gate.js';
import { TrustStore } from '../../src/trust/store.js';
import type { TrustView } from '../../src/trust/decide.js';

function view(identity: Identity, name: string, ipv4: string): TrustView {
  return { record: { id: identity.id, name, ipv4, ...(identity.seq > 0 ? { key: Buffer.from(identity.publicKey).toString('base64') } : {}) }, chain: [...identity.chain] };
}

describe('trust gate', () => {
  it('logs each alert once however often the record comes, keeps it for status until resolved', () => {
    const lines: string[] = [];
    const log = { warn: (_: object, m: string) => lines.push(`warn ${m}`), info: (_: object, m: string) => lines.push(`info ${m}`) };
    const gate = new TrustGate(TrustStore.open(mkdtempSync(join(tmpdir(), 'avgate-')), 'lab'), 'tofu', log);
    const beta = Identity.generate();
    const impostor = Identity.generate();
    expect(gate.admit(view(beta, 'beta', '100.64.0.2'))).toBe(true);
    for (let i = 0; i < 100; i++) expect(gate.admit(view(impostor, 'beta', '100.64.0.9'))).toBe(false);
    const warnings = lines.filter((l) => l.startsWith('warn'));
    console.log(`log lines for 100 copies of a refused record: ${warnings.length}`);
    expect(warnings).toHaveLength(1);
    expect(gate.alertLines()).toEqual([expect.stringMatching(/beta .*now shows another agent/)]);
    expect(gate.list()).toMatchObject({ mode: 'tofu', entries: [{ name: 'beta', state: 'changed' }] });
    expect(gate.accept('beta').entry).toMatchObject({ id: impostor.id, state: 'pinned' });
    expect(gate.alertLines()).toEqual([]);
    expect(gate.admit(view(impostor, 'beta', '100.64.0.9'))).toBe(true);
    // A rotation is an info line, no alert.
    expect(gate.admit(view(impostor.rotate(), 'beta', '100.64.0.9'))).toBe(true);
    expect(lines.at(-1)).toMatch(/^info agent beta rotated its key to seq 1/);
    expect(gate.alertLines()).toEqual([]);
    gate.store.flush();
  });
});
