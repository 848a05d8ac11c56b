import { describe, it, expect } from 'vitest';
import fc from 'fast-check';
import { agentIdOf } from '../../src/identity/agent-id.js';
import { publicKeyOfSeed, signingKeyOf } from '../../src/identity/ed25519.js';
import {
  MAX_CHAIN, chainCounters, chainDescendsFrom, keyCommitment, makeInception, makeRotation, parseKeyStatement, signedBytes, statementHash, verifyKeyChain,
  type KeyStatement,
} from '../../src/identity/rotation.js';

/** Deterministic seeds so a test can play both the honest agent and the thief holding some of its keys. */
function seed(n: number): Uint8Array {
  return new Uint8Array(32).fill(n + 1);
}

/** A valid chain of `length` statements with keys seed(0), seed(1), ...; statement i commits to seed(i+1). */
function chainOf(length: number): KeyStatement[] {
  const k0 = publicKeyOfSeed(seed(0));
  const chain = [makeInception(agentIdOf(k0), k0, signingKeyOf(seed(0)), publicKeyOfSeed(seed(1)))];
  for (let i = 1; i < length; i++) {
    chain.push(makeRotation(chain[i - 1], signingKeyOf(seed(i - 1)), publicKeyOfSeed(seed(i)), signingKeyOf(seed(i)), publicKeyOfSeed(seed(i + 1))));
  }
  return chain;
}

const ID = agentIdOf(publicKeyOfSeed(seed(0)));
const b64 = (b: Uint8Array): string => Buffer.from(b).toString('base64');

