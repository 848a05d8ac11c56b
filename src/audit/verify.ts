import { existsSync, readFileSync } from 'node:fs';
import { openCheckpoint, parseCheckpoint, parseNote, type NoteVerifier } from './checkpoint.js';
import { openCosigned } from './cosignature.js';
import { parseEntry } from './entry.js';
import { auditPath, cutDebris, readLines, type LinesRead } from './files.js';
import { MerkleTree } from './merkle.js';

/**
 * Verifies an audit log directory on its own (no daemon, no network): every entry is canonical
 * and in its place, every checkpoint is signed by the owner and matches the entries, and the
 * cosigned checkpoints the registry returned are consistent with them. What each check proves
 * (and cannot) is in docs/audit.md. Problems are reported with the entry they concern; the
 * first is the one to look at.
 */

export interface VerifyOptions {
  /** The entries' `agent` field. */
  owner: string;
  /** The checkpoints' origin and key name. */
  origin: string;
  /** Keys that may have signed checkpoints (an agent's key chain). */
  keys: readonly Uint8Array[];
  /** The registry's witness; without it cosigned checkpoints are not checked. */
  witness?: NoteVerifier | null;
  /** Cosigned checkpoints to check besides the directory's own `cosigned` (e.g. fetched from the registry now). */
  cosigned?: readonly string[];
  /** How many entries the registry says it holds now: less than it once cosigned means it lost or hides some. */
  registrySize?: number;
  /** The registry's copy of entries [from, to), to name the first entry that differs from it. */
  registryLines?: (from: number, to: number) => Promise<Buffer[]>;
}

export type ProblemKind = 'entry' | 'order' | 'owner' | 'checkpoint' | 'changed' | 'truncated' | 'fork' | 'witness';

export interface VerifyProblem {
  kind: ProblemKind;
  /** The entry it concerns, when one can be named. */
  seq: number | null;
  message: string;
}

export interface VerifyReport {
  ok: boolean;
  entries: number;
  checkpoints: number;
  /** Entries covered by the newest good checkpoint. */
  checkpointedSize: number;
  /** The largest size the registry cosigned (and that matched), or null. */
  witnessedSize: number | null;
  /** Bytes of a torn last line (a crash mid-write; the daemon cuts it at start). */
  tornBytes: number;
  /** Sorted by entry (problems that name none last); the first is the first bad entry. */
  problems: VerifyProblem[];
}

/** Keeps a report readable when everything after an edit is wrong too. */
const MAX_PROBLEMS = 50;

/**
 * The entry lines of a log directory as the log itself sees them: crash debris (zeros of an
 * unfinished write) above the largest checkpointed size is a torn tail, as the log cuts it when it
 * opens. For readers of a directory no daemon has reopened yet (verify, `audit export`).
 */
export function readEntryLines(dir: string, checkpoints = readCheckpointLines(dir)): LinesRead {
  return cutDebris(readLines(auditPath(dir, 'entries')), checkpoints.reduce((max, c) => Math.max(max, claimedSize(c.note)), 0));
}

export async function verifyLogDir(dir: string, opts: VerifyOptions): Promise<VerifyReport> {
  const problems: VerifyProblem[] = [];
  const add = (kind: ProblemKind, seq: number | null, message: string) => {
    // One edit shows in every later checkpoint: report each entry's problem once.
    if (seq !== null && problems.some((p) => p.kind === kind && p.seq === seq)) return;
    if (problems.length < MAX_PROBLEMS) problems.push({ kind, seq, message });
  };
  const checkpoints = readCheckpointLines(dir);
  const { lines, tornBytes } = readEntryLines(dir, checkpoints);
  checkEntries(lines, opts.owner, add);
  const tree = new MerkleTree();
  for (const line of lines) tree.append(line);

  const verifiers = opts.keys.map((publicKey) => ({ name: opts.origin, publicKey }));
  const signedLeaves = new MerkleTree();
  let checkpointedSize = 0;
  let trustedLeaves = true;
  for (const [k, { note, leaves }] of checkpoints.entries()) {
    const label = `checkpoint ${k + 1} of ${checkpoints.length}`;
    let cp;
    try {
      cp = openCheckpoint(note, verifiers);
    } catch (e) {
      add('checkpoint', null, `${label}: ${(e as Error).message}`);
      trustedLeaves = false;
      continue;
    }
    if (cp.origin !== opts.origin) {
      add('checkpoint', null, `${label} is for log ${cp.origin.slice(0, 100)}, not ${opts.origin}`);
      continue;
    }
    // The leaf hashes this line adds; they are believed only while they hash to signed roots.
    const added = leaves && leaves.length === 32 * (cp.size - signedLeaves.size) ? leaves : null;
    if (trustedLeaves && added) for (let i = 0; i < added.length; i += 32) signedLeaves.appendLeafHash(added.subarray(i, i + 32));
    trustedLeaves &&= added !== null && signedLeaves.root().equals(cp.rootHash);
    if (cp.size > lines.length) {
      add('truncated', lines.length, `${label} covers ${cp.size} entries but the log holds ${lines.length}: entries ${lines.length}..${cp.size - 1} were removed`);
      continue;
    }
    if (tree.root(cp.size).equals(cp.rootHash)) {
      checkpointedSize = Math.max(checkpointedSize, cp.size);
      continue;
    }
    const changed = trustedLeaves ? firstDifference(tree, signedLeaves, cp.size) : null;
    if (changed !== null) add('changed', changed, `entry ${changed} is not the entry ${label} signed: it was changed after it was logged`);
    else add('changed', checkpointedSize, `entries ${checkpointedSize}..${cp.size - 1} do not match ${label}: one of them was changed after it was logged`);
  }

  const witnessedSize = await checkWitness(dir, opts, tree, lines, verifiers, add);
  problems.sort((a, b) => (a.seq ?? Infinity) - (b.seq ?? Infinity));
  return { ok: problems.length === 0, entries: lines.length, checkpoints: checkpoints.length, checkpointedSize, witnessedSize, tornBytes, problems };
}

