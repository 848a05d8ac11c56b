import { appendFileSync, cpSync, mkdtempSync, readFileSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { signCheckpoint } from '../../src/audit/checkpoint.js';
import { cosign } from '../../src/audit/cosignature.js';
import { encodeEntry, parseEntry, type AuditEntry } from '../../src/audit/entry.js';
import { auditPath } from '../../src/audit/files.js';
import { AuditLog } from '../../src/audit/log.js';
import { MerkleTree, leafHash } from '../../src/audit/merkle.js';
import { verifyLogDir, type VerifyOptions, type VerifyReport } from '../../src/audit/verify.js';
import { publicKeyOfSeed, randomSeed, signingKeyOf } from '../../src/identity/ed25519.js';

const OWNER = 'agent-verify-test';
const ORIGIN = `agentvpn.audit/${OWNER}`;
const WITNESS = 'agentvpn.witness/registry/5eed5eed';
const seed = randomSeed();
const ownerKey = { name: ORIGIN, key: signingKeyOf(seed) };
const witnessSeed = randomSeed();
const witness = { signer: { name: WITNESS, key: signingKeyOf(witnessSeed) }, verifier: { name: WITNESS, publicKey: publicKeyOfSeed(witnessSeed) } };
/** The log: 1000 entries, checkpoints at these sizes (the last one by close()). */
const SIZES = [250, 500, 750, 1000];
const N = 1000;

let base = '';
let clean = '';
let cases = 0;
/** The registry's cosigned checkpoints of the clean log, at 750 and 1000 entries. */
const cosigned: Record<number, string> = {};
let originalLines: string[] = [];

const baseOpts = (extra: Partial<VerifyOptions> = {}): VerifyOptions => ({ owner: OWNER, origin: ORIGIN, keys: [publicKeyOfSeed(seed)], ...extra });
const withWitness = (extra: Partial<VerifyOptions> = {}) => baseOpts({ witness: witness.verifier, ...extra });
/** A copy of the clean log to tamper with. */
function copy(): string {
  const dir = join(base, `case${cases++}`);
  cpSync(clean, dir, { recursive: true });
  return dir;
}
const readEntryLines = (dir: string) => readFileSync(auditPath(dir, 'entries'), 'utf8').split('\n').slice(0, -1);
const writeEntryLines = (dir: string, lines: string[]) => writeFileSync(auditPath(dir, 'entries'), lines.map((l) => `${l}\n`).join(''));
const edit = (line: string, change: (e: AuditEntry) => AuditEntry) => encodeEntry(change(parseEntry(line))).toString('utf8');
const first = (r: VerifyReport) => ({ ok: r.ok, kind: r.problems[0]?.kind, seq: r.problems[0]?.seq });
function show(what: string, r: VerifyReport) {
  console.log(`verify: ${what}: ${r.ok ? 'ok' : `${r.problems.length} problems, first ${r.problems[0]!.kind} at ${r.problems[0]!.seq}: ${r.problems[0]!.message}`}`);
}

/** What a log owner holding its key can do: rewrite entries and sign checkpoints (with their leaves) over the new history. */
function resign(dir: string, lines: string[], sizes: number[]) {
  writeEntryLines(dir, lines);
  const tree = new MerkleTree();
  for (const l of lines) tree.append(Buffer.from(l));
  let prev = 0;
  const cps = sizes.map((size) => {
    const note = signCheckpoint({ origin: ORIGIN, size, rootHash: tree.root(size), extensions: [] }, [ownerKey]);
    const leaves = Buffer.concat(Array.from({ length: size - prev }, (_, i) => tree.leafHashAt(prev + i))).toString('base64');
    prev = size;
    return `${JSON.stringify({ note, leaves })}\n`;
  });
  writeFileSync(auditPath(dir, 'checkpoints'), cps.join(''));
}

beforeAll(async () => {
  base = mkdtempSync(join(tmpdir(), 'avn-audit-verify-'));
  clean = join(base, 'clean');
  const log = await AuditLog.open({ dir: clean, owner: OWNER, origin: ORIGIN, signer: ownerKey, checkpointEveryMs: 3_600_000 });
  for (let i = 0; i < N; i++) {
    void log.append(i % 3 === 0 ? 'peer.handshake' : 'trust.pinned', `peer-${i % 17}`, { i, endpoint: `198.51.100.${i % 250}:51820` });
    if (SIZES.includes(i + 1) && i + 1 < N) {
      await log.flushed();
      await log.checkpoint();
    }
  }
  await log.close();
  for (const size of [750, 1000]) cosigned[size] = cosign(log.signCheckpointAt(size), witness.signer, 1_796_000_000 + size);
  writeFileSync(auditPath(clean, 'cosigned'), cosigned[1000]!);
  originalLines = readEntryLines(clean);
}, 60_000);
afterAll(() => {
  rmSync(base, { recursive: true, force: true });
});

describe('audit verify: logs that are fine', () => {
  it('a clean log passes, with its checkpoints and the witness', async () => {
    const r = await verifyLogDir(clean, withWitness());
    show('clean', r);
    expect(r).toMatchObject({ ok: true, entries: N, checkpoints: SIZES.length, checkpointedSize: N, witnessedSize: N, tornBytes: 0, problems: [] });
  });

  it('a log with a torn tail passes and reports the torn bytes', async () => {
    const dir = copy();
    appendFileSync(auditPath(dir, 'entries'), originalLines[5]!.slice(0, 70));
    expect(await verifyLogDir(dir, withWitness())).toMatchObject({ ok: true, entries: N, tornBytes: 70 });
  });

  it('a log with crash debris (zeros, then blocks of the unfinished write) passes, as the log cuts it at open', async () => {
    const dir = copy();
    const next = edit(originalLines[0]!, (e) => ({ ...e, seq: N }));
    const debris = Buffer.concat([Buffer.alloc(512), Buffer.from(`${next.slice(100)}\n${next}\n`)]);
    appendFileSync(auditPath(dir, 'entries'), debris);
    const r = await verifyLogDir(dir, withWitness());
    show('debris', r);
    expect(r).toMatchObject({ ok: true, entries: N, tornBytes: debris.length });
  });
});

describe('audit verify: every kind of tampering names the first bad entry', () => {
  it('an entry modified (still canonical): the exact seq, through the signed leaf hashes', async () => {
    const dir = copy();
    const lines = readEntryLines(dir);
    lines[600] = edit(lines[600]!, (e) => ({ ...e, details: { ...e.details, endpoint: '203.0.113.66:51820' } }));
    writeEntryLines(dir, lines);
    const r = await verifyLogDir(dir, withWitness());
    show('modified', r);
    expect(first(r)).toEqual({ ok: false, kind: 'changed', seq: 600 });
  });

  it('an entry modified by hand (not canonical any more)', async () => {
    const dir = copy();
    const lines = readEntryLines(dir);
    lines[600] = lines[600]!.replace('"seq":600', '"seq": 600');
    writeEntryLines(dir, lines);
    expect(first(await verifyLogDir(dir, withWitness()))).toEqual({ ok: false, kind: 'entry', seq: 600 });
  });

  it('an entry deleted', async () => {
    const dir = copy();
    const lines = readEntryLines(dir);
    lines.splice(300, 1);
    writeEntryLines(dir, lines);
    const r = await verifyLogDir(dir, withWitness());
    show('deleted', r);
    expect(first(r)).toEqual({ ok: false, kind: 'order', seq: 300 });
  });

  it('two entries swapped', async () => {
    const dir = copy();
    const lines = readEntryLines(dir);
    [lines[400], lines[401]] = [lines[401]!, lines[400]!];
    writeEntryLines(dir, lines);
    expect(first(await verifyLogDir(dir, withWitness()))).toEqual({ ok: false, kind: 'order', seq: 400 });
  });

  it('an entry inserted: a copy of an entry', async () => {
    const dir = copy();
    const lines = readEntryLines(dir);
    lines.splice(201, 0, lines[200]!);
    writeEntryLines(dir, lines);
    expect(first(await verifyLogDir(dir, withWitness()))).toEqual({ ok: false, kind: 'order', seq: 201 });
  });

  it('an entry inserted: a forged line, every later entry renumbered (all canonical, all in order)', async () => {
    const dir = copy();
    const lines = readEntryLines(dir);
    const forged = edit(lines[600]!, (e) => ({ ...e, type: 'trust.approved', subject: 'peer-evil', details: {} }));
    const renumbered = [...lines.slice(0, 600), forged, ...lines.slice(600).map((l) => edit(l, (e) => ({ ...e, seq: e.seq + 1 })))];
    writeEntryLines(dir, renumbered);
    const r = await verifyLogDir(dir, withWitness());
    show('forged insert', r);
    expect(first(r)).toEqual({ ok: false, kind: 'changed', seq: 600 });
  });

  it('the log truncated below its last checkpoint (at a line end, and mid-line)', async () => {
    const dir = copy();
    writeEntryLines(dir, readEntryLines(dir).slice(0, 700));
    const r = await verifyLogDir(dir, withWitness());
    show('truncated', r);
    expect(first(r)).toEqual({ ok: false, kind: 'truncated', seq: 700 });
    appendFileSync(auditPath(dir, 'entries'), originalLines[700]!.slice(0, 33));
    expect(first(await verifyLogDir(dir, baseOpts()))).toEqual({ ok: false, kind: 'truncated', seq: 700 });
  });

  it("an entry modified with its leaf hash edited in checkpoints.jsonl: falls back to the checkpoint's range", async () => {
    const dir = copy();
    const lines = readEntryLines(dir);
    lines[600] = edit(lines[600]!, (e) => ({ ...e, subject: 'peer-evil' }));
    writeEntryLines(dir, lines);
    const cpFile = auditPath(dir, 'checkpoints');
    const cps = readFileSync(cpFile, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l) as { note: string; leaves: string });
    const leaves = Buffer.from(cps[2]!.leaves, 'base64'); // the checkpoint at 750 adds entries 500..749
    leafHash(Buffer.from(lines[600]!)).copy(leaves, (600 - 500) * 32);
    cps[2]!.leaves = leaves.toString('base64');
    writeFileSync(cpFile, cps.map((c) => `${JSON.stringify(c)}\n`).join(''));
    const r = await verifyLogDir(dir, withWitness());
    show('entry and leaf edited', r);
    expect(first(r)).toEqual({ ok: false, kind: 'changed', seq: 500 });
    expect(r.problems[0]!.message).toContain('500..749');
    expect(r.checkpointedSize).toBe(500);
  });

  it('an entry of another owner', async () => {
    const dir = copy();
    const lines = readEntryLines(dir);
    lines[300] = edit(lines[300]!, (e) => ({ ...e, agent: 'agent-other' }));
    writeEntryLines(dir, lines);
    expect(first(await verifyLogDir(dir, withWitness()))).toEqual({ ok: false, kind: 'owner', seq: 300 });
  });

  it("another owner's log passed off as this one", async () => {
    const r = await verifyLogDir(clean, { owner: 'agent-other', origin: 'agentvpn.audit/agent-other', keys: [publicKeyOfSeed(randomSeed())] });
    expect(first(r)).toEqual({ ok: false, kind: 'owner', seq: 0 });
    expect(r.problems.filter((p) => p.kind === 'checkpoint').length).toBe(SIZES.length);
  });

  it('a checkpoint signed by another key, or edited after signing', async () => {
    const dir = copy();
    const cpFile = auditPath(dir, 'checkpoints');
    const cps = readFileSync(cpFile, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l) as { note: string; leaves: string });
    const tree = new MerkleTree();
    for (const l of originalLines) tree.append(Buffer.from(l));
    cps[1]!.note = signCheckpoint({ origin: ORIGIN, size: 500, rootHash: tree.root(500), extensions: [] }, [{ name: ORIGIN, key: signingKeyOf(randomSeed()) }]);
    cps[2]!.note = cps[2]!.note.replace('\n750\n', '\n749\n');
    writeFileSync(cpFile, cps.map((c) => `${JSON.stringify(c)}\n`).join(''));
    const r = await verifyLogDir(dir, baseOpts());
    expect(r.ok).toBe(false);
    expect(r.problems.map((p) => [p.kind, p.seq, p.message.slice(0, 18)])).toEqual([
      ['checkpoint', null, 'checkpoint 2 of 4:'],
      ['checkpoint', null, 'checkpoint 3 of 4:'],
    ]);
  });
});