describe('key chains', () => {
  it('verify from the ID to the last key', () => {
    const chain = chainOf(3);
    const check = verifyKeyChain(ID, chain);
    expect(check).toMatchObject({ ok: true, seq: 2 });
    if (check.ok) expect(b64(check.currentKey)).toBe(b64(publicKeyOfSeed(seed(2))));
    expect(verifyKeyChain(ID, chain.slice(0, 1))).toMatchObject({ ok: true, seq: 0 });
    expect(chainDescendsFrom(chain, publicKeyOfSeed(seed(1)))).toBe(true);
    expect(chainDescendsFrom(chain, publicKeyOfSeed(seed(7)))).toBe(false);
    // The same statements as JSON from the wire verify the same.
    expect(verifyKeyChain(ID, JSON.parse(JSON.stringify(chain)) as unknown[])).toMatchObject({ ok: true, seq: 2 });
  });

  it('refuse a rotation signed by the current key that names a key other than the committed one', () => {
    // The thief holds the current key (seed 1) but not the committed next one (seed 2).
    const honest = chainOf(2);
    const thief = seed(40);
    const forged = makeRotation(honest[1], signingKeyOf(seed(1)), publicKeyOfSeed(thief), signingKeyOf(thief), publicKeyOfSeed(seed(41)));
    const check = verifyKeyChain(ID, [...honest, forged]);
    expect(check).toEqual({ ok: false, problem: 'statement 2 names a key other than the one statement 1 committed to' });
  });

  it('refuse replayed, missing, reordered and forked statements', () => {
    const [s0, s1, s2] = chainOf(3);
    const refused = (chain: unknown[]): string => {
      const c = verifyKeyChain(ID, chain);
      return c.ok ? 'accepted' : c.problem;
    };
    expect(refused([s0, s1, s1])).toMatch(/seq 1 \(replayed/);
    expect(refused([s0, s2])).toMatch(/seq 2/);
    expect(refused([s1, s0])).toMatch(/seq 1/);
    expect(refused([s0, s1, s2, s1])).toMatch(/seq 1/);
    expect(refused([])).toBe('no key statements');
    // A fork: someone with an old backup (seeds 0 and 1) re-makes statement 1 committing to his own key.
    const fork1 = makeRotation(s0, signingKeyOf(seed(0)), publicKeyOfSeed(seed(1)), signingKeyOf(seed(1)), publicKeyOfSeed(seed(50)));
    expect(refused([s0, fork1, s2])).toMatch(/does not link/);
    // On its own a fork is a valid chain: the registry (extendsChain) and peers (trust store pin) refuse it against what they hold.
    expect(refused([s0, fork1])).toBe('accepted');
    // Another agent's statements, or an inception that is not the ID's key.
    const other = agentIdOf(publicKeyOfSeed(seed(60)));
    expect(refused([{ ...s0, id: other }])).toMatch(/another agent ID|malformed|signature/);
    expect(verifyKeyChain(other, [s0])).toMatchObject({ ok: false, problem: expect.stringMatching(/another agent ID/) });
  });

  it('refuse a bad signature anywhere and a key used twice', () => {
    const [s0, s1] = chainOf(2);
    const flip = (sig: string): string => b64(Buffer.from(sig, 'base64').map((b, i) => (i === 0 ? b ^ 1 : b)));
    expect(verifyKeyChain(ID, [s0, { ...s1, sigs: { ...s1.sigs, prior: flip(s1.sigs.prior!) } }])).toMatchObject({ ok: false, problem: expect.stringMatching(/signature/) });
    expect(verifyKeyChain(ID, [s0, { ...s1, sigs: { ...s1.sigs, self: flip(s1.sigs.self) } }])).toMatchObject({ ok: false, problem: expect.stringMatching(/signature/) });
    expect(verifyKeyChain(ID, [{ ...s0, sigs: { self: flip(s0.sigs.self) } }])).toMatchObject({ ok: false });
    // Statement 0 committing to its own key: a "rotation" back to it is refused.
    const k0 = publicKeyOfSeed(seed(0));
    const loop0 = makeInception(ID, k0, signingKeyOf(seed(0)), k0);
    const loop1 = makeRotation(loop0, signingKeyOf(seed(0)), k0, signingKeyOf(seed(0)), publicKeyOfSeed(seed(1)));
    expect(verifyKeyChain(ID, [loop0, loop1])).toMatchObject({ ok: false, problem: expect.stringMatching(/used before/) });
  });

  it(`refuse a chain longer than MAX_CHAIN (${MAX_CHAIN}) before any signature work`, () => {
    const chain = chainOf(MAX_CHAIN);
    expect(verifyKeyChain(ID, chain)).toMatchObject({ ok: true, seq: MAX_CHAIN - 1 });
    // Statement 64 cannot even be parsed (seq is capped); a chain of 65 is refused by its length alone.
    const long = [...chain, chain[MAX_CHAIN - 1]];
    expect(verifyKeyChain(ID, long)).toEqual({ ok: false, problem: `chain longer than ${MAX_CHAIN} statements` });
    expect(verifyKeyChain(ID, new Array(1_000_000).fill(chain[0]))).toEqual({ ok: false, problem: `chain longer than ${MAX_CHAIN} statements` });
  });

  it('the same chain in every record costs hashing only: signatures are checked once per statement', () => {
    // A registry (or a chatty peer) resending one agent's 64-statement chain 1000 times.
    const chain = JSON.parse(JSON.stringify(chainOf(MAX_CHAIN))) as KeyStatement[];
    const mutated = { ...chain[MAX_CHAIN - 1], sigs: { ...chain[MAX_CHAIN - 1].sigs, self: chain[0].sigs.self } };
    const before = chainCounters.signatureChecks;
    for (let i = 0; i < 1000; i++) expect(verifyKeyChain(ID, chain).ok).toBe(true);
    // A chain whose last signature is bad is refused every time, but only its bad statement is checked again.
    for (let i = 0; i < 100; i++) expect(verifyKeyChain(ID, [...chain.slice(0, -1), mutated]).ok).toBe(false);
    const checks = chainCounters.signatureChecks - before;
    console.log(`signature checks for 1000 x a 64-statement chain + 100 x a bad one: ${checks} (without the memo: ${1000 * 127 + 100 * 127})`);
    expect(checks).toBeLessThanOrEqual(127 + 100 * 2);
  });

  it('signed bytes and hashes are as documented', () => {
    const [s0, s1] = chainOf(2);
    expect(signedBytes(s0).toString()).toBe(`agentvpn key statement v1\n${JSON.stringify([1, 'inception', ID, 0, s0.key, s0.next, null])}`);
    expect(s1.prev).toBe(statementHash(s0));
    expect(s0.next).toBe(keyCommitment(publicKeyOfSeed(seed(1))));
  });
});

describe('parseKeyStatement', () => {
  const [s0, s1] = chainOf(2);

  it('takes exactly the documented fields and returns a copy', () => {
    expect(parseKeyStatement(JSON.parse(JSON.stringify(s1)))).toEqual(s1);
    expect(parseKeyStatement(s0)).not.toBe(s0);
    for (const bad of [
      null, 1, 'x', [], {}, { ...s1, extra: 1 }, { ...s1, v: 2 }, { ...s1, kind: 'inception' }, { ...s0, kind: 'rotation' },
      { ...s0, prev: s1.prev }, { ...s1, prev: null }, { ...s1, seq: 0 }, { ...s1, seq: MAX_CHAIN }, { ...s1, seq: 1.5 }, { ...s1, seq: -1 },
      { ...s1, key: s1.key.slice(1) }, { ...s1, next: 5 }, { ...s1, id: 'av' + 'x'.repeat(100) }, { ...s1, sigs: { self: s1.sigs.self } },
      { ...s0, sigs: { self: s0.sigs.self, prior: s1.sigs.prior } }, { ...s1, sigs: { ...s1.sigs, x: 1 } }, { ...s1, sigs: [s1.sigs.self] },
      { ...s1, sigs: { prior: s1.sigs.prior, self: 'AAAA' } },
    ]) {
      expect(parseKeyStatement(bad)).toBeNull();
    }
  });

  it('never throws on arbitrary JSON, and accepts only what re-parses to itself (property)', () => {
    fc.assert(fc.property(fc.jsonValue(), (v) => {
      const s = parseKeyStatement(v);
      return s === null || JSON.stringify(parseKeyStatement(JSON.parse(JSON.stringify(s)))) === JSON.stringify(s);
    }), { numRuns: 2000 });
  });

  it('refuses any one field of a valid statement replaced by arbitrary JSON unless it stays valid (property)', () => {
    const fields = Object.keys(s1) as (keyof KeyStatement)[];
    fc.assert(fc.property(fc.constantFrom(...fields), fc.jsonValue(), (field, value) => {
      const mutated = { ...s1, [field]: value };
      const parsed = parseKeyStatement(mutated);
      if (parsed === null) return true;
      // Still well-formed: then it must be what it says (and a chain check decides if it is true).
      return JSON.stringify(parsed) === JSON.stringify(mutated);
    }), { numRuns: 2000 });
  });

  it('chain verification never throws and accepts no mutation of a valid chain (property)', () => {
    const chain = chainOf(3);
    const fields = Object.keys(chain[0]) as (keyof KeyStatement)[];
    fc.assert(fc.property(fc.nat(2), fc.constantFrom(...fields), fc.jsonValue(), (i, field, value) => {
      const mutated = chain.map((s, j) => (j === i ? { ...s, [field]: value } : s));
      if (JSON.stringify(mutated[i]) === JSON.stringify(chain[i])) return true;
      return verifyKeyChain(ID, mutated).ok === false;
    }), { numRuns: 1000 });
    fc.assert(fc.property(fc.array(fc.jsonValue(), { maxLength: 5 }), (junk) => verifyKeyChain(ID, junk).ok === false), { numRuns: 500 });
  });
});
