import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cpSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { AGENTVPN_BIN, HUB_REGISTRY_IP, Lab, REPO_ROOT, startHubFleet, startLabAgent, startLabRegistry, waitFor, type LabAgent, type LabRegistry } from '../../src/lab/index.js';
import type { AuditEntry } from '../../src/audit/entry.js';
import { labReady, startHttpServer } from './checks.js';

/**
 * Issue 9 end to end: the daemon records what happens, acknowledges only what is on disk (kill -9
 * at full rate loses nothing acknowledged), ships to the registry's witness through an outage,
 * and `audit verify` / `prove` / `check-proof` catch tampering, including a history rewritten and
 * re-signed with the agent's own key (a fork, seen only through the registry's cosignature).
 */
const FIXTURES = join(fileURLToPath(new URL('.', import.meta.url)), 'fixtures');

interface AuditStatus {
  size: number;
  ship: { state: string; shipped: number | null; witness: string | null; problem: string | null } | null;
}

describe.runIf(labReady(['ip', 'ping', 'curl', 'python3']))('audit trail', () => {
  let lab: Lab;
  let registry: LabRegistry;
  let regNs: string;
  const agents: Record<string, LabAgent> = {};

  const entriesOf = (a: LabAgent): AuditEntry[] =>
    readFileSync(join(a.stateDir, 'audit', 'entries.jsonl'), 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l) as AuditEntry);
  const auditStatus = (a: LabAgent) => a.json<AuditStatus>(['audit', 'status']);
  const shippedAll = async (a: LabAgent) => {
    const s = await auditStatus(a);
    return s.ship?.shipped === s.size && s.size > 0;
  };
  const verify = async (a: LabAgent, extra: string[] = []) => {
    const r = await a.cli(['audit', 'verify', '--json', ...extra], { check: false });
    if (!r.stdout.includes('"entries"')) console.log(`audit verify: exit ${r.code} ${r.stdout} ${r.stderr}`);
    return { code: r.code, report: JSON.parse(r.stdout) as { ok: boolean; entries: number; witnessedSize: number | null; problems: { kind: string; seq: number | null; message: string }[] } };
  };
  /** A control method of an agent's daemon, called from inside its namespace. */
  const callControl = async <T>(a: LabAgent, method: string, params: object): Promise<T> => {
    const script = `const { callDaemon } = await import(${JSON.stringify(`${REPO_ROOT}/dist/daemon/control-client.js`)});
      process.stdout.write(JSON.stringify(await callDaemon('agentvpn0', ${JSON.stringify(method)}, ${JSON.stringify(params)}, { timeoutMs: 10000 })));`;
    const r = await lab.exec(a.ns, [process.execPath, '--input-type=module', '-e', script], { env: { ...process.env, AGENTVPN_RUN_DIR: a.runDir }, check: true });
    return JSON.parse(r.stdout) as T;
  };
  const registryCli = (args: string[]) => lab.run(regNs, [process.execPath, AGENTVPN_BIN, 'registry', ...args, '--db', registry.db, '--network', registry.network]);

  beforeAll(async () => {
    lab = new Lab();
    const fleet = await startHubFleet(lab, ['alpha', 'beta']);
    ({ regNs, registry } = fleet);
    Object.assign(agents, fleet.agents);
  });

  afterAll(async () => {
    await lab?.cleanup();
  });

  it('records joins, peers, trust, handshakes, paths, policy, denies and rotation; operator actions answer after the entry is on disk', async () => {
    const { alpha, beta } = agents;
    const b = await beta.json<{ id: string; ipv4: string }>(['id']);
    await lab.exec(alpha.ns, ['ping', '-c', '3', '-i', '0.2', '-W', '1', b.ipv4], { check: true });
    // A policy that lets alpha reach beta's port 8080 only; a connection to 8081 is denied at beta.
    const file = join(lab.dir, 'audit-policy.json');
    writeFileSync(file, JSON.stringify({ grants: [{ src: ['name:alpha'], dst: ['name:beta'], ip: ['tcp:8080', 'icmp'] }] }));
    await registryCli(['policy', 'set', file]);
    const www = join(lab.dir, 'www-audit');
    mkdirSync(www, { recursive: true });
    const server = await startHttpServer(lab, beta.ns, www, b.ipv4, 8081);
    try {
      await waitFor(async () => entriesOf(beta).some((e) => e.type === 'policy.changed' && e.details.version !== null), { timeoutMs: 5_000, what: 'the policy reaches beta' })
        .catch((e) => { console.log(entriesOf(beta).map((x) => `${x.type} ${JSON.stringify(x.details)}`).join('\n')); throw e; });
      for (let i = 0; i < 3; i++) await lab.exec(alpha.ns, ['curl', '-s', '--max-time', '1', `http://${b.ipv4}:8081/`]);
      // Whichever side's filter refused it (the sender's, with an ICMP reject) writes the summary.
      await waitFor(() => [...entriesOf(alpha), ...entriesOf(beta)].some((e) => e.type === 'policy.denied'), { timeoutMs: 15_000, what: 'a policy.denied summary' })
        .catch(async (e) => { console.log(JSON.stringify((await alpha.json<{ peers: unknown[] }>(['status'])).peers)); throw e; });
    } finally {
      await lab.kill(server);
      writeFileSync(file, JSON.stringify({ grants: [{ src: ['*'], dst: ['*'], ip: ['*'] }] }));
      await registryCli(['policy', 'set', file]);
    }
    const types = new Set(entriesOf(alpha).map((e) => e.type));
    for (const t of ['daemon.up', 'registry.joined', 'registry.connected', 'peer.added', 'trust.pinned', 'peer.handshake', 'path.changed', 'policy.changed', 'audit.witness-pinned']) {
      expect(types, `alpha's log has ${t}`).toContain(t);
    }
    const denied = [...entriesOf(alpha), ...entriesOf(beta)].find((e) => e.type === 'policy.denied')!;
    console.log(`policy.denied entry: ${JSON.stringify(denied.details)}`);
    expect(denied.details.packets).toBeGreaterThan(0);
    const added = entriesOf(alpha).find((e) => e.type === 'peer.added')!;
    expect(added.subject).toBe(b.id);

    // An operator's block: the entry is on disk when the command returns.
    await alpha.cli(['trust', 'block', 'beta']);
    expect(entriesOf(alpha).at(-1)?.type === 'trust.blocked' || entriesOf(alpha).some((e) => e.type === 'trust.blocked' && e.subject === b.id)).toBe(true);
    await alpha.cli(['trust', 'forget', 'beta']);
    expect(entriesOf(alpha).some((e) => e.type === 'trust.forgotten')).toBe(true);
    await waitFor(async () => (await lab.exec(alpha.ns, ['ping', '-c', '1', '-W', '1', b.ipv4])).code === 0, { timeoutMs: 10_000, what: 'beta re-admitted' });

    // A key rotation: the entry, and later checkpoints signed with the new key still verify.
    await alpha.cli(['key', 'rotate']);
    expect(entriesOf(alpha).some((e) => e.type === 'key.rotated')).toBe(true);
    await alpha.cli(['audit', 'note', 'after the rotation']);
    await waitFor(() => shippedAll(alpha), { timeoutMs: 10_000, what: 'alpha ships its log' });
    const v = await verify(alpha);
    console.log(`alpha: ${v.report.entries} entries, witnessed ${v.report.witnessedSize}`);
    expect(v.report.problems).toEqual([]);
    expect(v.code).toBe(0);
    expect(v.report.witnessedSize).toBe(v.report.entries);
  });

  it('tail -n, tail -f and export --since read the log a SIEM would ship', async () => {
    const { alpha } = agents;
    const last3 = (await alpha.cli(['audit', 'tail', '-n', '3', '--json'])).stdout.trim().split('\n').map((l) => JSON.parse(l) as AuditEntry);
    expect(last3).toHaveLength(3);
    expect(last3.map((e) => e.seq)).toEqual([last3[0]!.seq, last3[0]!.seq + 1, last3[0]!.seq + 2]);
    const follower = lab.spawn(alpha.ns, [process.execPath, AGENTVPN_BIN, 'audit', 'tail', '-f', '-n', '0', '--json'], { name: 'audit-tail', env: { ...process.env, AGENTVPN_RUN_DIR: alpha.runDir } });
    try {
      await new Promise((r) => setTimeout(r, 1000));
      await alpha.cli(['audit', 'note', 'followed']);
      await waitFor(() => readFileSync(follower.logFile, 'utf8').includes('"text":"followed"'), { timeoutMs: 5_000, what: 'tail -f shows the new note' });
    } finally {
      await lab.kill(follower);
    }
    const all = (await alpha.cli(['audit', 'export'])).stdout.trim().split('\n');
    expect(all.length).toBe(entriesOf(alpha).length);
    expect((await alpha.cli(['audit', 'export', '--since', '2999-01-01T00:00:00Z'])).stdout).toBe('');
    const recent = (await alpha.cli(['audit', 'export', '--since', '1h'])).stdout.trim().split('\n');
    expect(recent.length).toBe(all.length); // the whole log is younger than an hour
    const bad = await alpha.cli(['audit', 'export', '--since', 'yesterday'], { check: false });
    expect(bad.code).toBe(1);
    expect(bad.stderr).toContain('--since');
  });

  it('kill -9 while logging at full rate, 4 times: every acknowledged entry survives and the log verifies', async () => {
    const { alpha } = agents;
    let total = 0;
    for (let round = 0; round < 4; round++) {
      const writer = lab.spawn(alpha.ns, [process.execPath, join(FIXTURES, 'audit-writer.mjs'), REPO_ROOT, 'agentvpn0', '16', `r${round}`],
        { name: `audit-writer-${round}`, env: { ...process.env, AGENTVPN_RUN_DIR: alpha.runDir } });
      const acks = () => [...readFileSync(writer.logFile, 'utf8').matchAll(/^ack (\d+) (\S+)$/gm)].map((m) => ({ seq: Number(m[1]), text: m[2]! }));
      await waitFor(() => acks().length >= 300 + Math.floor(Math.random() * 300), { timeoutMs: 20_000, what: 'the writer gets acknowledgements' });
      alpha.proc!.kill('SIGKILL');
      await alpha.proc!.exited;
      await lab.kill(writer);
      const acked = acks();
      total += acked.length;
      await startLabAgent(lab, alpha.ns, 'alpha', registry, { agent: alpha });
      const entries = entriesOf(alpha);
      const missing = acked.filter((a) => entries[a.seq]?.details.text !== a.text);
      console.log(`round ${round + 1}: ${acked.length} acknowledged before kill -9, log now ${entries.length} entries, ${missing.length} missing`);
      expect(missing).toEqual([]);
      const v = await verify(alpha, ['--state-dir', alpha.stateDir]);
      expect(v.report.problems).toEqual([]);
    }
    expect(total).toBeGreaterThan(1000);
    await waitFor(() => shippedAll(alpha), { timeoutMs: 30_000, what: 'alpha ships what it logged' });
  });

  it('a registry outage: entries written meanwhile reach the witness in order when it returns; both verifies pass', async () => {
    const { alpha } = agents;
    await waitFor(() => shippedAll(alpha), { timeoutMs: 15_000, what: 'alpha caught up before the outage' });
    await lab.kill(registry.proc);
    const notes = Array.from({ length: 5 }, (_, i) => `during-outage-${i}`);
    for (const n of notes) await alpha.cli(['audit', 'note', n]);
    await waitFor(async () => (await auditStatus(alpha)).ship?.state === 'registry-down', { timeoutMs: 10_000, what: 'the shipper notices the outage' });
    const during = await auditStatus(alpha);
    expect(during.ship!.shipped).toBeLessThan(during.size);
    registry = { ...(await startLabRegistry(lab, regNs, HUB_REGISTRY_IP)), token: registry.token };
    await waitFor(() => shippedAll(alpha), { timeoutMs: 30_000, what: 'the queued entries reach the registry' });
    const local = readFileSync(join(alpha.stateDir, 'audit', 'entries.jsonl'), 'utf8').split('\n').filter(Boolean);
    const theirs: string[] = [];
    while (theirs.length < local.length) {
      const { entries } = await callControl<{ entries: string[] }>(alpha, 'auditRegistryEntries', { from: theirs.length, limit: 1000 });
      if (entries.length === 0) break;
      theirs.push(...entries);
    }
    expect(theirs.slice(0, local.length)).toEqual(local); // the registry may already hold entries written since
    expect(theirs.filter((l) => l.includes('during-outage')).map((l) => (JSON.parse(l) as AuditEntry).details.text)).toEqual(notes);
    const v = await verify(alpha);
    expect(v.report.problems).toEqual([]);
    expect(v.report.witnessedSize).toBeGreaterThanOrEqual(local.length); // the restart's own entries may have arrived since
    const reg = await lab.exec(regNs, [process.execPath, AGENTVPN_BIN, 'registry', 'audit', 'verify', '--db', registry.db, '--json'], { check: false });
    console.log(`registry audit verify: exit ${reg.code} ${reg.stdout.slice(0, 300)}`);
    expect(reg.code).toBe(0);
  });

  it('prove: a third party checks an entry offline against the cosigned checkpoint; an altered proof fails', async () => {
    const { alpha } = agents;
    await waitFor(() => shippedAll(alpha), { timeoutMs: 15_000, what: 'alpha caught up' });
    const bundle = (await alpha.cli(['audit', 'prove', '3'])).stdout;
    const file = join(lab.dir, 'proof.json');
    writeFileSync(file, bundle);
    // The third party takes the witness key from the registry's operator, not from the agent.
    const w = JSON.parse((await lab.run(regNs, [process.execPath, AGENTVPN_BIN, 'registry', 'audit', 'witness', '--db', registry.db, '--json'])).stdout) as { name: string; witnessKey: string };
    const pinned = JSON.parse(readFileSync(join(alpha.stateDir, 'audit', 'witness.json'), 'utf8')) as { name: string; publicKey: string };
    expect(w.witnessKey).toBe(`${pinned.name}+${pinned.publicKey}`);
    const witnessKey = w.witnessKey;
    const ok = await alpha.cli(['audit', 'check-proof', file, '--witness-key', witnessKey, '--json']);
    const r = JSON.parse(ok.stdout) as { witnessedBy: string; entry: AuditEntry };
    expect(r.witnessedBy).toBe(w.name);
    expect(r.entry.seq).toBe(3);
    const altered = JSON.parse(bundle) as { entry: string };
    altered.entry = altered.entry.replace(/"time":"[^"]+"/, '"time":"2020-01-01T00:00:00.000Z"');
    writeFileSync(file, JSON.stringify(altered));
    const bad = await alpha.cli(['audit', 'check-proof', file, '--witness-key', witnessKey], { check: false });
    expect(bad.code).toBe(1);
    expect(bad.stderr).toContain('does not hold');
  });

  it('tampering with a copy of the log is named by verify --state-dir; a history rewritten and re-signed is a fork the registry exposes', async () => {
    const { alpha } = agents;
    // An auditor's copy: entry 5 edited.
    const copy = join(lab.dir, 'auditor-copy');
    cpSync(join(alpha.stateDir, 'audit'), join(copy, 'audit'), { recursive: true });
    const entriesFile = join(copy, 'audit', 'entries.jsonl');
    const lines = readFileSync(entriesFile, 'utf8').split('\n');
    lines[5] = lines[5]!.replace(/"time":"[^"]+"/, '"time":"2020-01-01T00:00:00.000Z"');
    writeFileSync(entriesFile, lines.join('\n'));
    const edited = await verify(alpha, ['--state-dir', copy]);
    expect(edited.code).toBe(1);
    expect(edited.report.problems[0]).toMatchObject({ seq: 5 });

    // The attacker owns the host: rewrites entry 2, removes every local trace (checkpoints, cosigned, cursor), restarts.
    await lab.kill(alpha.proc!);
    const dir = join(alpha.stateDir, 'audit');
    const own = readFileSync(join(dir, 'entries.jsonl'), 'utf8').split('\n');
    own[2] = own[2]!.replace(/"time":"[^"]+"/, '"time":"2020-01-01T00:00:00.000Z"');
    writeFileSync(join(dir, 'entries.jsonl'), own.join('\n'));
    for (const f of ['checkpoints.jsonl', 'cosigned', 'shipped.json']) rmSync(join(dir, f), { force: true });
    await startLabAgent(lab, alpha.ns, 'alpha', registry, { agent: alpha });
    await waitFor(async () => (await auditStatus(alpha)).ship?.state === 'fork', { timeoutMs: 15_000, what: 'the shipper sees the fork' });
    const status = await alpha.json<{ alerts?: string[] }>(['status']);
    expect((status.alerts ?? []).join('\n')).toContain('different history');
    // Offline, the re-signed log looks whole; against the registry it is not.
    expect((await verify(alpha, ['--state-dir', alpha.stateDir])).report.problems).toEqual([]);
    const online = await verify(alpha);
    console.log(`fork: ${online.report.problems[0]?.message}`);
    expect(online.code).toBe(1);
    expect(online.report.problems[0]).toMatchObject({ kind: 'fork', seq: 2 });
  });
});