describe('audit verify: a history rewritten by the owner (fork)', () => {
  /** Entry 100 rewritten, every checkpoint re-signed with the owner's key over the new history. */
  function fork(): string {
    const dir = copy();
    const lines = [...originalLines];
    lines[100] = edit(lines[100]!, (e) => ({ ...e, type: 'trust.approved', subject: 'peer-evil' }));
    resign(dir, lines, SIZES);
    return dir;
  }
  const registryLines = async (from: number, to: number) => originalLines.slice(from, to).map((l) => Buffer.from(l));

  it('passes every local check: only a cosigned checkpoint can show it', async () => {
    const dir = fork();
    const r = await verifyLogDir(dir, baseOpts());
    show('fork, no witness', r);
    expect(r).toMatchObject({ ok: true, checkpointedSize: N });
  });

  it("is detected by the registry's cosigned checkpoint kept in the directory", async () => {
    const dir = fork();
    const r = await verifyLogDir(dir, withWitness());
    show('fork, cosigned file', r);
    expect(first(r)).toEqual({ ok: false, kind: 'fork', seq: null });
  });

  it("names the first rewritten entry given the registry's copy", async () => {
    const dir = fork();
    const r = await verifyLogDir(dir, withWitness({ registryLines }));
    show('fork, registry copy', r);
    expect(first(r)).toEqual({ ok: false, kind: 'fork', seq: 100 });
  });

  it('with the cosigned file deleted, is detected by a cosigned checkpoint fetched from the registry', async () => {
    const dir = fork();
    unlinkSync(auditPath(dir, 'cosigned'));
    expect((await verifyLogDir(dir, withWitness())).ok).toBe(true);
    expect(first(await verifyLogDir(dir, withWitness({ cosigned: [cosigned[750]!] })))).toEqual({ ok: false, kind: 'fork', seq: null });
  });

  it('a cosigned file forged by the owner (its own key, the witness name) is refused', async () => {
    const dir = fork();
    const tree = new MerkleTree();
    for (const l of readEntryLines(dir)) tree.append(Buffer.from(l));
    const own = signCheckpoint({ origin: ORIGIN, size: N, rootHash: tree.root(), extensions: [] }, [ownerKey]);
    writeFileSync(auditPath(dir, 'cosigned'), cosign(own, { name: WITNESS, key: ownerKey.key }, 1_796_000_000));
    expect(first(await verifyLogDir(dir, withWitness()))).toEqual({ ok: false, kind: 'witness', seq: null });
  });

  it('both files truncated together (entries and the checkpoints above them): only the witness shows it', async () => {
    const dir = copy();
    resign(dir, originalLines.slice(0, 750), SIZES.slice(0, 3));
    expect((await verifyLogDir(dir, baseOpts())).ok).toBe(true);
    expect(first(await verifyLogDir(dir, withWitness()))).toEqual({ ok: false, kind: 'truncated', seq: 750 });
  });
});

