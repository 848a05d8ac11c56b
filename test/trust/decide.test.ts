import { describe, it, expect, beforeEach } from 'vitest';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Identity } from '../../src/identity/identity.js';
import { makeInception, makeRotation, type KeyStatement } from '../../src/identity/rotation.js';
import { publicKeyOfSeed, signingKeyOf, type SigningKey } from '../../src/identity/ed25519.js';
import { agentIdOf } from '../../src/identity/agent-id.js';
import { decide, type TrustDecision, type TrustView } from '../../src/trust/decide.js';
import { MAX_TRUST_ENTRIES, TrustStore, fingerprint, type TrustEntry, type TrustMode } from '../../src/trust/store.js';
import { errorCodeOf } from '../fixtures/error-code.js';

const b64 = (b: Uint8Array): string => Buffer.from(b).toString('base64');

/** What the registry serves for an agent, as decide() sees it. */
function view(identity: Identity, name: string, ipv4: string, chain: readonly KeyStatement[] | undefined = identity.chain): TrustView {
  return { record: { id: identity.id, name, ipv4, ...(identity.seq > 0 ? { key: b64(identity.publicKey) } : {}) }, ...(chain ? { chain: [...chain] } : {}) };
}

let store: TrustStore;
let dir: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'avtrust-'));
  store = TrustStore.open(dir, 'lab');
});

/** decide() and apply its update, as the fleet does. */
function see(mode: TrustMode, v: TrustView, now = Date.now()): TrustDecision {
  const d = decide(store, mode, v, now);
  store.apply(d.update, now);
  return d;
}

const codeOf = errorCodeOf;

describe('trust on first use', () => {
  it('pins a new agent, keeps admitting it, and survives a restart', () => {
    const beta = Identity.generate();
    expect(see('tofu', view(beta, 'beta', '100.64.0.2'))).toMatchObject({ admit: true, state: 'pinned' });
    expect(see('tofu', view(beta, 'beta', '100.64.0.2'))).toMatchObject({ admit: true, state: 'pinned' });
    store.flush();
    const reopened = TrustStore.open(dir, 'lab');
    expect(reopened.get(beta.id)).toMatchObject({ name: 'beta', ipv4: '100.64.0.2', key: b64(beta.publicKey), keySeq: 0, state: 'pinned' });
  });

  it('refuses a known name with another key until `trust accept`, keeping the old one trusted meanwhile', () => {
    const beta = Identity.generate();
    see('tofu', view(beta, 'beta', '100.64.0.2'));
    const impostor = Identity.generate();
    const d = see('tofu', view(impostor, 'beta', '100.64.0.9'));
    expect(d).toMatchObject({ admit: false, state: 'changed' });
    expect(d.alert).toMatch(/beta .* now shows another agent .*trust accept beta/);
    const entry = store.list().find((e) => e.name === 'beta')!;
    expect(entry).toMatchObject({ id: beta.id, state: 'changed', fingerprint: fingerprint(b64(beta.publicKey)) });
    expect(entry.offered).toMatchObject({ id: impostor.id, key: b64(impostor.publicKey), fingerprint: fingerprint(b64(impostor.publicKey)) });
    // Seen again: still refused (the same offer, no rewrite); the pinned agent itself still gets in.
    expect(see('tofu', view(impostor, 'beta', '100.64.0.9')).admit).toBe(false);
    expect(see('tofu', view(beta, 'beta', '100.64.0.2')).admit).toBe(true);
    // The operator accepts: the offered key is pinned and the old entry for the name goes.
    store.accept('beta');
    expect(store.get(beta.id)).toBeUndefined();
    expect(see('tofu', view(impostor, 'beta', '100.64.0.9'))).toMatchObject({ admit: true, state: 'pinned' });
    expect(see('tofu', view(beta, 'beta', '100.64.0.2'))).toMatchObject({ admit: false, state: 'changed' });
  });

  it('refuses a known overlay IPv4 under another ID (and name); accept works by the new name', () => {
    const beta = Identity.generate();
    see('tofu', view(beta, 'beta', '100.64.0.2'));
    const gamma = Identity.generate();
    expect(see('tofu', view(gamma, 'gamma', '100.64.0.2'))).toMatchObject({ admit: false, state: 'changed' });
    store.accept('gamma');
    expect(see('tofu', view(gamma, 'gamma', '100.64.0.2')).admit).toBe(true);
  });

  it('follows a renamed agent or a new IPv4 when nobody else holds them', () => {
    const beta = Identity.generate();
    see('tofu', view(beta, 'beta', '100.64.0.2'));
    expect(see('tofu', view(beta, 'beta2', '100.64.0.3')).admit).toBe(true);
    expect(store.get(beta.id)).toMatchObject({ name: 'beta2', ipv4: '100.64.0.3' });
  });

  it('forget: the next agent with that name is trusted on first use again', () => {
    const beta = Identity.generate();
    see('tofu', view(beta, 'beta', '100.64.0.2'));
    store.forget('beta');
    expect(see('tofu', view(Identity.generate(), 'beta', '100.64.0.2'))).toMatchObject({ admit: true, state: 'pinned' });
  });
});

