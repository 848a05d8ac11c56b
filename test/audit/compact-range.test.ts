import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { extendRange, isCompactRange, rangeLength, rangeRoot } from '../../src/audit/compact-range.js';
import { EMPTY_ROOT, MerkleTree, leafHash } from '../../src/audit/merkle.js';

const leaf = (i: number) => leafHash(Buffer.from(`entry ${i}`));

describe('compact range', () => {
  it('has the tree head of the MerkleTree at every size from 0 to 300, appended one leaf at a time', () => {
    const tree = new MerkleTree();
    let range: Buffer[] = [];
    expect(rangeRoot(range).equals(EMPTY_ROOT)).toBe(true);
    for (let i = 0; i < 300; i++) {
      range = extendRange(range, i, [leaf(i)]);
      tree.appendLeafHash(leaf(i));
      expect(range.length).toBe(rangeLength(i + 1));
      expect(rangeRoot(range).equals(tree.root())).toBe(true);
    }
  });

  it('gives the same range whatever batches the leaves come in', () => {
    fc.assert(fc.property(fc.array(fc.integer({ min: 0, max: 40 }), { maxLength: 12 }), (batches) => {
      const tree = new MerkleTree();
      let range: Buffer[] = [];
      let size = 0;
      for (const b of batches) {
        const leaves = Array.from({ length: b }, (_, k) => leaf(size + k));
        range = extendRange(range, size, leaves);
        for (const l of leaves) tree.appendLeafHash(l);
        size += b;
      }
      return isCompactRange(range, size) && rangeRoot(range).equals(tree.root());
    }));
  });

  it('refuses a range that does not fit its size, and counts bits past 2^32', () => {
    expect(isCompactRange([leaf(0)], 2)).toBe(true);
    expect(isCompactRange([leaf(0)], 3)).toBe(false);
    expect(() => extendRange([leaf(0)], 3, [leaf(1)])).toThrow(/compact range/);
    expect(rangeLength(2 ** 40 + 5)).toBe(3);
  });
});
