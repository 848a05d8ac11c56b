// The registry as the witness of agents' audit logs, over real HTTP on loopback with a real SQLite
// file: good ships are cosigned (and the cosignature verifies with the witness key the registry
// names), a ship that does not start at the held size gets 409 AUDIT_GAP with the held size, a
// rewritten history under the same key is refused as AUDIT_INCONSISTENT and kept as a refusal
// with nothing of it stored, and strangers, other keys, other agents' entries and oversize ships
// are refused before anything is stored. Each test prints what it measured.
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openCheckpoint } from '../../src/audit/checkpoint.js';
import { openCosigned } from '../../src/audit/cosignature.js';
import { signingKeyOf, randomSeed } from '../../src/identity/ed25519.js';
import { RegistryClient, RegistryRefusal } from '../../src/registry/client.js';
import { MAX_SHIP_ENTRIES, type AuditShip } from '../../src/registry/protocol.js';
import { startRegistry, type RunningRegistry } from '../../src/registry/server.js';
import { SqliteStore } from '../../src/registry/sqlite-store.js';
import { MerkleTree } from '../../src/audit/merkle.js';
import { TestAgentLog, originOf } from './audit-helpers.js';

function rebuild(lines: string[]): MerkleTree {
  const t = new MerkleTree();
  for (const l of lines) t.append(Buffer.from(l));
  return t;
}

const NET = 'default';

