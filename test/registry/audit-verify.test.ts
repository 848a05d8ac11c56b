// `agentvpn registry audit verify` (the built CLI, on a real registry database) and the registry's
// own audit log: an entry row edited in the database (sqlite3 from the test, as someone with the
// file would) is found and named by agent and seq, also when its leaf hash is rewritten with it;
// the registry's own log gets the operator's and the admin API's actions, CLI actions taken while
// no registry ran included, and verifies until its file is edited.
import { beforeAll, afterEach, beforeEach, describe, expect, it } from 'vitest';
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { leafHash } from '../../src/audit/merkle.js';
import { RegistryClient } from '../../src/registry/client.js';
import { startRegistry, type RunningRegistry } from '../../src/registry/server.js';
import { ROOT } from '../fixtures/cli-env.js';
import { registryCli } from './registry-process.js';
import { TestAgentLog } from './audit-helpers.js';

const NET = 'default';

/**
 * sqlite3 on the database file, as someone with the file would use it: the append-only triggers
 * are the first thing in the way (every open of the store puts them back), so they go first.
 */
function sqlite(db: string, sql: string): void {
  execFileSync('sqlite3', [db, `DROP TRIGGER audit_entries_append_only_update; DROP TRIGGER audit_entries_append_only_delete; ${sql}`]);
}

