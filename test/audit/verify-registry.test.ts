import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, expect, it } from 'vitest';
import { cosign } from '../../src/audit/cosignature.js';
import { AuditLog } from '../../src/audit/log.js';
import { verifyLogDir } from '../../src/audit/verify.js';
import { publicKeyOfSeed, randomSeed, signingKeyOf } from '../../src/identity/ed25519.js';

const dirs: string[] = [];
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

it("a registry that now holds fewer entries than it cosigned (lost or hidden ones) fails verify", async () => {
  const dir = mkdtempSync(join(tmpdir(), 'avreg-'));
  dirs.push(dir);
  const seed = randomSeed();
  const wseed = randomSeed();
  const origin = 'agentvpn.audit/avtest';
  const log = await AuditLog.open({ dir, owner: 'avtest', origin, signer: { name: origin, key: signingKeyOf(seed) } });
  for (let i = 0; i < 10; i++) await log.append('test.event', String(i), {});
  const witness = { name: 'agentvpn.witness/test', key: signingKeyOf(wseed) };
  writeFileSync(join(dir, 'cosigned'), cosign(log.signCheckpointAt(10), witness, Math.floor(Date.now() / 1000)));
  await log.close();
  const opts = { owner: 'avtest', origin, keys: [publicKeyOfSeed(seed)], witness: { name: witness.name, publicKey: publicKeyOfSeed(wseed) } };
  const whole = await verifyLogDir(dir, { ...opts, registrySize: 10 });
  expect(whole.problems).toEqual([]);
  expect(whole.witnessedSize).toBe(10);
  const rolledBack = await verifyLogDir(dir, { ...opts, registrySize: 8 });
  expect(rolledBack.problems[0]).toMatchObject({ kind: 'witness', seq: 8 });
});

it('crash debris on the last checkpoint line (zeros of an unfinished write) is not a problem for verify, as it is not for the log', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'avdebris-'));
  dirs.push(dir);
  const seed = randomSeed();
  const origin = 'agentvpn.audit/avtest';
  const log = await AuditLog.open({ dir, owner: 'avtest', origin, signer: { name: origin, key: signingKeyOf(seed) } });
  for (let i = 0; i < 5; i++) await log.append('test.event', String(i), {});
  await log.close();
  const { appendFileSync } = await import('node:fs');
  appendFileSync(join(dir, 'checkpoints.jsonl'), Buffer.concat([Buffer.alloc(300), Buffer.from('\n')]));
  const report = await verifyLogDir(dir, { owner: 'avtest', origin, keys: [publicKeyOfSeed(seed)] });
  expect(report.problems).toEqual([]);
  expect(report.checkpointedSize).toBe(5);
});
