import { createHash } from 'node:crypto';
import { AgentVpnError } from '../errors.js';

/**
 * RFC 9162 (Certificate Transparency v2) Merkle tree over SHA-256, section 2.1.
 *
 * | item              | definition                                                              |
 * | ----------------- | ----------------------------------------------------------------------- |
 * | empty tree head   | SHA-256("") (no leaves)                                                 |
 * | leaf hash         | SHA-256(0x00 \|\| entry bytes)                                          |
 * | node hash         | SHA-256(0x01 \|\| left hash \|\| right hash)                            |
 * | MTH(D[n]), n > 1  | node(MTH(D[0:k]), MTH(D[k:n])), k = largest power of two smaller than n |
 * | inclusion proof   | PATH(m, D[n]): sibling hashes from the leaf up to the root (2.1.3.1)    |
 * | consistency proof | PROOF(m, D[n]): SUBPROOF(m, D[n], true) (2.1.4.1)                        |
 *
 * Proofs are arrays of 32-byte hashes, in the order the RFC defines (deepest first).
 * The verifiers are pure and return false on any malformed or hostile input; they never throw.
 */

/** SHA-256 output size: every hash in a tree and a proof has exactly this length. */
export const HASH_SIZE = 32;
/** Tree sizes and indexes are JS numbers: past 2^53 - 1 they stop being exact integers. */
const MAX_TREE_SIZE = Number.MAX_SAFE_INTEGER;
/** Proofs in a tree of at most 2^53 leaves hold about log2(n) <= 53 hashes (a consistency proof one more): a longer one is refused unread. */
const MAX_PROOF_HASHES = 64;

const LEAF_PREFIX = Buffer.from([0x00]);
const NODE_PREFIX = Buffer.from([0x01]);

/** Tree head of the empty tree: SHA-256 of the empty string. */
export const EMPTY_ROOT: Buffer = createHash('sha256').digest();

export function leafHash(entry: Uint8Array): Buffer {
  return createHash('sha256').update(LEAF_PREFIX).update(entry).digest();
}

export function nodeHash(left: Uint8Array, right: Uint8Array): Buffer {
  return createHash('sha256').update(NODE_PREFIX).update(left).update(right).digest();
}

/** The largest power of two strictly smaller than n (n >= 2). Arithmetic, not bit ops: n may exceed 2^32. */
function splitPoint(n: number): number {
  let k = 1;
  while (k * 2 < n) k *= 2;
  return k;
}

function isPowerOfTwo(n: number): boolean {
  return n >= 1 && splitPoint(n + 1) === n;
}

/** Growable array of 32-byte hashes in one buffer: no per-hash object (100,000 leaves = 3.2 MB). */
class HashArray {
  private buf = Buffer.alloc(HASH_SIZE * 16);
  length = 0;

  push(h: Uint8Array): void {
    if ((this.length + 1) * HASH_SIZE > this.buf.length) {
      const bigger = Buffer.alloc(this.buf.length * 2);
      this.buf.copy(bigger);
      this.buf = bigger;
    }
    this.buf.set(h, this.length * HASH_SIZE);
    this.length++;
  }

  /** A view, not a copy: callers that hand it out copy it. */
  at(i: number): Buffer {
    return this.buf.subarray(i * HASH_SIZE, (i + 1) * HASH_SIZE);
  }
}

/**
 * An append-only tree in memory. levels[h][i] is the hash of the complete subtree of 2^h leaves
 * starting at leaf i * 2^h, kept as soon as that subtree is complete. Storage: under 2n hashes
 * (64 bytes per leaf). append: amortized 1 leaf hash + 1 node hash (at most log2 n). root(size):
 * O(log n) node hashes. inclusionProof / consistencyProof: O(log n) hashes returned, O(log^2 n)
 * node hashes worst case (each incomplete subtree along the right edge is rebuilt from at most
 * log n complete ones). The RFC recursion never splits a complete aligned subtree, so every
 * subtree it asks for is either stored or a chain of stored ones.
 */
