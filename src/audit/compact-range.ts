import { AgentVpnError } from '../errors.js';
import { EMPTY_ROOT, HASH_SIZE, nodeHash } from './merkle.js';

/**
 * The compact range (frontier) of an RFC 9162 tree of `size` leaves: the hashes of the complete
 * subtrees its leaves split into, largest (leftmost) first, one per set bit of `size`. It is all a
 * witness needs to keep per log: appending a leaf costs at most log2(n) node hashes, and the tree
 * head is those hashes folded from the right (MTH(D[0:n]) = node(left subtree, MTH(rest))).
 */

/** How many hashes the range of `size` leaves holds (its set bits). Arithmetic, not bit ops: sizes pass 2^32. */
export function rangeLength(size: number): number {
  let n = 0;
  for (let s = size; s > 0; s = Math.floor(s / 2)) n += s % 2;
  return n;
}

/** Whether `range` is a well-formed compact range of `size` leaves. */
export function isCompactRange(range: readonly Uint8Array[], size: number): boolean {
  return Number.isSafeInteger(size) && size >= 0 && range.length === rangeLength(size) && range.every((h) => h instanceof Uint8Array && h.length === HASH_SIZE);
}

/** The range of `size + leaves.length` leaves: `range` (of `size` leaves) with the leaf hashes appended. */
export function extendRange(range: readonly Uint8Array[], size: number, leaves: readonly Uint8Array[]): Buffer[] {
  if (!isCompactRange(range, size)) throw new AgentVpnError('INTERNAL', `not a compact range of ${size} leaves`, 'this is a bug in agentvpn: report it');
  const out: Buffer[] = range.map((h) => Buffer.from(h));
  let n = size;
  for (const leaf of leaves) {
    out.push(Buffer.from(leaf));
    // Each trailing 1 bit of n is a complete subtree the new leaf's subtree now pairs with.
    for (let s = n; s % 2 === 1; s = Math.floor(s / 2)) {
      const right = out.pop()!;
      const left = out.pop()!;
      out.push(nodeHash(left, right));
    }
    n++;
  }
  return out;
}

/** The tree head of the range's leaves. */
export function rangeRoot(range: readonly Uint8Array[]): Buffer {
  if (range.length === 0) return Buffer.from(EMPTY_ROOT);
  let root: Buffer = Buffer.from(range[range.length - 1]!);
  for (let i = range.length - 2; i >= 0; i--) root = nodeHash(range[i]!, root);
  return root;
}