describe('audit witness', () => {
  let dir: string;
  let db: string;
  let reg: RunningRegistry;
  const clients: RegistryClient[] = [];

  beforeEach(async () => {
    dir = mkdtempSync(join(tmpdir(), 'agentvpn-audit-witness-'));
    db = join(dir, 'registry.db');
    reg = await startRegistry({ db });
  });

  afterEach(async () => {
    for (const c of clients.splice(0)) c.close();
    await reg.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  /** A member: joined with a token, its log empty. */
  async function member(name: string): Promise<{ log: TestAgentLog; client: RegistryClient }> {
    const log = new TestAgentLog();
    const client = new RegistryClient({ url: reg.url, identity: log.identity, network: NET });
    clients.push(client);
    await client.join(name, await reg.createToken());
    return { log, client };
  }

  /** A raw ship: status and answer, as the registry sent them. */
  async function post(agent: string, body: unknown): Promise<{ status: number; body: Record<string, unknown> }> {
    const res = await fetch(`${reg.url}/v1/audit/ship?network=${NET}&agent=${agent}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: typeof body === 'string' ? body : JSON.stringify(body) });
    return { status: res.status, body: (await res.json()) as Record<string, unknown> };
  }

  /** What the database holds of an agent's log, read from the file. */
  async function held(agent: string) {
    const store = new SqliteStore(db);
    try {
      return { head: await store.auditHead(agent), lines: (await store.auditEntries(agent, 0, 10_000)).map((e) => e.line), refusals: await store.auditRefusals(0, 100) };
    } finally {
      await store.close();
    }
  }

  /** A ship sent from another loopback address (its own failure budget): a stranger on another host. */
  function postFrom(localAddress: string, agent: string, body: string): Promise<string> {
    return new Promise((resolve, reject) => {
      const url = new URL(`${reg.url}/v1/audit/ship?network=${NET}&agent=${agent}`);
      const req = request({ host: url.hostname, port: url.port, path: url.pathname + url.search, method: 'POST', localAddress, headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) } }, (res) => {
        let text = '';
        res.setEncoding('utf8').on('data', (d: string) => (text += d)).on('end', () => resolve(String((JSON.parse(text) as { code?: string }).code ?? res.statusCode)));
      });
      req.on('error', reject);
      req.end(body);
    });
  }

  const codeOf = async (p: Promise<unknown>) => p.then(() => 'no error', (e: RegistryRefusal) => e.code);

  it('cosigns a good ship (openCosigned accepts it with the witness key), and a second ship extends it', async () => {
    const { log, client } = await member('alpha');
    const witness = await client.auditWitness();
    expect(witness).toEqual(reg.witness);
    const verifier = { name: witness.name, publicKey: Buffer.from(witness.publicKey, 'base64') };

    const first = await client.auditShip(log.add(3).ship(0));
    const cp1 = openCosigned(first.cosigned, verifier);
    expect([first.size, cp1.size, Buffer.from(cp1.rootHash).equals(log.tree.root(3))]).toEqual([3, 3, true]);
    // The agent's own signature is kept on the note it gets back.
    expect(openCheckpoint(first.cosigned, [{ name: originOf(log.id), publicKey: log.identity.publicKey }]).size).toBe(3);

    const second = await client.auditShip(log.add(4).ship(3));
    const cp2 = openCosigned(second.cosigned, verifier);
    expect([second.size, cp2.size, Buffer.from(cp2.rootHash).equals(log.tree.root(7))]).toEqual([7, 7, true]);
    expect(await client.auditHead()).toEqual({ size: 7, cosigned: second.cosigned });
    expect(await client.auditEntries(2, 3)).toEqual(log.lines.slice(2, 5));
    const stored = await held(log.id);
    console.log(`witnessed ${stored.head.size} entries in 2 ships; cosigned sizes ${cp1.size}, ${cp2.size}`);
    expect(stored.lines).toEqual(log.lines);
  });

  it('answers 409 AUDIT_GAP with the held size when from is not the held size', async () => {
    const { log, client } = await member('alpha');
    await client.auditShip(log.add(3).ship(0));
    log.add(2);
    const replayed = await post(log.id, log.ship(0));
    const ahead = await post(log.id, log.ship(4));
    console.log(`from 0 → ${replayed.status} ${replayed.body.code} held ${replayed.body.held}; from 4 → ${ahead.status} ${ahead.body.code} held ${ahead.body.held}`);
    expect([replayed.status, replayed.body.code, replayed.body.held]).toEqual([409, 'AUDIT_GAP', 3]);
    expect([ahead.status, ahead.body.code, ahead.body.held]).toEqual([409, 'AUDIT_GAP', 3]);
    expect(typeof replayed.body.cosigned).toBe('string');
    const e = await client.auditShip(log.ship(1)).catch((err: RegistryRefusal) => err);
    expect(e).toBeInstanceOf(RegistryRefusal);
    expect([(e as RegistryRefusal).code, (e as RegistryRefusal).answer.held]).toEqual(['AUDIT_GAP', 3]);
    expect((await client.auditShip(log.ship(3))).size).toBe(5);
  });

  it('refuses a forked history under the same key (AUDIT_INCONSISTENT), keeps the refusal, stores nothing of it', async () => {
    const { log, client } = await member('alpha');
    await client.auditShip(log.add(4).ship(0));
    const witnessed = await held(log.id);

    // Entry 1 rewritten, the log re-signed with the agent's own key and shipped from the held size with its own (honest) proof.
    const fork = log.forkAt(1).add(2, { text: 'rewritten' });
    const proofFails = await post(log.id, fork.ship(4));
    // The real proof from the witnessed tree, with entries that are not the ones the checkpoint covers.
    const honest = log.add(2).ship(4);
    const entriesFail = await post(log.id, { ...honest, entries: fork.lines.slice(4, 6) });
    const after = await held(log.id);
    console.log(`fork: ${proofFails.status} ${proofFails.body.code}; wrong entries: ${entriesFail.status} ${entriesFail.body.code}; ` +
      `refusals kept ${after.refusals.length}; held ${after.head.size} entries (was ${witnessed.head.size})`);
    expect([proofFails.status, proofFails.body.code]).toEqual([409, 'AUDIT_INCONSISTENT']);
    expect([entriesFail.status, entriesFail.body.code]).toEqual([409, 'AUDIT_INCONSISTENT']);
    expect(after.head).toEqual(witnessed.head);
    expect(after.lines).toEqual(witnessed.lines);
    expect(after.refusals.map((r) => [r.agent, r.code, r.held, r.size])).toEqual([[log.id, 'AUDIT_INCONSISTENT', 4, 6], [log.id, 'AUDIT_INCONSISTENT', 4, 6]]);
    // The kept checkpoint is the agent's own signature over the forked tree: evidence anyone can check.
    const evidence = openCheckpoint(after.refusals[0]!.checkpoint!, [{ name: originOf(log.id), publicKey: log.identity.publicKey }]);
    expect(Buffer.from(evidence.rootHash).equals(fork.tree.root(6))).toBe(true);
    expect(reg.stats().audit).toMatchObject({ ships: 1, refusals: 2, refusalsNotKept: 0 });
    // The honest continuation is still taken.
    expect((await client.auditShip(honest)).size).toBe(6);
  });

  it('refuses, before storing anything: a non-member, another key, another agent\'s entries, misplaced seqs, oversize ships', async () => {
    const { log } = await member('alpha');
    const other = await member('beta');
    log.add(3);
    const stranger = new TestAgentLog().add(3);
    const signedByOther: AuditShip = (() => {
      const saved = log.signerKey;
      log.signerKey = signingKeyOf(randomSeed());
      const s = log.ship(0);
      log.signerKey = saved;
      return s;
    })();
    const foreign = new TestAgentLog();
    Object.assign(foreign, { seed: log.seed, identity: log.identity, signerKey: log.signerKey });
    foreign.add(3, { owner: other.log.id });
    const misplaced = { ...log.ship(0), entries: [log.lines[1]!, log.lines[0]!, log.lines[2]!] };
    const tooMany = new TestAgentLog();
    Object.assign(tooMany, { seed: log.seed, identity: log.identity, signerKey: log.signerKey });
    tooMany.add(MAX_SHIP_ENTRIES + 1);
    const huge = JSON.stringify({ ...log.ship(0), pad: 'x'.repeat(1024 * 1024) });

    const answers = {
      nonMember: await post(stranger.id, stranger.ship(0)),
      otherKey: await post(log.id, signedByOther),
      otherAgentsEntries: await post(log.id, foreign.ship(0)),
      misplacedSeqs: await post(log.id, misplaced),
      tooManyEntries: await post(log.id, tooMany.ship(0)),
      overOneMiB: await post(log.id, huge),
      bodyAgentDiffers: await post(log.id, { ...other.log.add(1).ship(0) }),
    };
    const summary = Object.fromEntries(Object.entries(answers).map(([k, a]) => [k, `${a.status} ${a.body.code}`]));
    console.log('refusals:', summary);
    expect(summary).toEqual({
      nonMember: '403 NOT_JOINED', otherKey: '403 AUDIT_BAD_SIGNATURE', otherAgentsEntries: '400 AUDIT_MALFORMED', misplacedSeqs: '400 AUDIT_MALFORMED',
      tooManyEntries: '400 AUDIT_MALFORMED', overOneMiB: '413 PAYLOAD_TOO_LARGE', bodyAgentDiffers: '400 AUDIT_MALFORMED',
    });
    for (const id of [log.id, stranger.id, other.log.id]) expect((await held(id)).head.size).toBe(0);
    expect((await held(log.id)).refusals).toEqual([]);
  });

  it('reads: the agent itself or an admin token; another member is refused', async () => {
    const { log, client } = await member('alpha');
    const other = await member('beta');
    await client.auditShip(log.add(2).ship(0));
    const admin = await reg.createAdminToken();
    const asAdmin = await fetch(`${reg.url}/v1/audit/entries?agent=${log.id}&from=1`, { headers: { authorization: `Bearer ${admin}` } });
    expect(((await asAdmin.json()) as { entries: string[] }).entries).toEqual([log.lines[1]]);
    const joinToken = await reg.createToken();
    const asJoinToken = await fetch(`${reg.url}/v1/audit/head?agent=${log.id}`, { headers: { authorization: `Bearer ${joinToken}` } });
    // beta signs a read of alpha's head: refused whatever its signature.
    const path = `/v1/audit/head?network=${NET}&agent=${log.id}`;
    const { agentAuthorization } = await import('../../src/registry/protocol.js');
    const asOther = await fetch(reg.url + path, { headers: { authorization: agentAuthorization(other.log.identity, 'GET', path, Date.now()) } });
    console.log(`admin read 200; join token ${asJoinToken.status}; another member ${asOther.status}`);
    expect([asJoinToken.status, asOther.status]).toEqual([401, 401]);
    expect(await codeOf(client.auditHead())).toBe('no error');
  });

  it('a stranger claiming a member\'s ID gets its junk bodies parsed a few times a second at most, then is refused before the body is read', async () => {
    const { log, client } = await member('alpha');
    // Start at the beginning of a second, so the whole burst falls in one budget window.
    await new Promise((r) => setTimeout(r, 1000 - (Date.now() % 1000) + 5));
    const junk = JSON.stringify({ agent: log.id, from: 0, entries: ['x'.repeat(8000)], checkpoint: 'not a note', proof: [] });
    const codes: Record<string, number> = {};
    for (let i = 0; i < 50; i++) {
      const a = await post(log.id, junk);
      codes[a.body.code as string] = (codes[a.body.code as string] ?? 0) + 1;
    }
    console.log('50 junk ships in ~1 s:', codes);
    expect((codes.AUDIT_MALFORMED ?? 0)).toBeLessThanOrEqual(8);
    expect(codes.RATE_LIMITED ?? 0).toBeGreaterThanOrEqual(40);
    await new Promise((r) => setTimeout(r, 1100));
    expect((await client.auditShip(log.add(1).ship(0))).size).toBe(1);
  });

  it("a member's ships are budgeted (a burst of 16, then 2 a second); junk claiming its ID from another address does not spend that budget", async () => {
    const { log, client } = await member('alpha');
    const junk = JSON.stringify({ agent: log.id, from: 0, entries: ['{}'], checkpoint: 'junk', proof: [] });
    const strangers = await Promise.all(Array.from({ length: 30 }, () => postFrom('127.0.0.2', log.id, junk)));
    const started = Date.now();
    let accepted = 0;
    const codes: Record<string, number> = {};
    for (let i = 0; i < 30; i++) {
      try {
        await client.auditShip(log.add(1).ship(accepted));
        accepted++;
      } catch (e) {
        const code = (e as RegistryRefusal).code;
        codes[code] = (codes[code] ?? 0) + 1;
        log.lines.pop();
        log.tree = rebuild(log.lines);
      }
    }
    const seconds = (Date.now() - started) / 1000;
    console.log(`stranger from 127.0.0.2: ${strangers.filter((c) => c === 'AUDIT_MALFORMED').length} parsed, ${strangers.filter((c) => c === 'RATE_LIMITED').length} refused unread; ` +
      `member: 30 ships in ${seconds.toFixed(2)} s, ${accepted} accepted, refused ${JSON.stringify(codes)}`);
    expect(accepted).toBeGreaterThanOrEqual(16);
    expect(accepted).toBeLessThanOrEqual(16 + Math.ceil(2 * seconds) + 1);
    expect(codes.AUDIT_RATE_LIMITED).toBe(30 - accepted);
    expect(reg.stats().audit.rateLimited).toBe(30 - accepted);
  });

  it('a member forking on purpose gets 10 refusals an hour kept; the rest are counted, not stored', async () => {
    const { log, client } = await member('alpha');
    await client.auditShip(log.add(2).ship(0));
    const codes: string[] = [];
    for (let i = 0; i < 14; i++) {
      const fork = log.forkAt(0).add(1, { text: `fork ${i}` });
      codes.push(await codeOf(client.auditShip(fork.ship(2))));
    }
    const kept = (await held(log.id)).refusals.length;
    console.log(`14 forked ships: ${codes.filter((c) => c === 'AUDIT_INCONSISTENT').length} refused as inconsistent, ${kept} kept, ${reg.stats().audit.refusalsNotKept} counted only`);
    expect(codes.every((c) => c === 'AUDIT_INCONSISTENT')).toBe(true);
    expect(kept).toBe(10);
    expect(reg.stats().audit.refusalsNotKept).toBe(4);
  });
});
