import { createHash, randomBytes } from 'node:crypto';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { EMPTY_ROOT, HASH_SIZE, MerkleTree, leafHash, nodeHash, verifyConsistency, verifyInclusion } from '../../src/audit/merkle.js';
import { AgentVpnError } from '../../src/errors.js';

const hex = (b: Uint8Array) => Buffer.from(b).toString('hex');
const sha = (...parts: Uint8Array[]) => parts.reduce((h, p) => h.update(p), createHash('sha256')).digest();

// An independent, deliberately naive transcription of RFC 9162 2.1 over arrays of entries
// (recursive, slicing, hashing from scratch), to cross-check the incremental tree.
const naiveSplit = (n: number) => 2 ** Math.ceil(Math.log2(n) - 1);
function naiveMth(d: Uint8Array[]): Buffer {
  if (d.length === 0) return sha();
  if (d.length === 1) return sha(Buffer.from([0]), d[0]!);
  const k = naiveSplit(d.length);
  return sha(Buffer.from([1]), naiveMth(d.slice(0, k)), naiveMth(d.slice(k)));
}
function naivePath(m: number, d: Uint8Array[]): Buffer[] {
  if (d.length <= 1) return [];
  const k = naiveSplit(d.length);
  return m < k ? [...naivePath(m, d.slice(0, k)), naiveMth(d.slice(k))] : [...naivePath(m - k, d.slice(k)), naiveMth(d.slice(0, k))];
}
function naiveSubproof(m: number, d: Uint8Array[], b: boolean): Buffer[] {
  if (m === d.length) return b ? [] : [naiveMth(d)];
  const k = naiveSplit(d.length);
  return m <= k
    ? [...naiveSubproof(m, d.slice(0, k), b), naiveMth(d.slice(k))]
    : [...naiveSubproof(m - k, d.slice(k), false), naiveMth(d.slice(0, k))];
}
const naiveProof = (m: number, d: Uint8Array[]) => (m === 0 ? [] : naiveSubproof(m, d, true));

function treeOf(entries: Uint8Array[]): MerkleTree {
  const t = new MerkleTree();
  for (const e of entries) t.append(e);
  return t;
}
const entriesOf = (n: number) => Array.from({ length: n }, (_, i) => Buffer.from(`entry ${i}`));

/** Every single-byte corruption of a proof, and a proof with a hash dropped or added. */
function tamperings(proof: Buffer[]): Buffer[][] {
  const out: Buffer[][] = [];
  proof.forEach((_, i) => {
    const bad = proof.map((p) => Buffer.from(p));
    bad[i]![i % HASH_SIZE]! ^= 0x01;
    out.push(bad);
    out.push(proof.filter((__, j) => j !== i));
  });
  out.push([...proof, Buffer.alloc(HASH_SIZE)]);
  return out;
}

// RFC 6962 test data (certificate-transparency merkle_tree_test): 8 leaves and the tree head at each size.
const RFC_LEAVES = ['', '00', '10', '2021', '3031', '40414243', '5051525354555657', '606162636465666768696a6b6c6d6e6f'].map((h) => Buffer.from(h, 'hex'));
const RFC_ROOTS = [
  '6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d',
  'fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125',
  'aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77',
  'd37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7',
  '4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4',
  '76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef',
  'ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c',
  '5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328',
];

describe('RFC 9162 Merkle tree: known answers', () => {
  it('hashes the empty tree, a leaf and a node as the RFC says', () => {
    expect(hex(EMPTY_ROOT)).toBe('e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855');
    expect(hex(new MerkleTree().root())).toBe(hex(EMPTY_ROOT));
    expect(hex(leafHash(Buffer.from('abc')))).toBe(hex(sha(Buffer.from([0]), Buffer.from('abc'))));
    const [a, b] = [randomBytes(32), randomBytes(32)];
    expect(hex(nodeHash(a, b))).toBe(hex(sha(Buffer.from([1]), a, b)));
  });

  it('matches the RFC 6962 test tree heads for sizes 1 to 8', () => {
    const t = treeOf(RFC_LEAVES);
    RFC_ROOTS.forEach((root, i) => {
      expect(hex(t.root(i + 1)), `size ${i + 1}`).toBe(root);
      expect(hex(naiveMth(RFC_LEAVES.slice(0, i + 1))), `naive size ${i + 1}`).toBe(root);
    });
  });

  it('matches the RFC 6962 test inclusion and consistency proofs', () => {
    const t = treeOf(RFC_LEAVES);
    expect(t.inclusionProof(0, 8).map(hex)).toEqual([
      '96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7',
      '5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e',
      '6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4',
    ]);
    expect(t.consistencyProof(6, 8).map(hex)).toEqual([
      '0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a',
      'ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0',
      'd37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7',
    ]);
    expect(t.consistencyProof(2, 5).map(hex)).toEqual([
      '5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e',
      'bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b',
    ]);
  });
});

