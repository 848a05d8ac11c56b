import { closeSync, existsSync, fstatSync, ftruncateSync, openSync, readFileSync, readSync } from 'node:fs';
import { join } from 'node:path';
import { AgentVpnError } from '../errors.js';

/**
 * The files of an audit log directory (`<state dir>/audit/`, or beside the registry's database).
 *
 * | file               | content                                                                        |
 * | ------------------ | ------------------------------------------------------------------------------ |
 * | entries.jsonl      | the entries, canonical JSON, one per line; line n holds seq n                   |
 * | checkpoints.jsonl  | one JSON object per line: {note, leaves}: a signed checkpoint, and the base64   |
 * |                    | leaf hashes of the entries it adds since the previous line's checkpoint         |
 * | cosigned           | the newest checkpoint note cosigned by the registry's witness                   |
 * | witness.json       | the witness key pinned at first contact: {name, publicKey}                      |
 * | chain.json         | the owner's key chain (public statements), so the directory verifies alone      |
 * | shipped.json       | {size}: how many entries the registry holds; the log itself is the ship queue   |
 *
 * The leaf hashes in checkpoints.jsonl are not trusted by themselves: a checkpoint's signature
 * authenticates them (they must hash to its root), and then they name the exact entry an editor
 * changed. Appends only ever extend a file; a crash can leave a torn last line, or zeros where
 * blocks of the last write never reached the disk (cutDebris): both are cut.
 */
export const AUDIT_FILES = {
  entries: 'entries.jsonl',
  checkpoints: 'checkpoints.jsonl',
  cosigned: 'cosigned',
  witness: 'witness.json',
  chain: 'chain.json',
  shipped: 'shipped.json',
} as const;

export function auditPath(dir: string, file: keyof typeof AUDIT_FILES): string {
  return join(dir, AUDIT_FILES[file]);
}

/** The audit directory of a state directory. */
export function auditDirOf(stateDir: string): string {
  return join(stateDir, 'audit');
}

export interface LinesRead {
  /** Each complete line's bytes, without its "\n". */
  lines: Buffer[];
  /** Bytes after the last "\n" (a torn write), 0 when the file ends cleanly. */
  tornBytes: number;
  /** Length of the complete lines, in bytes: where the next append goes. */
  goodLength: number;
}

/** Reads a line file; a missing file is empty. */
export function readLines(path: string): LinesRead {
  if (!existsSync(path)) return { lines: [], tornBytes: 0, goodLength: 0 };
  const data = readFileSync(path);
  const lines: Buffer[] = [];
  let start = 0;
  for (let nl = data.indexOf(0x0a); nl >= 0; nl = data.indexOf(0x0a, start)) {
    lines.push(data.subarray(start, nl));
    start = nl + 1;
  }
  return { lines, tornBytes: data.length - start, goodLength: start };
}

/**
 * Counts crash debris as torn: a line holding a NUL byte was never written whole (JSON escapes
 * U+0000, and a crash can leave blocks of an unfinished write as zeros, also before blocks of it
 * that did reach the disk). A batch is written only once the one before it is synced, so nothing
 * acknowledged follows such a line: from it on, everything is debris. Lines below `signed` (a
 * checkpoint covers them, so they were acknowledged) are never debris: a NUL there is damage.
 */
export function cutDebris(read: LinesRead, signed: number): LinesRead {
  let offset = 0;
  for (let i = 0; i < read.lines.length; i++) {
    const line = read.lines[i]!;
    if (i >= signed && line.includes(0)) {
      return { lines: read.lines.slice(0, i), tornBytes: read.goodLength - offset + read.tornBytes, goodLength: offset };
    }
    offset += line.length + 1;
  }
  return read;
}

/** Cuts a torn tail (bytes after the last newline) off a line file we are about to append to. */
export function cutTornTail(path: string, goodLength: number): void {
  const fd = openSync(path, 'r+');
  try {
    if (fstatSync(fd).size > goodLength) ftruncateSync(fd, goodLength);
  } finally {
    closeSync(fd);
  }
}

/** Reads bytes [start, end) of a file. */
export function readRange(path: string, start: number, end: number): Buffer {
  const fd = openSync(path, 'r');
  try {
    const out = Buffer.alloc(end - start);
    let done = 0;
    while (done < out.length) {
      const n = readSync(fd, out, done, out.length - done, start + done);
      if (n === 0) throw new AgentVpnError('AUDIT_LOG_SHRANK', `${path} is shorter than the log it held`, 'another process truncated the log: run agentvpn audit verify');
      done += n;
    }
    return out;
  } finally {
    closeSync(fd);
  }
}
