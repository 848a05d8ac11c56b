import { closeSync, constants, existsSync, fsyncSync, mkdirSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { open, type FileHandle } from 'node:fs/promises';
import { AgentVpnError } from '../errors.js';
import { signCheckpoint, type NoteSigner } from './checkpoint.js';
import { encodeEntry, parseEntry, type AuditEntry, type JsonValue } from './entry.js';
import { auditPath, cutDebris, cutTornTail, readLines, readRange } from './files.js';
import { MerkleTree } from './merkle.js';

/**
 * An append-only audit log in a directory (files.ts has the layout). append() resolves only once
 * the entry is on disk: entries that arrive while a write is under way go out together in the next
 * write, synchronous (O_DSYNC) for the batch, so durability costs one sync per batch, not per entry.
 * A signed checkpoint is written at least every `checkpointEveryMs` while there are new entries.
 *
 * A failed write (disk full, I/O error) is retried with backoff from the last durable byte: the
 * waiting entries keep their places and nothing acknowledged is lost; only when `maxPending`
 * entries wait is a new one refused (counted in `dropped`).
 */

export interface AuditLogOptions {
  dir: string;
  /** The entries' `agent` field: the agent ID, or the registry's log name. */
  owner: string;
  /** The checkpoints' origin line, also the signing key's name. */
  origin: string;
  signer: NoteSigner;
  /** C2SP checkpoint interval; the issue asks for at least every 10 s. */
  checkpointEveryMs?: number;
  /** Wall clock for entry times (tests). */
  now?: () => number;
  /** Entries allowed to wait for a disk that fails; past it appends are refused. */
  maxPending?: number;
  /** Told about write failures and retries (the daemon logs them). */
  onWriteError?: (error: Error) => void;
}

export interface AuditLogStatus {
  /** Entries on disk. */
  size: number;
  pending: number;
  checkpointSize: number;
  dropped: number;
  writeErrors: number;
  /** What opening the log found wrong (a cut torn tail is not wrong), or null. */
  damage: string | null;
  tornBytesCut: number;
}

interface Waiting {
  entry: AuditEntry;
  line: Buffer;
  resolve: (e: AuditEntry) => void;
  reject: (e: Error) => void;
}

const DEFAULT_CHECKPOINT_EVERY_MS = 10_000;
/** ~100k entries of a few hundred bytes: tens of MB held while a disk is failing, then refused. */
const DEFAULT_MAX_PENDING = 100_000;
const RETRY_MIN_MS = 100;
/** How long close() waits for a failing disk before it gives up on what still waits. */
const CLOSE_WAIT_MS = 5_000;
const RETRY_MAX_MS = 5_000;
const NEWLINE = Buffer.from('\n');

export class AuditLog {
  /** Every entry's leaf, durable or waiting (waiting ones are written in this order). */
  readonly tree = new MerkleTree();
  /** Byte offset of each entry's line; offsets[size] is where the next one goes. */
  private readonly offsets: number[] = [0];
  private readonly waiting: Waiting[] = [];
  private durable = 0;
  private checkpointed = 0;
  private lastNote: string | null = null;
  private checkpointsLength: number;
  private flushing: Promise<void> | null = null;
  private checkpointing: Promise<string | null> = Promise.resolve(null);
  private timer: NodeJS.Timeout | null = null;
  private closed = false;
  private dropped = 0;
  private writeErrors = 0;
  private signer: NoteSigner;
  private readonly now: () => number;
  private readonly maxPending: number;
  /** What opening found wrong with the entries (verify.ts tells the whole story), or null. */
  readonly damage: string | null;
  /** Bytes of a torn last line cut at open (a crash mid-write; never an acknowledged entry). */
  readonly tornBytesCut: number;

  private constructor(
    private readonly opts: AuditLogOptions,
    private readonly entriesFile: FileHandle,
    private readonly checkpointsFile: FileHandle,
    recovered: { lines: Buffer[]; checkpoints: { size: number; note: string } | null; checkpointsLength: number; damage: string | null; tornBytesCut: number },
  ) {
    this.signer = opts.signer;
    this.now = opts.now ?? Date.now;
    this.maxPending = opts.maxPending ?? DEFAULT_MAX_PENDING;
    for (const line of recovered.lines) {
      this.tree.append(line);
      this.offsets.push(this.offsets[this.offsets.length - 1]! + line.length + 1);
    }
    this.durable = recovered.lines.length;
    // A log cut below its last checkpoint: the next checkpoint's leaves start at what is there.
    this.checkpointed = Math.min(recovered.checkpoints?.size ?? 0, this.durable);
    this.lastNote = recovered.checkpoints?.note ?? null;
    this.checkpointsLength = recovered.checkpointsLength;
    this.damage = recovered.damage;
    this.tornBytesCut = recovered.tornBytesCut;
  }

  /** Opens (creating) the log in `dir`: a torn last line is cut, the tree rebuilt from the entries. */
  static async open(opts: AuditLogOptions): Promise<AuditLog> {
    mkdirSync(opts.dir, { recursive: true, mode: 0o700 });
    takeLock(opts.dir);
    try {
      return await AuditLog.recover(opts);
    } catch (e) {
      rmSync(lockPath(opts.dir), { force: true });
      throw e;
    }
  }

  private static async recover(opts: AuditLogOptions): Promise<AuditLog> {
    const entriesPath = auditPath(opts.dir, 'entries');
    const checkpointsPath = auditPath(opts.dir, 'checkpoints');
    createDurably(opts.dir, [entriesPath, checkpointsPath]);
    // Each checkpoint line is one write, synced before the next: only the last can be debris.
    const cpsRead = readLines(checkpointsPath);
    const cps = cutDebris(cpsRead, Math.max(0, cpsRead.lines.length - 1));
    if (cps.tornBytes > 0) cutTornTail(checkpointsPath, cps.goodLength);
    const last = cps.lines.length > 0 ? lastCheckpoint(cps.lines[cps.lines.length - 1]!) : null;
    const entries = cutDebris(readLines(entriesPath), last?.size ?? 0);
    if (entries.tornBytes > 0) cutTornTail(entriesPath, entries.goodLength);
    const damage = findDamage(entries.lines, opts.owner) ?? (last && last.size > entries.lines.length
      ? `the last checkpoint covers ${last.size} entries but the log holds ${entries.lines.length}` : null);
    // O_DSYNC: a write returns once its data is on disk, so a batch is one trip to the thread
    // pool, not a write and then an fdatasync (each trip waits for a turn of a busy event loop).
    const entriesFile = await open(entriesPath, constants.O_RDWR | constants.O_DSYNC);
    const checkpointsFile = await open(checkpointsPath, 'r+');
    const log = new AuditLog(opts, entriesFile, checkpointsFile, {
      lines: entries.lines, checkpoints: last, checkpointsLength: cps.goodLength, damage, tornBytesCut: entries.tornBytes,
    });
    log.timer = setInterval(() => void log.checkpointIfNew(), opts.checkpointEveryMs ?? DEFAULT_CHECKPOINT_EVERY_MS);
    log.timer.unref();
    return log;
  }

  /** Entries on disk (acknowledged). */
  get size(): number {
    return this.durable;
  }

  /** The newest checkpoint note written, or null. */
  get latestCheckpoint(): string | null {
    return this.lastNote;
  }


  status(): AuditLogStatus {
    return {
      size: this.durable, pending: this.waiting.length, checkpointSize: this.checkpointed, dropped: this.dropped,
      writeErrors: this.writeErrors, damage: this.damage, tornBytesCut: this.tornBytesCut,
    };
  }

  /** After a key rotation: later checkpoints are signed with the new key. */
  setSigner(signer: NoteSigner): void {
    this.signer = signer;
  }

  /** Appends an entry; resolves with it once it is on disk. */
  append(type: string, subject: string, details: { [key: string]: JsonValue } = {}): Promise<AuditEntry> {
    if (this.closed) return Promise.reject(new AgentVpnError('AUDIT_CLOSED', 'the audit log is closed', 'the daemon is shutting down; the event was not logged'));
    if (this.waiting.length >= this.maxPending) {
      this.dropped++;
      return Promise.reject(new AgentVpnError('AUDIT_BACKLOG', `${this.waiting.length} audit entries wait for the disk`, 'the audit log cannot write: check the disk (space, errors) under the state directory'));
    }
    const entry: AuditEntry = { seq: this.tree.size, time: new Date(this.now()).toISOString(), agent: this.opts.owner, type, subject, details };
    const line = encodeEntry(entry);
    this.tree.append(line);
    this.offsets.push(this.offsets[this.offsets.length - 1]! + line.length + 1);
    return new Promise((resolve, reject) => {
      this.waiting.push({ entry, line, resolve, reject });
      this.flushing ??= this.flush();
    });
  }

  /** The durable entries' lines [from, to). */
  read(from: number, to: number = this.durable): Buffer[] {
    if (!Number.isSafeInteger(from) || from < 0 || to > this.durable || from > to) {
      throw new AgentVpnError('AUDIT_RANGE', `entries ${from}..${to} are not in the log (it holds ${this.durable})`, `ask for entries below ${this.durable}`);
    }
    if (from === to) return [];
    const bytes = readRange(auditPath(this.opts.dir, 'entries'), this.offsets[from]!, this.offsets[to]!);
    const lines: Buffer[] = [];
    for (let i = from, at = 0; i < to; i++) {
      const len = this.offsets[i + 1]! - this.offsets[i]! - 1;
      lines.push(bytes.subarray(at, at + len));
      at += len + 1;
    }
    return lines;
  }

  /** Writes a checkpoint of the durable entries unless the newest one already covers them; returns the newest note. */
  checkpoint(): Promise<string | null> {
    this.checkpointing = this.checkpointing.then(() => this.writeCheckpoint(), () => this.writeCheckpoint());
    return this.checkpointing;
  }

  /** A signed checkpoint of the first `size` durable entries, not written to the log (what the shipper sends the witness). */
  signCheckpointAt(size: number): string {
    if (!Number.isSafeInteger(size) || size < 0 || size > this.durable) throw new AgentVpnError('AUDIT_RANGE', `no checkpoint of ${size} entries: ${this.durable} are on disk`, `ask for a size up to ${this.durable}`);
    return signCheckpoint({ origin: this.opts.origin, size, rootHash: this.tree.root(size), extensions: [] }, [this.signer]);
  }

  /** Waits for every entry appended so far to be on disk. */
  async flushed(): Promise<void> {
    while (this.flushing) await this.flushing;
  }

  /** Writes what waits, a last checkpoint, and closes the files. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.timer) clearInterval(this.timer);
    // A disk that stays full must not hang the shutdown: what still waits then is lost, and said so.
    const drained = await Promise.race([this.flushed().then(() => true), new Promise<false>((r) => setTimeout(() => r(false), CLOSE_WAIT_MS).unref())]);
    if (!drained) {
      this.opts.onWriteError?.(new Error(`closing with ${this.waiting.length} audit entries not written (the disk does not take them)`));
      return;
    }
    await this.checkpoint().catch((e) => this.opts.onWriteError?.(e as Error));
    await this.entriesFile.close();
    await this.checkpointsFile.close();
    rmSync(lockPath(this.opts.dir), { force: true });
  }

  private async checkpointIfNew(): Promise<void> {
    if (this.durable > this.checkpointed) await this.checkpoint().catch((e) => this.opts.onWriteError?.(e as Error));
  }

  private async writeCheckpoint(): Promise<string | null> {
    const size = this.durable;
    if (size === this.checkpointed && this.lastNote !== null) return this.lastNote;
    const note = this.signCheckpointAt(size);
    const leaves: Buffer[] = [];
    for (let i = this.checkpointed; i < size; i++) leaves.push(this.tree.leafHashAt(i));
    const line = Buffer.from(`${JSON.stringify({ note, leaves: Buffer.concat(leaves).toString('base64') })}\n`);
    await writeFully(this.checkpointsFile, line, this.checkpointsLength);
    await this.checkpointsFile.datasync();
    this.checkpointsLength += line.length;
    this.checkpointed = size;
    this.lastNote = note;
    return note;
  }

  /** Writes waiting entries in batches until none wait; retries a failed write from the last durable byte. */
  private async flush(): Promise<void> {
    let delay = RETRY_MIN_MS;
    while (this.waiting.length > 0) {
      const batch = this.waiting.slice();
      const buf = Buffer.concat(batch.flatMap((w) => [w.line, NEWLINE]));
      try {
        await writeFully(this.entriesFile, buf, this.offsets[this.durable]!); // durable on return (O_DSYNC)
      } catch (e) {
        this.writeErrors++;
        this.opts.onWriteError?.(e as Error);
        await new Promise((r) => setTimeout(r, delay));
        delay = Math.min(delay * 2, RETRY_MAX_MS);
        continue;
      }
      delay = RETRY_MIN_MS;
      this.waiting.splice(0, batch.length);
      this.durable += batch.length;
      for (const w of batch) w.resolve(w.entry);
    }
    this.flushing = null;
  }
}

const lockPath = (dir: string) => join(dir, 'lock');

/**
 * One writer per log: two daemons appending to the same files would interleave their entries.
 * The lock file holds the writer's PID; a dead writer's lock (kill -9, a crash) is taken over.
 */
function takeLock(dir: string): void {
  const file = lockPath(dir);
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      writeFileSync(file, `${process.pid}\n`, { flag: 'wx', mode: 0o600 });
      return;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
    }
    const pid = Number(readFileSync(file, 'utf8').trim());
    if (pid === process.pid || !isAlive(pid)) {
      rmSync(file, { force: true });
      continue;
    }
    throw new AgentVpnError('AUDIT_LOCKED', `another process (pid ${pid}) writes the audit log in ${dir}`, 'give each daemon its own --state-dir (or stop the other one)');
  }
  throw new AgentVpnError('AUDIT_LOCKED', `cannot take the lock of the audit log in ${dir}`, 'another daemon is starting with the same --state-dir: give each its own');
}