describe('registry audit verify', () => {
  let dir: string;
  let db: string;
  let reg: RunningRegistry | null;
  const clients: RegistryClient[] = [];

  beforeAll(() => {
    // The CLI under test is the built one; type errors elsewhere in a tree being edited do not stop tsc emitting.
    spawnSync(process.execPath, [join(ROOT, 'node_modules/typescript/bin/tsc'), '-p', ROOT], { stdio: 'ignore' });
  }, 180_000);

  beforeEach(async () => {
    dir = mkdtempSync(join(tmpdir(), 'agentvpn-audit-verify-'));
    db = join(dir, 'registry.db');
    reg = await startRegistry({ db });
  });

  afterEach(async () => {
    for (const c of clients.splice(0)) c.close();
    await reg?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  async function shippingMember(name: string, sizes: number[]): Promise<TestAgentLog> {
    const log = new TestAgentLog();
    const client = new RegistryClient({ url: reg!.url, identity: log.identity, network: NET });
    clients.push(client);
    await client.join(name, await reg!.createToken());
    let from = 0;
    for (const size of sizes) {
      await client.auditShip(log.add(size - from).ship(from));
      from = size;
    }
    return log;
  }

  const verify = () => registryCli(['audit', 'verify', '--db', db]);
  const registryLogTypes = () => readFileSync(`${db}.audit/entries.jsonl`, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { type: string; subject: string; details: Record<string, unknown> });

  it('passes on an untouched database, then names the agent and seq of an entry row edited with sqlite3', async () => {
    const alpha = await shippingMember('alpha', [3, 8, 10]);
    const beta = await shippingMember('beta', [5]);
    await reg!.stop();
    reg = null;
    const clean = verify();
    console.log(`clean: exit ${clean.code}, ${(clean.answer.agents as unknown[]).length} agent logs, registry log ${(clean.answer.registryLog as { entries: number }).entries} entries`);
    expect(clean.code).toBe(0);
    expect((clean.answer.agents as Array<{ agent: string; entries: number; checkpoints: number }>).map((a) => [a.agent, a.entries, a.checkpoints]).sort())
      .toEqual([[alpha.id, 10, 3], [beta.id, 5, 1]].sort());

    sqlite(db, `UPDATE audit_entries SET line = replace(line, '"text":"x"', '"text":"y"') WHERE agent = '${alpha.id}' AND seq = 4`);
    const edited = verify();
    console.log(`line edited: exit ${edited.code}: ${edited.answer.message}`);
    expect(edited.code).not.toBe(0);
    expect(edited.answer).toMatchObject({ ok: false, code: 'AUDIT_VERIFY_FAILED' });
    expect(edited.answer.message).toContain(`agent ${alpha.id} seq 4`);

    // The same edit with its leaf hash rewritten to match: the witness's cosigned roots still catch it, within 3..7.
    const line = (execFileSync('sqlite3', [db, `SELECT line FROM audit_entries WHERE agent = '${alpha.id}' AND seq = 4`], { encoding: 'utf8' })).trim();
    sqlite(db, `UPDATE audit_entries SET leaf_hash = '${leafHash(Buffer.from(line)).toString('base64')}' WHERE agent = '${alpha.id}' AND seq = 4`);
    const rehashed = verify();
    console.log(`line and leaf hash edited: exit ${rehashed.code}: ${rehashed.answer.message}`);
    expect(rehashed.code).not.toBe(0);
    expect(rehashed.answer.message).toContain(`agent ${alpha.id} seq 3`);
    expect(rehashed.answer.message).toContain('entries 3..7');

    // A deleted row.
    sqlite(db, `DELETE FROM audit_entries WHERE agent = '${beta.id}' AND seq = 2`);
    const deleted = verify();
    const betaReport = (deleted.answer.agents as Array<{ agent: string; problems: Array<{ seq: number; message: string }> }>).find((a) => a.agent === beta.id)!;
    console.log(`row deleted: ${betaReport.problems[0]!.message}`);
    expect(betaReport.problems[0]).toMatchObject({ seq: 2 });
  });

  it("the registry's own log gets the operator's and admin API's actions (also those taken while it was down) and verifies, until its file is edited", async () => {
    const token = await reg!.createToken({ uses: 5 });
    const a = new TestAgentLog();
    const client = new RegistryClient({ url: reg!.url, identity: a.identity, network: NET });
    clients.push(client);
    await client.join('alpha', token);
    // Rejoins under the same name: one entry a minute per agent (a member cannot grow the log at will).
    for (let i = 0; i < 3; i++) await client.join('alpha');
    const admin = registryCli(['admin-token', 'create', '--db', db]).answer.token as string;
    const viaCliWhileRunning = registryCli(['policy', 'set', writePolicy(), '--db', db]);
    expect(viaCliWhileRunning.code).toBe(0);
    const auth = { authorization: `Bearer ${admin}` };
    // The admin token reaches the running registry with its next poll (~1 s).
    for (let i = 0; i < 50; i++) {
      if ((await fetch(`${reg!.url}/v1/admin/agents`, { headers: auth })).status === 200) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    expect((await fetch(`${reg!.url}/v1/admin/agents`, { headers: auth })).status).toBe(200);
    let wrong = 0;
    for (let i = 0; i < 10; i++) if ((await fetch(`${reg!.url}/v1/admin/agents`, { headers: { authorization: 'Bearer avadm_wrong' } })).status !== 200) wrong++;
    // Wrong tokens spent this address's admin budget for the current second.
    await new Promise((r) => setTimeout(r, 1100));
    const blocked = await fetch(`${reg!.url}/v1/admin/agents/alpha/block`, { method: 'POST', headers: auth });
    expect(blocked.status).toBe(200);
    // A fork, refused: the registry writes the refusal into its own log.
    const b = new TestAgentLog();
    const bClient = new RegistryClient({ url: reg!.url, identity: b.identity, network: NET });
    clients.push(bClient);
    await bClient.join('beta', token);
    await bClient.auditShip(b.add(2).ship(0));
    await expect(bClient.auditShip(b.forkAt(0).add(1, { text: 'forked' }).ship(2))).rejects.toMatchObject({ code: 'AUDIT_INCONSISTENT' });
    await reg!.stop();
    // Taken on the database while no registry runs: logged at the next start.
    const offline = registryCli(['token', 'create', '--db', db, '--uses', '1']);
    expect(offline.code).toBe(0);
    reg = await startRegistry({ db });
    await reg.stop();
    reg = null;

    const entries = registryLogTypes();
    const types = entries.map((e) => e.type);
    const count = (t: string) => types.filter((x) => x === t).length;
    console.log(`registry log: ${entries.length} entries: ${types.join(' ')}; ${wrong} wrong admin tokens gave ${count('admin.auth-failed')} auth-failed entr(y/ies) with failures=${entries.find((e) => e.type === 'admin.auth-failed')?.details.failures}`);
    expect(count('token.created')).toBe(2);
    expect(count('agent.joined')).toBe(2);
    expect(count('agent.rejoined')).toBe(1);
    expect(count('admin-token.created')).toBe(1);
    expect(count('policy.set')).toBe(1);
    expect(count('admin.login')).toBe(1);
    expect(count('admin.auth-failed')).toBe(1);
    expect(count('agent.blocked')).toBe(1);
    expect(count('audit.refused')).toBe(1);
    expect(count('registry.started')).toBe(2);
    // The token created while the registry was down is logged after the second start, with its time of creation.
    expect(types.lastIndexOf('token.created')).toBeGreaterThan(types.lastIndexOf('registry.started'));
    expect(entries.find((e) => e.type === 'agent.blocked')?.subject).toBe(a.id);
    const clean = verify();
    expect(clean.code, JSON.stringify(clean.answer)).toBe(0);
    expect((clean.answer.registryLog as { ok: boolean; entries: number }).entries).toBe(entries.length);

    const file = `${db}.audit/entries.jsonl`;
    const lines = readFileSync(file, 'utf8').split('\n');
    const k = types.indexOf('agent.blocked');
    lines[k] = lines[k]!.replace('"agent.blocked"', '"agent.removed"');
    writeFileSync(file, lines.join('\n'));
    const edited = verify();
    console.log(`registry log entry ${k} edited: exit ${edited.code}: ${edited.answer.message}`);
    expect(edited.code).not.toBe(0);
    expect(edited.answer.message).toContain(`the registry's own log seq ${k}`);

    function writePolicy(): string {
      const p = join(dir, 'policy.json');
      writeFileSync(p, '{ "grants": [] }\n');
      return p;
    }
  });

  it('refusals lists the kept forks', async () => {
    const b = new TestAgentLog();
    const c = new RegistryClient({ url: reg!.url, identity: b.identity, network: NET });
    clients.push(c);
    await c.join('beta', await reg!.createToken());
    await c.auditShip(b.add(3).ship(0));
    await expect(c.auditShip(b.forkAt(1).add(1, { text: 'forked' }).ship(3))).rejects.toMatchObject({ code: 'AUDIT_INCONSISTENT' });
    const r = registryCli(['audit', 'refusals', '--db', db]);
    expect(r.code).toBe(0);
    expect((r.answer.refusals as Array<{ agent: string; held: number; size: number }>).map((x) => [x.agent, x.held, x.size])).toEqual([[b.id, 3, 4]]);
  });
});
