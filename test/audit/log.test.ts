import { execFileSync, spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { createHash } from 'node:crypto';
import { appendFileSync, constants, cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, unlinkSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { openCheckpoint } from '../../src/audit/checkpoint.js';
import { encodeEntry } from '../../src/audit/entry.js';
import { auditPath } from '../../src/audit/files.js';
import { AuditLog, type AuditLogOptions } from '../../src/audit/log.js';
import { verifyLogDir } from '../../src/audit/verify.js';
import { publicKeyOfSeed, randomSeed, signingKeyOf } from '../../src/identity/ed25519.js';

const ROOT = join(import.meta.dirname, '..', '..');
const APPENDER = join(ROOT, 'test', 'fixtures', 'audit-appender.mjs');
const OWNER = 'agent-log-test';
const ORIGIN = `agentvpn.audit/${OWNER}`;
const SEED = randomSeed();
const verifyOpts = { owner: OWNER, origin: ORIGIN, keys: [publicKeyOfSeed(SEED)] };
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const sha16 = (b: Uint8Array) => createHash('sha256').update(b).digest('hex').slice(0, 16);

let base = '';
let dirs = 0;
const opened: AuditLog[] = [];
const newDir = () => join(base, `log${dirs++}`);
async function openLog(dir: string, extra: Partial<AuditLogOptions> = {}): Promise<AuditLog> {
  const log = await AuditLog.open({ dir, owner: OWNER, origin: ORIGIN, signer: { name: ORIGIN, key: signingKeyOf(SEED) }, checkpointEveryMs: 3_600_000, ...extra });
  opened.push(log);
  return log;
}
const entryLines = (dir: string) => readFileSync(auditPath(dir, 'entries')).toString('utf8').split('\n').slice(0, -1);
const checkpointLines = (dir: string) => readFileSync(auditPath(dir, 'checkpoints'), 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l) as { note: string; leaves: string });
async function appendMany(log: AuditLog, n: number) {
  await Promise.all(Array.from({ length: n }, (_, i) => log.append('test.many', 'subject', { i })));
}

beforeAll(() => {
  base = mkdtempSync(join(tmpdir(), 'avn-audit-log-'));
});
afterEach(async () => {
  for (const log of opened.splice(0)) await log.close().catch(() => {});
});
afterAll(() => {
  rmSync(base, { recursive: true, force: true });
});

/** Wraps FileHandle.write and .datasync to see what reached the file, and what was synced, when. */
function openedDsync(fd: number): boolean {
  const flags = /^flags:\s+([0-7]+)/m.exec(readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'))?.[1];
  return flags !== undefined && (parseInt(flags, 8) & constants.O_DSYNC) !== 0;
}

/** Counts each file handle's writes and syncs, and how far its bytes are written and synced. */
async function watchFileHandles() {
  const probe = await open(join(base, 'probe'), 'w');
  const proto = Object.getPrototypeOf(probe) as { write: (...a: unknown[]) => Promise<{ bytesWritten: number }>; datasync: () => Promise<void> };
  await probe.close();
  const realWrite = proto.write;
  const realSync = proto.datasync;
  const state = new Map<object, { written: number; synced: number; writes: number; syncs: number }>();
  const of = (h: object) => state.get(h) ?? state.set(h, { written: 0, synced: 0, writes: 0, syncs: 0 }).get(h)!;
  proto.write = async function (this: object, ...args: unknown[]) {
    const r = await realWrite.apply(this, args);
    const s = of(this);
    s.writes++;
    s.written = Math.max(s.written, (args[3] as number) + r.bytesWritten);
    // A handle opened O_DSYNC (the kernel's flags for its fd) syncs each write before it returns.
    if (openedDsync((this as { fd: number }).fd)) {
      s.syncs++;
      s.synced = s.written;
    }
    return r;
  };
  proto.datasync = async function (this: object) {
    const upTo = of(this).written;
    await realSync.apply(this);
    const s = of(this);
    s.syncs++;
    s.synced = Math.max(s.synced, upTo);
  };
  return { state, restore: () => Object.assign(proto, { write: realWrite, datasync: realSync }) };
}

describe('audit log: durability and batching', () => {
  it('an append resolves only once its line is in the file and synced (fdatasync, or an O_DSYNC write)', async () => {
    const watch = await watchFileHandles();
    try {
      const dir = newDir();
      const log = await openLog(dir);
      const seen: { seq: number; inFile: boolean; syncedUpTo: number }[] = [];
      // The entries file's handle is the one written to (no checkpoint is due for an hour).
      const entriesHandle = () => [...watch.state.values()].find((s) => s.writes > 0);
      const appendOne = (i: number) =>
        log.append('test.durable', 'subject', { i }).then((e) => {
          const lines = entryLines(dir);
          seen.push({ seq: e.seq, inFile: lines[e.seq] === encodeEntry(e).toString('utf8'), syncedUpTo: entriesHandle()?.synced ?? 0 });
        });
      const first = Array.from({ length: 100 }, (_, i) => appendOne(i));
      await sleep(0);
      const second = Array.from({ length: 100 }, (_, i) => appendOne(100 + i));
      await Promise.all([...first, ...second]);
      expect(seen.length).toBe(200);
      const ends = entryLines(dir).reduce<number[]>((acc, l) => [...acc, (acc.at(-1) ?? 0) + Buffer.byteLength(l) + 1], []);
      const late = seen.filter((s) => !s.inFile || s.syncedUpTo < ends[s.seq]!);
      console.log(`log: ${seen.length} appends, ${late.length} acknowledged before their bytes were written and synced`);
      expect(late).toEqual([]);
    } finally {
      watch.restore();
    }
  });

  it('batches concurrent appends: 10,000 appends, far fewer writes and syncs', async () => {
    const watch = await watchFileHandles();
    try {
      const dir = newDir();
      const log = await openLog(dir);
      // 256 appenders, each waiting for its append before the next (as event sources do), 40 each.
      const appenders = 256, each = 40;
      await Promise.all(Array.from({ length: appenders }, async (_, a) => {
        for (let i = 0; i < each; i++) await log.append('test.batch', `a${a}`, { i });
      }));
      const total = appenders * each;
      const entries = [...watch.state.values()].reduce((best, s) => (s.writes > best.writes ? s : best));
      console.log(`log: ${total} appends by ${appenders} appenders in ${entries.writes} writes and ${entries.syncs} syncs (${(total / entries.syncs).toFixed(0)} entries per sync)`);
      expect(log.size).toBe(total);
      expect(entryLines(dir).length).toBe(total);
      expect(entries.syncs).toBeLessThan(total / 20);
      expect(entries.writes).toBeLessThan(total / 20);
    } finally {
      watch.restore();
    }
  });
});

describe('audit log: checkpoints', () => {
  it('writes one at least every checkpointEveryMs while entries arrive, and none when idle', async () => {
    const dir = newDir();
    const every = 100;
    const log = await openLog(dir, { checkpointEveryMs: every });
    const started = Date.now();
    while (Date.now() - started < 1500) {
      await log.append('test.tick', '', {});
      await sleep(10);
    }
    await log.flushed();
    // The tick after the last append checkpoints it (waited for, not timed: the machine may be busy).
    const lastSize = () => openCheckpoint(checkpointLines(dir).at(-1)!.note, [{ name: ORIGIN, publicKey: publicKeyOfSeed(SEED) }]).size;
    for (let waited = 0; lastSize() < log.size && waited < 10_000; waited += every) await sleep(every);
    const busy = checkpointLines(dir);
    await sleep(every * 8);
    const idle = checkpointLines(dir);
    console.log(`log: ${busy.length} checkpoints in 1.5 s of appends (every ${every} ms: ~15 expected), ${idle.length - busy.length} in ${every * 8} ms idle`);
    expect(busy.length).toBeGreaterThanOrEqual(5);
    expect(idle.length).toBe(busy.length);
    const sizes = busy.map((c) => openCheckpoint(c.note, [{ name: ORIGIN, publicKey: publicKeyOfSeed(SEED) }]).size);
    for (let i = 1; i < sizes.length; i++) expect(sizes[i]).toBeGreaterThan(sizes[i - 1]!);
    expect(sizes.at(-1)).toBe(log.size);
  });

  it('close writes a final checkpoint of everything appended', async () => {
    const dir = newDir();
    const log = await openLog(dir);
    await appendMany(log, 37);
    expect(existsSync(auditPath(dir, 'checkpoints')) ? checkpointLines(dir).length : 0).toBe(0);
    await log.close();
    const last = checkpointLines(dir).at(-1)!;
    expect(openCheckpoint(last.note, [{ name: ORIGIN, publicKey: publicKeyOfSeed(SEED) }]).size).toBe(37);
    expect(Buffer.from(last.leaves, 'base64').length).toBe(37 * 32);
    expect((await verifyLogDir(dir, verifyOpts)).ok).toBe(true);
  });
});

describe('audit log: reopen and torn tails', () => {
  async function logOf(n: number) {
    const dir = newDir();
    const log = await openLog(dir);
    await appendMany(log, n);
    await log.close();
    return { dir, bytes: statSync(auditPath(dir, 'entries')).size, root: log.tree.root() };
  }
  /** Valid lines that would come next (seq n.. of this owner), as a crashed writer had them in its last batch. */
  const nextLines = (from: number, count: number) =>
    Buffer.concat(Array.from({ length: count }, (_, i) => Buffer.concat([encodeEntry({ seq: from + i, time: new Date().toISOString(), agent: OWNER, type: 'test.lost', subject: 's', details: { i } }), Buffer.from('\n')])));

  async function reopenExpectingCut(dir: string, size: number, goodBytes: number, debris: number) {
    const log = await openLog(dir);
    console.log(`log: reopened at ${log.size} entries, cut ${log.tornBytesCut} bytes of debris (${debris} written)`);
    expect(log.damage).toBe(null);
    expect(log.size).toBe(size);
    expect(log.tornBytesCut).toBe(debris);
    expect(statSync(auditPath(dir, 'entries')).size).toBe(goodBytes);
    expect((await log.append('test.after', '', {})).seq).toBe(size);
    await log.close();
    const report = await verifyLogDir(dir, verifyOpts);
    expect(report.problems).toEqual([]);
    expect(report.entries).toBe(size + 1);
  }

  it('reopen continues the seq and the tree', async () => {
    const { dir, root } = await logOf(10);
    const log = await openLog(dir);
    expect(log.size).toBe(10);
    expect(log.tree.root().equals(root)).toBe(true);
    expect((await log.append('test.after', '', {})).seq).toBe(10);
    expect(log.read(0, 11).map((l) => l.toString())).toEqual(entryLines(dir));
  });

  it('cuts a partial last line and keeps everything before it', async () => {
    const { dir, bytes } = await logOf(20);
    const partial = nextLines(20, 1).subarray(0, 50);
    appendFileSync(auditPath(dir, 'entries'), partial);
    await reopenExpectingCut(dir, 20, bytes, partial.length);
  });

  it('cuts a tail of NUL bytes (a crash left the write\'s blocks unwritten), after a partial line or on its own', async () => {
    for (const prefix of [0, 30]) {
      const { dir, bytes } = await logOf(20);
      const debris = Buffer.concat([nextLines(20, 1).subarray(0, prefix), Buffer.alloc(4096)]);
      appendFileSync(auditPath(dir, 'entries'), debris);
      await reopenExpectingCut(dir, 20, bytes, debris.length);
    }
  });

  it('cuts NUL blocks followed by lines that did reach the disk (blocks written out of order): none was acknowledged', async () => {
    // The batch after entry 19: its first 700 bytes (lines 20..22 and part of 23) read back as zeros.
    const { dir, bytes } = await logOf(20);
    const batch = nextLines(20, 10);
    batch.fill(0, 0, 700);
    expect(batch.subarray(0, 700).includes(0x0a)).toBe(false);
    appendFileSync(auditPath(dir, 'entries'), batch);
    await reopenExpectingCut(dir, 20, bytes, batch.length);
  });

  it('cuts from a line with NUL bytes inside it even when the lines after it are whole', async () => {
    const { dir, bytes } = await logOf(20);
    const batch = nextLines(20, 10);
    batch.fill(0, 10, 40); // inside line 20; lines 21..29 are intact, in their places
    appendFileSync(auditPath(dir, 'entries'), batch);
    await reopenExpectingCut(dir, 20, bytes, batch.length);
  });

  it('never cuts an entry a checkpoint covers: a NUL there is damage, reported and kept', async () => {
    const { dir, bytes } = await logOf(20);
    const file = auditPath(dir, 'entries');
    const data = readFileSync(file);
    const at = data.indexOf('"seq":12');
    data.fill(0, at, at + 5);
    const fh = await open(file, 'r+');
    await fh.write(data, 0, data.length, 0);
    await fh.close();
    const log = await openLog(dir);
    expect(log.size).toBe(20);
    expect(log.tornBytesCut).toBe(0);
    expect(log.damage).toMatch(/^entry 12/);
    expect(statSync(file).size).toBe(bytes);
    const report = await verifyLogDir(dir, verifyOpts);
    expect(report.problems[0]).toMatchObject({ kind: 'entry', seq: 12 });
  });

  it('checkpoint lines: NUL debris in the last one is cut, a NUL in an earlier one is damage and kept', async () => {
    const { dir } = await logOf(20);
    const cps = auditPath(dir, 'checkpoints');
    const log = await openLog(dir);
    await appendMany(log, 5);
    await log.close(); // a second checkpoint line, at 25
    const whole = readFileSync(cps);
    const secondAt = whole.indexOf('\n') + 1;
    // The second line's first block never reached the disk: cut, the log goes on from the first checkpoint.
    const debris = Buffer.from(whole);
    debris.fill(0, secondAt, secondAt + 100);
    const damaged = Buffer.from(whole);
    damaged.fill(0, 10, 20); // inside the first line
    for (const [what, bytes, expectedSize] of [['last line', debris, secondAt], ['first line', damaged, whole.length]] as const) {
      const fh = await open(cps, 'w');
      await fh.write(bytes, 0, bytes.length, 0);
      await fh.close();
      const again = await openLog(dir);
      expect(statSync(cps).size, what).toBe(expectedSize);
      expect(again.size).toBe(25);
      await again.close();
    }
  });

  it('cuts a torn last checkpoint line and keeps the log verifiable', async () => {
    const { dir } = await logOf(20);
    const cps = auditPath(dir, 'checkpoints');
    const whole = statSync(cps).size;
    appendFileSync(cps, '{"note":"agentvpn.audit/x\\n20\\n');
    const log = await openLog(dir);
    expect(log.size).toBe(20);
    await log.append('test.after', '', {});
    await log.close();
    expect(statSync(cps).size).toBeGreaterThan(whole);
    expect((await verifyLogDir(dir, verifyOpts)).problems).toEqual([]);
  });
});

// ---------------------------------------------------------------------------------------------
// A real process appending at full rate, killed, and a real file system running out of space.

/** The compiled log is what the child runs: rebuild when a source of it is newer (tsc emits despite others' type errors). */
function ensureBuilt() {
  const srcDir = join(ROOT, 'src', 'audit');
  const stale = readdirSync(srcDir).filter((f) => f.endsWith('.ts')).some((f) => {
    const js = join(ROOT, 'dist', 'audit', f.replace(/\.ts$/, '.js'));
    return !existsSync(js) || statSync(js).mtimeMs < statSync(join(srcDir, f)).mtimeMs;
  });
  if (stale) {
    try {
      execFileSync(process.execPath, [join(ROOT, 'node_modules/typescript/bin/tsc'), '-p', ROOT], { stdio: 'ignore' });
    } catch {
      // type errors elsewhere in the tree: tsc still emitted dist/
    }
  }
}

interface Child {
  proc: ChildProcessWithoutNullStreams;
  acks: Map<number, string>;
  lines: string[];
  ackTimes: number[];
  exited: Promise<void>;
  waitFor: (pred: (line: string) => boolean, ms: number) => Promise<string>;
  send: (cmd: string) => void;
}

function startAppender(dir: string, extraEnv: Record<string, string>, wrap: string[] = []): Child {
  const argv = [...wrap, process.execPath, APPENDER];
  const proc = spawn(argv[0]!, argv.slice(1), {
    env: { ...process.env, AUDIT_DIR: dir, AUDIT_SEED: Buffer.from(SEED).toString('hex'), AUDIT_OWNER: OWNER, ...extraEnv },
    stdio: ['pipe', 'pipe', 'pipe'],
  }) as ChildProcessWithoutNullStreams;
  const acks = new Map<number, string>();
  const lines: string[] = [];
  const ackTimes: number[] = [];
  let pending = '';
  let stderr = '';
  const waiters: { pred: (l: string) => boolean; resolve: (l: string) => void }[] = [];
  proc.stdout.on('data', (d: Buffer) => {
    pending += d.toString('utf8');
    const parts = pending.split('\n');
    pending = parts.pop()!;
    for (const line of parts) {
      lines.push(line);
      if (line.startsWith('ack ')) {
        const [, seq, hash] = line.split(' ');
        acks.set(Number(seq), hash!);
        ackTimes.push(Date.now());
      }
      for (const w of waiters.splice(0)) (w.pred(line) ? w.resolve(line) : waiters.push(w));
    }
  });
  proc.stderr.on('data', (d) => (stderr += d));
  const exited = new Promise<void>((resolve) => proc.on('close', () => resolve()));
  const waitFor = (pred: (line: string) => boolean, ms: number) =>
    new Promise<string>((resolve, reject) => {
      const found = lines.find(pred);
      if (found) return resolve(found);
      const timer = setTimeout(() => reject(new Error(`child: no matching line in ${ms} ms; last lines: ${lines.slice(-3).join(' | ')}; stderr: ${stderr.slice(-500)}`)), ms);
      waiters.push({ pred, resolve: (l) => (clearTimeout(timer), resolve(l)) });
    });
  return { proc, acks, lines, ackTimes, exited, waitFor, send: (cmd) => proc.stdin.write(`${cmd}\n`) };
}

describe('audit log: a real process', () => {
  const children: Child[] = [];
  beforeAll(() => ensureBuilt(), 120_000);
  afterEach(async () => {
    for (const c of children.splice(0)) {
      if (c.proc.exitCode === null && c.proc.signalCode === null) c.proc.kill('SIGKILL');
      await c.exited;
    }
  });

  it('kill -9 at full rate, 10 times on the same directory: every acknowledged entry survives and the log verifies', async () => {
    const dir = newDir();
    let expectedAtLeast = 0;
    const acked = new Map<number, string>();
    const figures: string[] = [];
    for (let round = 0; round < 10; round++) {
      const child = startAppender(dir, { AUDIT_WINDOW: '256', AUDIT_CHECKPOINT_MS: '50' });
      children.push(child);
      const openLine = await child.waitFor((l) => l.startsWith('open '), 15_000);
      expect(Number(openLine.split(' ')[1])).toBe(expectedAtLeast);
      await child.waitFor((l) => l.startsWith('ack ') && child.acks.size >= 300, 15_000);
      await sleep(Math.random() * 300);
      child.proc.kill('SIGKILL');
      await child.exited;
      for (const [seq, hash] of child.acks) acked.set(seq, hash);

      const log = await openLog(dir);
      const lines = log.read(0);
      const missing = [...child.acks].filter(([seq, hash]) => seq >= lines.length || sha16(lines[seq]!) !== hash);
      const maxAck = Math.max(...child.acks.keys());
      figures.push(`${child.acks.size} acked, size ${log.size} (+${log.size - 1 - maxAck} unacked), cut ${log.tornBytesCut} B`);
      expect(missing.length, `round ${round}: first missing ${missing.slice(0, 3).map(([seq]) => seq).join(', ')}`).toBe(0);
      expect(log.damage).toBe(null);
      expect(log.size).toBeGreaterThan(expectedAtLeast);
      expectedAtLeast = log.size;
      await log.close();
      opened.splice(opened.indexOf(log), 1);
      const report = await verifyLogDir(dir, verifyOpts);
      expect(report.problems).toEqual([]);
      expect(report.checkpointedSize).toBe(log.size);
    }
    console.log(`log: kill -9 x10:\n  ${figures.join('\n  ')}`);
    // Every entry acknowledged in any round is still there, unchanged, after all ten crashes.
    const final = entryLines(dir);
    expect([...acked].filter(([seq, hash]) => sha16(Buffer.from(final[seq] ?? '')) !== hash).length).toBe(0);
    expect(acked.size).toBeGreaterThan(3000);
  }, 120_000);

  it('disk full: appends wait (neither lost nor acknowledged), resume when space is freed, and the log verifies', async (ctx) => {
    if (process.getuid?.() !== 0) {
      if (process.env.CI) throw new Error('the disk-full test needs root (unshare -m, mount -t tmpfs)');
      ctx.skip();
    }
    // A private mount namespace holds a 4 MiB tmpfs on the directory: it vanishes with the child and
    // never shows on the host. The parent reads it through /proc/<child pid>/root.
    const mountPoint = newDir();
    mkdirSync(mountPoint);
    const child = startAppender(join(mountPoint, 'audit'), {
      AUDIT_WINDOW: '64', AUDIT_CHECKPOINT_MS: '100', AUDIT_FILL_AFTER: '500', AUDIT_FILLER: join(mountPoint, 'filler'),
    }, ['unshare', '-m', '--propagation', 'private', 'sh', '-c', `mount -t tmpfs -o size=4m,mode=0700 avn-audit-full "${mountPoint}" && exec "$@"`, 'sh']);
    children.push(child);
    await child.waitFor((l) => l.startsWith('filled '), 15_000);
    await child.waitFor((l) => l.startsWith('error '), 10_000);
    const inChild = (p: string) => join(`/proc/${child.proc.pid}/root`, p);
    await sleep(300);
    const acksWhenFull = child.acks.size;
    await sleep(1500);
    const acksLater = child.acks.size;
    child.send('status');
    const full = JSON.parse((await child.waitFor((l) => l.startsWith('status '), 5000)).slice(7)) as { size: number; pending: number; dropped: number; writeErrors: number };
    console.log(`log: disk full after ${acksWhenFull} acks; ${acksLater - acksWhenFull} acks in the next 1.5 s; pending ${full.pending}, dropped ${full.dropped}, write errors ${full.writeErrors}`);
    expect(acksLater).toBe(acksWhenFull);
    expect(full.pending).toBeGreaterThan(0);
    expect(full.dropped).toBe(0);
    expect(full.size).toBe(acksLater);

    // A crash while the disk is full: the directory as a stopped process leaves it, recovered elsewhere.
    process.kill(child.proc.pid!, 'SIGSTOP');
    const crashCopy = newDir();
    cpSync(inChild(join(mountPoint, 'audit')), crashCopy, { recursive: true });
    const ackedAtCrash = new Map(child.acks);
    process.kill(child.proc.pid!, 'SIGCONT');
    rmSync(join(crashCopy, 'lock'), { force: true });
    const recovered = await openLog(crashCopy);
    const lostAtCrash = [...ackedAtCrash].filter(([seq, hash]) => seq >= recovered.size || sha16(recovered.read(seq, seq + 1)[0]!) !== hash);
    console.log(`log: crash while full: recovered ${recovered.size} entries (${ackedAtCrash.size} acked), cut ${recovered.tornBytesCut} B, ${lostAtCrash.length} acknowledged lost`);
    expect(lostAtCrash.length).toBe(0);
    expect(recovered.damage).toBe(null);
    await recovered.close();
    expect((await verifyLogDir(crashCopy, verifyOpts)).problems).toEqual([]);

    // Space comes back (an operator deletes a file): the waiting entries go out in order.
    unlinkSync(inChild(join(mountPoint, 'filler')));
    await child.waitFor(() => child.acks.size >= acksLater + 500, 15_000);
    child.send('stop');
    const closed = Number((await child.waitFor((l) => l.startsWith('closed '), 15_000)).split(' ')[1]);
    const auditDir = inChild(join(mountPoint, 'audit'));
    const lines = entryLines(auditDir);
    const bad = [...child.acks].filter(([seq, hash]) => sha16(Buffer.from(lines[seq] ?? '')) !== hash);
    console.log(`log: after freeing space: ${child.acks.size} acked, ${closed} in the log, ${bad.length} acknowledged entries missing or changed`);
    expect(bad.length, `first: ${bad.slice(0, 3).map(([seq]) => `${seq}: ${(lines[seq] ?? '(none)').slice(0, 60)}`).join(' | ')}`).toBe(0);
    expect(child.acks.size).toBe(closed);
    expect(lines.length).toBe(closed);
    const report = await verifyLogDir(auditDir, verifyOpts);
    expect(report.problems).toEqual([]);
    expect(report.checkpointedSize).toBe(closed);
    child.send('exit');
    await child.exited;
  }, 60_000);
});