function isAlive(pid: number): boolean {
  if (!Number.isSafeInteger(pid) || pid <= 0) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * Writes all of `buf` at `position`. One write may write less than asked (a disk filling up
 * writes what fits and fails only on the next call): acknowledging after a short write would
 * lose entries, and the next batch would land past a hole.
 */
async function writeFully(file: FileHandle, buf: Buffer, position: number): Promise<void> {
  for (let done = 0; done < buf.length; ) {
    const { bytesWritten } = await file.write(buf, done, buf.length - done, position + done);
    if (bytesWritten === 0) throw new AgentVpnError('AUDIT_WRITE', 'the audit log could not write (0 bytes written)', 'check the disk under the state directory (space, errors)');
    done += bytesWritten;
  }
}

/** Creates missing files and makes their names durable (an fsync of the directory). */
function createDurably(dir: string, paths: string[]): void {
  const missing = paths.filter((p) => !existsSync(p));
  if (missing.length === 0) return;
  for (const p of missing) closeSync(openSync(p, 'a', 0o600));
  const fd = openSync(dir, 'r');
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

function lastCheckpoint(line: Buffer): { size: number; note: string } | null {
  try {
    const { note } = JSON.parse(line.toString('utf8')) as { note: string };
    const size = Number(note.split('\n')[1]);
    return Number.isSafeInteger(size) ? { size, note } : null;
  } catch {
    return null;
  }
}

/** The first thing wrong with the entries found at open (verify.ts reports it in full), or null. */
function findDamage(lines: Buffer[], owner: string): string | null {
  for (let i = 0; i < lines.length; i++) {
    let entry: AuditEntry;
    try {
      entry = parseEntry(lines[i]!);
    } catch (e) {
      return `entry ${i}: ${(e as Error).message}`;
    }
    if (entry.seq !== i) return `entry ${i} has seq ${entry.seq}`;
    if (entry.agent !== owner) return `entry ${i} belongs to ${entry.agent.slice(0, 80)}`;
  }
  return null;
}