describe('RFC 9162 Merkle tree: every proof up to 64 leaves', () => {
  const entries = entriesOf(64);
  const t = treeOf(entries);
  const leaves = entries.map(leafHash);

  it('tree heads, inclusion proofs and consistency proofs equal the naive recursion and verify', () => {
    let checked = 0;
    for (let n = 0; n <= 64; n++) {
      const d = entries.slice(0, n);
      const root = t.root(n);
      expect(hex(root), `root ${n}`).toBe(hex(naiveMth(d)));
      for (let m = 0; m < n; m++) {
        const proof = t.inclusionProof(m, n);
        expect(proof.map(hex), `path ${m} ${n}`).toEqual(naivePath(m, d).map(hex));
        expect(verifyInclusion(leaves[m]!, m, n, proof, root), `inclusion ${m} ${n}`).toBe(true);
        checked++;
      }
      for (let m = 0; m <= n; m++) {
        const proof = t.consistencyProof(m, n);
        expect(proof.map(hex), `proof ${m} ${n}`).toEqual(m === n ? [] : naiveProof(m, d).map(hex));
        expect(verifyConsistency(m, n, proof, t.root(m), root), `consistency ${m} ${n}`).toBe(true);
        checked++;
      }
    }
    expect(checked).toBe(2080 + 2145);
  });

  it('refuses every tampered inclusion proof, wrong leaf, index, size or root', () => {
    for (let n = 1; n <= 64; n++) {
      const root = t.root(n);
      for (let m = 0; m < n; m++) {
        const proof = t.inclusionProof(m, n);
        for (const bad of tamperings(proof)) expect(verifyInclusion(leaves[m]!, m, n, bad, root), `tampered ${m} ${n}`).toBe(false);
        if (n > 1) {
          expect(verifyInclusion(leaves[(m + 1) % n]!, m, n, proof, root)).toBe(false);
          expect(verifyInclusion(leaves[m]!, (m + 1) % n, n, proof, root)).toBe(false);
        }
        // (The same proof and root can pass for another size with the same path shape: the size is bound by the signed checkpoint.)
        if (n < 64) expect(verifyInclusion(leaves[m]!, m, n + 1, proof, t.root(n + 1))).toBe(false);
        expect(verifyInclusion(leaves[m]!, m, n, proof, t.root(n - 1 || 64))).toBe(false);
        expect(verifyInclusion(leaves[m]!, n, n, proof, root)).toBe(false);
      }
    }
  });

  it('refuses every tampered consistency proof, swapped roots or wrong sizes', () => {
    for (let n = 1; n <= 64; n++) {
      for (let m = 1; m < n; m++) {
        const proof = t.consistencyProof(m, n);
        const [r1, r2] = [t.root(m), t.root(n)];
        for (const bad of tamperings(proof)) expect(verifyConsistency(m, n, bad, r1, r2), `tampered ${m} ${n}`).toBe(false);
        expect(verifyConsistency(m, n, proof, r2, r1)).toBe(false);
        expect(verifyConsistency(m, n, proof, t.root(m - 1), r2)).toBe(false);
        expect(verifyConsistency(m, n, proof, r1, t.root(n - 1))).toBe(false);
        expect(verifyConsistency(n, m, proof, r2, r1)).toBe(false);
        expect(verifyConsistency(m, n, [], r1, r2)).toBe(false);
      }
      expect(verifyConsistency(n, n, [], t.root(n), t.root(n - 1))).toBe(false);
      expect(verifyConsistency(0, n, [], t.root(1), t.root(n))).toBe(false);
    }
  });

  it('a forked history (one entry rewritten) is inconsistent with the original', () => {
    for (const at of [0, 7, 31]) {
      const forked = treeOf(entries.map((e, i) => (i === at ? Buffer.from('rewritten') : e)));
      for (const [m, n] of [[at + 1, 64], [40, 64], [33, 50]] as const) {
        expect(verifyConsistency(m, n, forked.consistencyProof(m, n), t.root(m), forked.root(n))).toBe(false);
        expect(verifyConsistency(m, n, t.consistencyProof(m, n), t.root(m), forked.root(n))).toBe(false);
      }
    }
  });
});

describe('RFC 9162 Merkle tree: large trees', () => {
  it('random proofs in a 10,000-leaf tree verify, and its heads equal the naive recursion', () => {
    const entries = entriesOf(10_000);
    const t = treeOf(entries);
    for (const n of [10_000, 8192, 8193, 9999, 4097]) expect(hex(t.root(n)), `root ${n}`).toBe(hex(naiveMth(entries.slice(0, n))));
    for (let i = 0; i < 2000; i++) {
      const n = 1 + Math.floor(Math.random() * 10_000);
      const m = Math.floor(Math.random() * n);
      expect(verifyInclusion(leafHash(entries[m]!), m, n, t.inclusionProof(m, n), t.root(n)), `inclusion ${m} ${n}`).toBe(true);
      expect(verifyConsistency(m, n, t.consistencyProof(m, n), t.root(m), t.root(n)), `consistency ${m} ${n}`).toBe(true);
    }
  });

  it('100,000 leaves: appends, heads and proofs are fast', () => {
    const t = new MerkleTree();
    const started = performance.now();
    for (let i = 0; i < 100_000; i++) t.append(Buffer.from(`entry ${i}`));
    const appended = performance.now();
    for (let i = 0; i < 1000; i++) {
      const n = 1 + Math.floor(Math.random() * 100_000);
      const m = Math.floor(Math.random() * n);
      t.root(n);
      t.inclusionProof(m, n);
      t.consistencyProof(m, n);
    }
    const proved = performance.now();
    console.log(`100,000 appends: ${(appended - started).toFixed(0)} ms; 1,000 x (head + inclusion + consistency): ${(proved - appended).toFixed(0)} ms`);
    expect(t.size).toBe(100_000);
    expect(appended - started).toBeLessThan(5000);
    expect(proved - appended).toBeLessThan(5000);
  });
});