export class MerkleTree {
  private readonly levels: HashArray[] = [new HashArray()];

  get size(): number {
    return this.levels[0]!.length;
  }

  /** Appends an entry (its leaf hash); returns its leaf index. */
  append(entry: Uint8Array): number {
    return this.appendLeafHash(leafHash(entry));
  }

  /** Appends an already-computed leaf hash (e.g. when reloading a log); returns its leaf index. */
  appendLeafHash(hash: Uint8Array): number {
    if (!(hash instanceof Uint8Array) || hash.length !== HASH_SIZE) {
      throw new AgentVpnError('INTERNAL', `a leaf hash must be ${HASH_SIZE} bytes`, 'this is a bug in agentvpn: report it');
    }
    if (this.size >= MAX_TREE_SIZE) throw rangeError(`the tree is full (${MAX_TREE_SIZE} leaves)`);
    const index = this.size;
    this.levels[0]!.push(hash);
    // Each time the new node is a right child, its parent subtree just became complete.
    let i = index;
    for (let h = 0; i % 2 === 1; h++, i = (i - 1) / 2) {
      const level = this.levels[h]!;
      if (!this.levels[h + 1]) this.levels.push(new HashArray());
      this.levels[h + 1]!.push(nodeHash(level.at(i - 1), level.at(i)));
    }
    return index;
  }

  leafHashAt(index: number): Buffer {
    checkIndex(index, this.size, 'leaf index');
    return Buffer.from(this.levels[0]!.at(index));
  }

  /** MTH(D[0:size]); size defaults to the whole tree. */
  root(size: number = this.size): Buffer {
    checkSize(size, this.size);
    return size === 0 ? Buffer.from(EMPTY_ROOT) : this.subtree(0, size);
  }

  /** PATH(index, D[0:size]) of RFC 9162 2.1.3.1. */
  inclusionProof(index: number, size: number = this.size): Buffer[] {
    checkSize(size, this.size);
    checkIndex(index, size, 'leaf index');
    const path: Buffer[] = [];
    let start = 0;
    let end = size;
    let m = index;
    // Walk down from the root; each level's sibling goes in front (the RFC lists the deepest first).
    while (end - start > 1) {
      const k = splitPoint(end - start);
      if (m < k) {
        path.push(this.subtree(start + k, end));
        end = start + k;
      } else {
        path.push(this.subtree(start, start + k));
        start += k;
        m -= k;
      }
    }
    return path.reverse();
  }

  /** PROOF(m, D[0:n]) of RFC 9162 2.1.4.1; empty when m is 0 or m == n. */
  consistencyProof(m: number, n: number = this.size): Buffer[] {
    checkSize(n, this.size);
    checkSize(m, n);
    if (m === 0 || m === n) return [];
    const proof: Buffer[] = [];
    let start = 0;
    let end = n;
    let mm = m;
    let complete = true; // the RFC's b: is D[start:start+mm] a subtree the verifier already holds as the old root?
    while (mm !== end - start) {
      const k = splitPoint(end - start);
      if (mm <= k) {
        proof.push(this.subtree(start + k, end));
        end = start + k;
      } else {
        proof.push(this.subtree(start, start + k));
        start += k;
        mm -= k;
        complete = false;
      }
    }
    if (!complete) proof.push(this.subtree(start, end));
    return proof.reverse();
  }

  /** MTH(D[start:end]), end > start, for the aligned ranges the RFC recursion produces. */
  private subtree(start: number, end: number): Buffer {
    const len = end - start;
    if (isPowerOfTwo(len) && start % len === 0) {
      const h = Math.log2(len);
      return Buffer.from(this.levels[h]!.at(start / len));
    }
    const k = splitPoint(len);
    return nodeHash(this.subtree(start, start + k), this.subtree(start + k, end));
  }
}

function rangeError(message: string): AgentVpnError {
  return new AgentVpnError('AUDIT_RANGE', message, 'ask for a tree size no larger than the log and a leaf index below that size');
}

