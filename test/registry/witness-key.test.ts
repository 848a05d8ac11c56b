// The registry's witness key: created once beside the database (mode 0600), the same key on every
// later start, never replaced by a second registry starting at the same moment, and a damaged file
// refused rather than silently replaced (agents pinned the old key).
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startRegistry } from '../../src/registry/server.js';
import { loadWitnessKey, readWitnessPublic, witnessKeyFileOf } from '../../src/registry/witness-key.js';
import { errorCodeOf } from '../fixtures/error-code.js';

describe('witness key', () => {
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'agentvpn-witness-'));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('is created beside the database with mode 0600 on first start and is the same key after a restart', async () => {
    const db = join(dir, 'registry.db');
    const first = await startRegistry({ db });
    await first.stop();
    const file = witnessKeyFileOf(db);
    expect(statSync(file).mode & 0o777).toBe(0o600);
    const second = await startRegistry({ db });
    await second.stop();
    expect(second.witness).toEqual(first.witness);
    expect(first.witness.name).toMatch(/^agentvpn\.witness\/registry\/[0-9a-f]{8}$/);
    expect(readWitnessPublic(file).publicKey.toString('base64')).toBe(first.witness.publicKey);
  });

  it('--witness-key names the file and --witness-host the name; a second loader never replaces the key', () => {
    const file = join(dir, 'keys', 'witness.json');
    const a = loadWitnessKey(file, 'reg.example');
    const b = loadWitnessKey(file, 'reg.example');
    expect(a.created).toBe(true);
    expect(b.created).toBe(false);
    expect(b.publicKey.equals(a.publicKey)).toBe(true);
    expect(a.name).toMatch(/^agentvpn\.witness\/reg\.example\/[0-9a-f]{8}$/);
    expect(a.registryLogName).toBe(a.name.replace('agentvpn.witness/', 'agentvpn.registry/'));
    expect(errorCodeOf(() => loadWitnessKey(file, 'Bad Host'))).toBe('BAD_WITNESS_HOST');
  });

  it('a damaged key file is refused, not replaced', () => {
    const file = join(dir, 'witness');
    writeFileSync(file, '{"v":1,"seed":"short"}');
    expect(errorCodeOf(() => loadWitnessKey(file))).toBe('WITNESS_KEY_CORRUPT');
    expect(readFileSync(file, 'utf8')).toBe('{"v":1,"seed":"short"}');
  });
});