describe('key rotation', () => {
  it('moves the pin silently along a valid chain, also several steps at once', () => {
    const beta0 = Identity.generate();
    see('tofu', view(beta0, 'beta', '100.64.0.2'));
    const beta1 = beta0.rotate();
    const d = see('tofu', view(beta1, 'beta', '100.64.0.2'));
    expect(d).toMatchObject({ admit: true, state: 'pinned' });
    expect(d.alert).toBeUndefined();
    expect(d.note).toMatch(/rotated its key to seq 1/);
    expect(store.get(beta0.id)).toMatchObject({ key: b64(beta1.publicKey), keySeq: 1 });
    const beta3 = beta1.rotate().rotate();
    expect(see('tofu', view(beta3, 'beta', '100.64.0.2')).admit).toBe(true);
    expect(store.get(beta0.id)).toMatchObject({ key: b64(beta3.publicKey), keySeq: 3 });
  });

  it('refuses a replayed older key without turning the entry into changed', () => {
    const beta0 = Identity.generate();
    see('tofu', view(beta0, 'beta', '100.64.0.2'));
    const beta1 = beta0.rotate();
    see('tofu', view(beta1, 'beta', '100.64.0.2'));
    for (const old of [view(beta0, 'beta', '100.64.0.2'), view(beta0, 'beta', '100.64.0.2', undefined)]) {
      const d = see('tofu', old);
      expect(d).toMatchObject({ admit: false, state: 'pinned' });
      expect(d.alert).toMatch(/older key .*replay/);
    }
    expect(store.get(beta0.id)).toMatchObject({ key: b64(beta1.publicKey), state: 'pinned' });
    expect(see('tofu', view(beta1, 'beta', '100.64.0.2')).admit).toBe(true);
  });

  it('refuses a forked chain made with old keys (a stolen backup): changed', () => {
    // Seeds we control, so the test can be the thief holding an old backup (seeds 0 and 1).
    const seed = (n: number): Uint8Array => new Uint8Array(32).fill(n + 1);
    const honest0 = new Identity(seed(0));
    // The honest chain, built by hand so its next key is seed(1) and then seed(2).
    const k0 = publicKeyOfSeed(seed(0));
    const id = agentIdOf(k0);
    const s0 = makeInception(id, k0, signingKeyOf(seed(0)), publicKeyOfSeed(seed(1)));
    const s1 = makeRotation(s0, signingKeyOf(seed(0)), publicKeyOfSeed(seed(1)), signingKeyOf(seed(1)), publicKeyOfSeed(seed(2)));
    const as = (chain: KeyStatement[]): TrustView => ({ record: { id, name: 'beta', ipv4: '100.64.0.2', ...(chain.length > 1 ? { key: chain[chain.length - 1].key } : {}) }, chain });
    expect(honest0.id).toBe(id);
    see('tofu', as([s0, s1]));
    expect(store.get(id)).toMatchObject({ keySeq: 1 });
    // The thief re-makes statement 1 (same key) committing to his own next key, then rotates to it.
    const fork1 = makeRotation(s0, signingKeyOf(seed(0)), publicKeyOfSeed(seed(1)), signingKeyOf(seed(1)), publicKeyOfSeed(seed(70)));
    const fork2 = makeRotation(fork1, signingKeyOf(seed(1)), publicKeyOfSeed(seed(70)), signingKeyOf(seed(70)), publicKeyOfSeed(seed(71)));
    const d = see('tofu', as([s0, fork1, fork2]));
    expect(d).toMatchObject({ admit: false, state: 'changed' });
    expect(d.alert).toMatch(/without a valid rotation/);
    expect(see('tofu', as([s0, fork1]))).toMatchObject({ admit: false, state: 'changed' });
    expect(store.get(id)).toMatchObject({ keySeq: 1, key: s1.key });
    // The honest chain still gets in.
    expect(see('tofu', as([s0, s1])).admit).toBe(true);
    // An operator who decides the fork is the real agent (say it was restored from that backup) accepts it.
    expect(store.accept('beta')).toMatchObject({ id, key: fork1.key, keySeq: 1, state: 'pinned' });
    expect(see('tofu', as([s0, fork1, fork2]))).toMatchObject({ admit: true, state: 'pinned' });
    expect(see('tofu', as([s0, s1])).admit).toBe(false);
  });

  it('refuses a rotation statement to a key other than the committed one', () => {
    const beta0 = Identity.generate();
    see('tofu', view(beta0, 'beta', '100.64.0.2'));
    const thief = new Uint8Array(32).fill(99);
    const forged = makeRotation(beta0.chain[0], signingKeyOfIdentity(beta0), publicKeyOfSeed(thief), signingKeyOf(thief), publicKeyOfSeed(thief));
    const d = see('tofu', { record: { id: beta0.id, name: 'beta', ipv4: '100.64.0.2', key: forged.key }, chain: [beta0.chain[0], forged] });
    expect(d.admit).toBe(false);
    expect(d.alert).toMatch(/committed to/);
    expect(store.get(beta0.id)).toMatchObject({ key: b64(beta0.publicKey), state: 'pinned' });
  });
});