describe('RFC 9162 Merkle tree: API edges', () => {
  it('refuses sizes and indexes outside the tree with AUDIT_RANGE', () => {
    const t = treeOf(entriesOf(5));
    for (const call of [() => t.root(6), () => t.root(-1), () => t.root(1.5), () => t.inclusionProof(5, 5), () => t.inclusionProof(0, 0), () => t.consistencyProof(4, 3), () => t.consistencyProof(1, 6), () => t.leafHashAt(5)]) {
      expect(call).toThrow(AgentVpnError);
      try {
        call();
      } catch (e) {
        expect((e as AgentVpnError).code).toBe('AUDIT_RANGE');
      }
    }
    expect(() => t.appendLeafHash(Buffer.alloc(31))).toThrow(AgentVpnError);
  });

  it('appending leaf hashes gives the same tree as appending entries; returned hashes are copies', () => {
    const entries = entriesOf(37);
    const a = treeOf(entries);
    const b = new MerkleTree();
    entries.forEach((e, i) => expect(b.appendLeafHash(leafHash(e))).toBe(i));
    expect(hex(b.root())).toBe(hex(a.root()));
    a.root().fill(0);
    a.inclusionProof(3)[0]!.fill(0);
    a.leafHashAt(36).fill(0);
    expect(hex(a.root())).toBe(hex(b.root()));
    expect(hex(a.leafHashAt(36))).toBe(hex(leafHash(entries[36]!)));
  });
});

describe('RFC 9162 Merkle tree: properties', () => {
  const anything = fc.oneof(fc.integer(), fc.double(), fc.constant(undefined), fc.constant(null), fc.string(), fc.uint8Array({ maxLength: 40 }), fc.array(fc.uint8Array({ minLength: 32, maxLength: 32 }), { maxLength: 70 }), fc.constant(Number.MAX_SAFE_INTEGER), fc.constant(2 ** 60));

  it('the verifiers never throw, whatever they are given', () => {
    fc.assert(
      fc.property(anything, anything, anything, anything, anything, (a, b, c, d, e) => {
        const f = verifyInclusion as (...args: unknown[]) => unknown;
        const g = verifyConsistency as (...args: unknown[]) => unknown;
        expect(typeof f(a, b, c, d, e)).toBe('boolean');
        expect(typeof g(a, b, c, d, e)).toBe('boolean');
      }),
      { numRuns: 2000 },
    );
  });

  it('random proofs of the right shape for huge trees are refused without throwing', () => {
    const hash = fc.uint8Array({ minLength: 32, maxLength: 32 });
    fc.assert(
      fc.property(fc.nat({ max: Number.MAX_SAFE_INTEGER }), fc.nat({ max: Number.MAX_SAFE_INTEGER }), fc.array(hash, { maxLength: 60 }), hash, hash, (x, y, proof, h1, h2) => {
        const [m, n] = x <= y ? [x, y] : [y, x];
        if (m < n) expect(verifyInclusion(h1, m, n, proof, h2)).toBe(false);
        if (m > 0 && m < n) expect(verifyConsistency(m, n, proof, h1, h2)).toBe(false);
      }),
      { numRuns: 2000 },
    );
  });

  const entries = entriesOf(300);
  const t = treeOf(entries);
  it('every generated proof verifies and no one-bit change of it does', () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 300 }), fc.nat(), fc.nat(), (n, mi, bit) => {
        const m = mi % n;
        const proof = t.inclusionProof(m, n);
        expect(verifyInclusion(leafHash(entries[m]!), m, n, proof, t.root(n))).toBe(true);
        const c = t.consistencyProof(m, n);
        expect(verifyConsistency(m, n, c, t.root(m), t.root(n))).toBe(true);
        for (const p of [proof, c]) {
          if (p.length === 0) continue;
          const bad = p.map((h) => Buffer.from(h));
          const b = bit % (p.length * 256);
          bad[Math.floor(b / 256)]![Math.floor((b % 256) / 8)]! ^= 1 << (b % 8);
          if (p === proof) expect(verifyInclusion(leafHash(entries[m]!), m, n, bad, t.root(n))).toBe(false);
          else expect(verifyConsistency(m, n, bad, t.root(m), t.root(n))).toBe(false);
        }
      }),
      { numRuns: 1000 },
    );
  });
});