describe('audit verify: limits', () => {
  it('entries after the last checkpoint are vouched for by no signature (limit: a checkpoint at least every 10 s)', async () => {
    const dir = copy();
    const extra = Array.from({ length: 5 }, (_, i) => edit(originalLines[0]!, (e) => ({ ...e, seq: N + i })));
    writeEntryLines(dir, [...originalLines, ...extra]);
    const r = await verifyLogDir(dir, withWitness());
    expect(r).toMatchObject({ ok: true, entries: N + 5, checkpointedSize: N });
  });

  it('an empty directory verifies as an empty log unless a cosigned checkpoint says otherwise', async () => {
    const dir = join(base, 'empty');
    expect(await verifyLogDir(dir, baseOpts())).toMatchObject({ ok: true, entries: 0 });
    expect(first(await verifyLogDir(dir, withWitness({ cosigned: [cosigned[1000]!] })))).toEqual({ ok: false, kind: 'truncated', seq: 0 });
  });

  it('a log of 1000 entries verifies in bounded time (the figure is printed; the bound is loose for a busy machine)', async () => {
    const started = performance.now();
    await verifyLogDir(clean, withWitness());
    const ms = performance.now() - started;
    console.log(`verify: ${N} entries, ${SIZES.length} checkpoints in ${ms.toFixed(0)} ms`);
    expect(ms).toBeLessThan(10_000);
  });
});