type Add = (kind: ProblemKind, seq: number | null, message: string) => void;

/** Each line must be a canonical entry of this owner with seq = its line number. */
function checkEntries(lines: Buffer[], owner: string, add: Add): void {
  let reported = 0;
  for (let i = 0; i < lines.length && reported < 5; i++) {
    let entry;
    try {
      entry = parseEntry(lines[i]!);
    } catch (e) {
      add('entry', i, `entry ${i}: ${(e as Error).message}`);
      reported++;
      continue;
    }
    if (entry.seq !== i) {
      add('order', i, entry.seq > i
        ? `line ${i} holds entry ${entry.seq}: entries ${i}..${entry.seq - 1} were deleted, or entries were reordered`
        : `line ${i} holds entry ${entry.seq} again: an entry was inserted, duplicated or moved`);
      reported++;
    } else if (entry.agent !== owner) {
      add('owner', i, `entry ${i} belongs to ${entry.agent.slice(0, 80)}, not ${owner}`);
      reported++;
    }
  }
}

/** The first leaf below `size` where the entries' tree and the signed leaf hashes differ. */
function firstDifference(tree: MerkleTree, signed: MerkleTree, size: number): number | null {
  for (let i = 0; i < size; i++) if (!tree.leafHashAt(i).equals(signed.leafHashAt(i))) return i;
  return null;
}

/** The size a checkpoint line claims, unverified (0 if unreadable): entries below it are never taken for debris. */
function claimedSize(note: string): number {
  try {
    return parseCheckpoint(parseNote(note).text).size;
  } catch {
    return 0;
  }
}

function readCheckpointLines(dir: string): { note: string; leaves: Buffer | null }[] {
  // As the log does at open: only the last line can be crash debris (one synced write per line).
  const read = readLines(auditPath(dir, 'checkpoints'));
  return cutDebris(read, Math.max(0, read.lines.length - 1)).lines.map((line) => {
    try {
      const v = JSON.parse(line.toString('utf8')) as { note?: unknown; leaves?: unknown };
      return { note: typeof v.note === 'string' ? v.note : '', leaves: typeof v.leaves === 'string' ? Buffer.from(v.leaves, 'base64') : null };
    } catch {
      return { note: '', leaves: null };
    }
  });
}

/** Checks the registry's cosigned checkpoints against the entries; returns the largest good witnessed size. */
async function checkWitness(dir: string, opts: VerifyOptions, tree: MerkleTree, lines: Buffer[], verifiers: NoteVerifier[], add: Add): Promise<number | null> {
  const size = lines.length;
  if (!opts.witness) return null;
  const file = auditPath(dir, 'cosigned');
  const notes = [...(existsSync(file) ? [readFileSync(file, 'utf8')] : []), ...(opts.cosigned ?? [])];
  let witnessed: number | null = null;
  for (const note of notes) {
    let cp;
    try {
      cp = openCosigned(note, opts.witness);
      openCheckpoint(note, verifiers);
    } catch (e) {
      add('witness', null, `a cosigned checkpoint: ${(e as Error).message}`);
      continue;
    }
    if (cp.size > size) {
      add('truncated', size, `the registry witnessed ${cp.size} entries (cosigned ${new Date(cp.cosignedAt * 1000).toISOString()}) but the log holds ${size}: entries ${size}..${cp.size - 1} were removed`);
      continue;
    }
    if (!tree.root(cp.size).equals(cp.rootHash)) {
      const first = opts.registryLines ? await firstDifferentLine(lines, opts.registryLines, cp.size) : null;
      add('fork', first, `the log is not the history the registry witnessed at size ${cp.size} (cosigned ${new Date(cp.cosignedAt * 1000).toISOString()}): it was rewritten${first === null ? '' : `; entry ${first} is the first that differs from the registry's copy`}`);
      continue;
    }
    witnessed = Math.max(witnessed ?? 0, cp.size);
  }
  if (witnessed !== null && opts.registrySize !== undefined && opts.registrySize < witnessed) {
    add('witness', opts.registrySize, `the registry now holds ${opts.registrySize} entries of this log but cosigned ${witnessed}: it lost or hides entries ${opts.registrySize}..${witnessed - 1}`);
  }
  return witnessed;
}

async function firstDifferentLine(lines: Buffer[], registryLines: NonNullable<VerifyOptions['registryLines']>, size: number): Promise<number | null> {
  const STEP = 500;
  for (let from = 0; from < size; from += STEP) {
    const theirs = await registryLines(from, Math.min(size, from + STEP));
    for (let i = 0; i < theirs.length; i++) {
      const ours = lines[from + i];
      if (!ours || !ours.equals(theirs[i]!)) return from + i;
    }
  }
  return null;
}
