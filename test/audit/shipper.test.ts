import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, expect, it } from 'vitest';
import { AuditLog } from '../../src/audit/log.js';
import { AuditShipper, type WitnessApi } from '../../src/audit/shipper.js';
import { publicKeyOfSeed, randomSeed, signingKeyOf } from '../../src/identity/ed25519.js';

const dirs: string[] = [];
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

it('a damaged witness.json is not replaced by the key the registry offers now: nothing is shipped, and it says why', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'avship-'));
  dirs.push(dir);
  const origin = 'agentvpn.audit/avtest';
  const log = await AuditLog.open({ dir, owner: 'avtest', origin, signer: { name: origin, key: signingKeyOf(randomSeed()) } });
  await log.append('test.event', '', {});
  writeFileSync(join(dir, 'witness.json'), '{"name": "agentvpn.witness/x", "publicKey": '); // cut short
  const calls: string[] = [];
  const offered = Buffer.from(publicKeyOfSeed(randomSeed())).toString('base64');
  const api: WitnessApi = {
    witness: async () => (calls.push('witness'), { name: 'agentvpn.witness/attacker', publicKey: offered }),
    head: async () => (calls.push('head'), { size: 0, cosigned: null }),
    ship: async () => {
      calls.push('ship');
      throw new Error('must not ship');
    },
  };
  const noted: string[] = [];
  const shipper = new AuditShipper({ log, dir, agentId: 'avtest', api, audit: async (type) => void noted.push(type), warn: () => {} });
  await shipper.shipNow();
  expect(shipper.status().state).toBe('witness-changed');
  expect(shipper.alert()).toMatch(/witness/);
  expect(calls).toEqual([]);
  expect(noted).toContain('audit.witness-damaged');
  expect(readFileSync(join(dir, 'witness.json'), 'utf8')).not.toContain('attacker');
  await log.close();
});