describe('block, approve, open', () => {
  it('blocked is never admitted, in any mode, nor is a new key under a blocked name', () => {
    const beta = Identity.generate();
    see('tofu', view(beta, 'beta', '100.64.0.2'));
    store.block('beta');
    for (const mode of ['tofu', 'approve', 'open'] as const) {
      expect(see(mode, view(beta, 'beta', '100.64.0.2'))).toMatchObject({ admit: false, state: 'blocked' });
      expect(see(mode, view(Identity.generate(), 'beta', '100.64.0.7'))).toMatchObject({ admit: false, state: 'blocked' });
    }
    expect(store.get(beta.id)!.state).toBe('blocked');
    // An ID never seen can be blocked ahead of time.
    const later = Identity.generate();
    expect(store.block(later.id)).toMatchObject({ state: 'blocked', name: null });
    expect(see('tofu', view(later, 'later', '100.64.0.4'))).toMatchObject({ admit: false, state: 'blocked' });
    expect(codeOf(() => store.block('nobody'))).toBe('TRUST_UNKNOWN');
    expect(codeOf(() => store.approve('beta'))).toBe('TRUST_BLOCKED');
  });

  it('approve mode: a new agent waits (pending) until approved, also across a rotation', () => {
    const beta = Identity.generate();
    const d = see('approve', view(beta, 'beta', '100.64.0.2'));
    expect(d).toMatchObject({ admit: false, state: 'pending' });
    expect(d.alert).toMatch(/trust approve beta/);
    const rotated = beta.rotate();
    expect(see('approve', view(rotated, 'beta', '100.64.0.2'))).toMatchObject({ admit: false, state: 'pending' });
    expect(store.approve('beta').state).toBe('approved');
    expect(see('approve', view(rotated, 'beta', '100.64.0.2'))).toMatchObject({ admit: true, state: 'approved' });
    expect(see('approve', view(rotated.rotate(), 'beta', '100.64.0.2'))).toMatchObject({ admit: true, state: 'approved' });
    // A pending agent in tofu mode is pinned.
    const gamma = Identity.generate();
    see('approve', view(gamma, 'gamma', '100.64.0.3'));
    expect(see('tofu', view(gamma, 'gamma', '100.64.0.3'))).toMatchObject({ admit: true, state: 'pinned' });
  });

  it('approve mode: a collision on a pending agent\'s name never turns into an approval', () => {
    const pending = Identity.generate();
    expect(see('approve', view(pending, 'beta', '100.64.0.2'))).toMatchObject({ admit: false, state: 'pending' });
    // Another ID shows up with the same name (a registry playing games, or a re-used name).
    expect(see('approve', view(Identity.generate(), 'beta', '100.64.0.9'))).toMatchObject({ admit: false });
    expect(store.get(pending.id)!.state).toBe('pending');
    expect(see('approve', view(pending, 'beta', '100.64.0.2'))).toMatchObject({ admit: false, state: 'pending' });
  });

  it('open mode admits a new key for a known name and records it', () => {
    const beta = Identity.generate();
    see('tofu', view(beta, 'beta', '100.64.0.2'));
    const other = Identity.generate();
    const d = see('open', view(other, 'beta', '100.64.0.2'));
    expect(d).toMatchObject({ admit: true, state: 'pinned' });
    expect(store.get(beta.id)).toBeUndefined();
    expect(store.get(other.id)!.name).toBe('beta');
  });

  it('operator actions say what is wrong', () => {
    const beta = Identity.generate();
    see('tofu', view(beta, 'beta', '100.64.0.2'));
    expect(codeOf(() => store.accept('beta'))).toBe('TRUST_NOTHING_TO_ACCEPT');
    expect(codeOf(() => store.approve('nobody'))).toBe('TRUST_UNKNOWN');
    expect(codeOf(() => store.forget('nobody'))).toBe('TRUST_UNKNOWN');
    see('tofu', view(Identity.generate(), 'beta', '100.64.0.9'));
    expect(codeOf(() => store.approve('beta'))).toBe('TRUST_CHANGED');
  });

  it(`a full store (${MAX_TRUST_ENTRIES} entries) refuses new agents instead of growing, giving up only the oldest pending entry`, () => {
    const now = Date.now();
    const put: TrustEntry[] = [];
    for (let i = 0; i < MAX_TRUST_ENTRIES; i++) {
      const key = new Uint8Array(32);
      new DataView(key.buffer).setUint32(0, i);
      put.push({ id: agentIdOf(key), name: `a${i}`, ipv4: `100.65.${i >> 8}.${i & 255}`, key: b64(key), keySeq: 0, state: 'pinned', firstSeen: now, lastSeen: now });
    }
    store.apply({ put, remove: [] });
    const d = see('tofu', view(Identity.generate(), 'newcomer', '100.64.0.2'));
    expect(d).toMatchObject({ admit: false });
    expect(d.alert).toMatch(/trust store full/);
    expect(store.size).toBe(MAX_TRUST_ENTRIES);
    store.flush();
    expect(TrustStore.open(dir, 'lab').size).toBe(MAX_TRUST_ENTRIES);
    // With pending entries among them, the one seen longest ago gives way to the newcomer.
    store.apply({ put: [{ ...put[7], state: 'pending', lastSeen: now - 1000 }, { ...put[8], state: 'pending' }], remove: [] });
    expect(see('tofu', view(Identity.generate(), 'newcomer', '100.64.0.2'))).toMatchObject({ admit: true, state: 'pinned' });
    expect(store.size).toBe(MAX_TRUST_ENTRIES);
    expect(store.get(put[7].id)).toBeUndefined();
    expect(store.get(put[8].id)?.state).toBe('pending');
  });
});

/** An identity's current signing key, as a thief who copied it would hold it (tests only: via its seed-free sign()). */
function signingKeyOfIdentity(identity: Identity): SigningKey {
  return (identity as unknown as { signingKey: SigningKey }).signingKey;
}