function checkSize(size: number, max: number): void {
  if (!Number.isSafeInteger(size) || size < 0 || size > max) throw rangeError(`tree size ${size} is not between 0 and ${max}`);
}

function checkIndex(index: number, size: number, what: string): void {
  if (!Number.isSafeInteger(index) || index < 0 || index >= size) throw rangeError(`${what} ${index} is not below tree size ${size}`);
}

function isHash(h: unknown): h is Uint8Array {
  return h instanceof Uint8Array && h.length === HASH_SIZE;
}

function isProof(p: unknown): p is Uint8Array[] {
  return Array.isArray(p) && p.length <= MAX_PROOF_HASHES && p.every(isHash);
}

function isSize(n: unknown): n is number {
  return typeof n === 'number' && Number.isSafeInteger(n) && n >= 0;
}

function sameHash(a: Uint8Array, b: Uint8Array): boolean {
  return Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(b);
}

/** A right shift that stays exact past 2^32. */
const half = (x: number) => Math.floor(x / 2);
const odd = (x: number) => x % 2 === 1;

/**
 * RFC 9162 2.1.3.2: does `proof` show the leaf with hash `leaf` at `index` in the tree of `size`
 * leaves whose head is `root`? False on any malformed input; never throws.
 */
export function verifyInclusion(leaf: Uint8Array, index: number, size: number, proof: readonly Uint8Array[], root: Uint8Array): boolean {
  try {
    if (!isHash(leaf) || !isHash(root) || !isSize(index) || !isSize(size) || !isProof(proof)) return false;
    if (index >= size) return false;
    let fn = index;
    let sn = size - 1;
    let r: Uint8Array = leaf;
    for (const p of proof) {
      if (sn === 0) return false;
      if (odd(fn) || fn === sn) {
        r = nodeHash(p, r);
        while (!odd(fn) && fn !== 0) {
          fn = half(fn);
          sn = half(sn);
        }
      } else {
        r = nodeHash(r, p);
      }
      fn = half(fn);
      sn = half(sn);
    }
    return sn === 0 && sameHash(r, root);
  } catch {
    return false;
  }
}

/**
 * RFC 9162 2.1.4.2: does `proof` show that the tree of `size1` leaves with head `root1` is a
 * prefix of the tree of `size2` leaves with head `root2`? size1 == size2 needs an empty proof and
 * equal roots; size1 == 0 needs an empty proof and root1 the empty-tree head. False on any
 * malformed input; never throws.
 */
export function verifyConsistency(size1: number, size2: number, proof: readonly Uint8Array[], root1: Uint8Array, root2: Uint8Array): boolean {
  try {
    if (!isSize(size1) || !isSize(size2) || !isHash(root1) || !isHash(root2) || !isProof(proof)) return false;
    if (size1 > size2) return false;
    if (size1 === size2) return proof.length === 0 && sameHash(root1, root2);
    if (size1 === 0) return proof.length === 0 && sameHash(root1, EMPTY_ROOT);
    if (proof.length === 0) return false;
    const path = isPowerOfTwo(size1) ? [root1, ...proof] : [...proof];
    let fn = size1 - 1;
    let sn = size2 - 1;
    while (odd(fn)) {
      fn = half(fn);
      sn = half(sn);
    }
    let fr: Uint8Array = path[0]!;
    let sr: Uint8Array = path[0]!;
    for (const c of path.slice(1)) {
      if (sn === 0) return false;
      if (odd(fn) || fn === sn) {
        fr = nodeHash(c, fr);
        sr = nodeHash(c, sr);
        while (!odd(fn) && fn !== 0) {
          fn = half(fn);
          sn = half(sn);
        }
      } else {
        sr = nodeHash(sr, c);
      }
      fn = half(fn);
      sn = half(sn);
    }
    return sn === 0 && sameHash(fr, root1) && sameHash(sr, root2);
  } catch {
    return false;
  }
}
