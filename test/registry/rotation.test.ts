// Key rotation at the registry: a record signed by a rotated key is accepted only with a key chain
// that verifies and extends the one held; the chain is stored and served; signed requests and the
// relay then take the current key only. The thief's attempts (a stolen current key rotating to a
// key of his own, the ID's old key, a replayed shorter chain, a fork) are refused, most of them
// before any signature is checked (the refusal counts and signature budget say so).
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { agentIdOf } from '../../src/identity/agent-id.js';
import { publicKeyOfSeed, randomSeed, signingKeyOf } from '../../src/identity/ed25519.js';
import { Identity } from '../../src/identity/identity.js';
import { makeInception, makeRotation, type KeyStatement } from '../../src/identity/rotation.js';
import { waitFor } from '../../src/lab/index.js';
import { RegistryClient, type AgentView, type JoinResult } from '../../src/registry/client.js';
import { RECORD_LIFETIME_MS, signRecord, type AgentRecord } from '../../src/registry/record.js';
import { startRegistryWithRelay, type RunningRegistryWithRelay } from '../../src/cli/registry-with-relay.js';
import { startAgent, waitState } from '../relay/harness.js';

const NET = 'default';
const b64 = (k: Uint8Array) => Buffer.from(k).toString('base64');

function recordFor(id: Identity, j: JoinResult, seq: number): AgentRecord {
  const now = Date.now();
  return {
    v: 1, network: j.network, id: id.id, name: 'beta', wgPublicKey: b64(id.wgPublicKey),
    ipv4: j.ipv4, ipv6: j.ipv6, endpoints: ['192.0.2.7:51820'], capabilities: [], seq, issuedAt: now, expiresAt: now + RECORD_LIFETIME_MS,
  };
}

/** An identity whose seeds the test holds, so it can craft the statements a thief or a forker would. */
function craftedIdentity() {
  const seeds = { inception: randomSeed(), first: randomSeed(), second: randomSeed() };
  const id = agentIdOf(publicKeyOfSeed(seeds.inception));
  const inception = makeInception(id, publicKeyOfSeed(seeds.inception), signingKeyOf(seeds.inception), publicKeyOfSeed(seeds.first));
  const original = new Identity(seeds.inception, { chain: [inception], nextSeed: seeds.first, dir: null });
  /** The honest first rotation, committing to `next`. */
  const rotateTo = (next: Uint8Array): Identity => new Identity(seeds.first, {
    chain: [inception, makeRotation(inception, signingKeyOf(seeds.inception), publicKeyOfSeed(seeds.first), signingKeyOf(seeds.first), publicKeyOfSeed(next))],
    nextSeed: next, dir: null,
  });
  return { seeds, inception, original, rotateTo };
}

describe('key rotation at the registry', () => {
  let dir: string;
  let reg: RunningRegistryWithRelay;
  let token: string;
  const clients: RegistryClient[] = [];
  const closers: Array<() => void> = [];

  beforeEach(async () => {
    dir = mkdtempSync(join(tmpdir(), 'agentvpn-rotation-'));
    reg = await startRegistryWithRelay({ db: join(dir, 'registry.db'), listen: '127.0.0.1:0' });
    token = await reg.createToken();
  });

  afterEach(async () => {
    for (const c of closers.splice(0)) c();
    for (const c of clients.splice(0)) c.close();
    await reg.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  const clientOf = (identity: Identity) => {
    const c = new RegistryClient({ url: reg.url, identity, network: NET, timeoutMs: 5000 });
    clients.push(c);
    return c;
  };

  it('accepts a rotation with its chain, serves the chain, and then believes only the current key', async () => {
    const beta = Identity.generate();
    const before = clientOf(beta);
    const j = await before.join('beta', token);
    await before.publish(signRecord(beta, recordFor(beta, j, 1)), beta.chain);
    const watcherId = Identity.generate();
    const watcher = clientOf(watcherId);
    await watcher.join('alpha', token);
    const upserts: AgentView[] = [];
    let snapshots = 0;
    const h = watcher.watch({ snapshot: () => snapshots++, change: (kind, a) => kind === 'upsert' && upserts.push(a) });
    closers.push(() => h.close());
    // A publish before the stream is open would come in its snapshot, not as a change.
    await waitFor(() => snapshots > 0, { what: 'the watcher\'s snapshot' });

    const rotated = beta.rotate();
    const after = clientOf(rotated);
    await after.publish(signRecord(rotated, recordFor(rotated, j, 2)), rotated.chain);
    await waitFor(() => upserts.length === 1, { what: 'the upsert of the rotated record' });
    expect(upserts[0].record.key).toBe(b64(rotated.publicKey));
    expect(upserts[0].chain).toHaveLength(2);
    const served = await watcher.get('beta');
    expect(served.chain).toEqual(rotated.chain);
    expect(served.record.ipv6).toBe(j.ipv6);

    // Signed requests: the current key is believed, the rotated-out one no longer.
    await after.heartbeat();
    await expect(after.list()).resolves.toHaveLength(1);
    await expect(before.heartbeat()).rejects.toMatchObject({ code: 'BAD_SIGNATURE' });
    await expect(before.list()).rejects.toMatchObject({ code: 'UNAUTHORIZED' });

    // Its next publish may leave the chain out: the registry holds it.
    await after.publish(signRecord(rotated, recordFor(rotated, j, 3)));
    expect((await watcher.get('beta')).record.seq).toBe(3);

    // The relay takes the current key and refuses the rotated-out one.
    const relay = j.relays[0];
    const current = await startAgent(relay, { identity: rotated });
    const old = await startAgent(relay, { identity: beta, udpTimeoutMs: 300 });
    closers.push(() => current.close(), () => old.close());
    await waitState(current, 'udp');
    await waitFor(() => (reg.relay!.stats().dropped['not-allowed'] ?? 0) > 0, { what: "the relay's refusal of the old key" });
    expect(old.client.state).not.toBe('udp');

    // A registry started later on the same database still holds the chain.
    await reg.stop();
    reg = await startRegistryWithRelay({ db: join(dir, 'registry.db'), listen: '127.0.0.1:0' });
    const later = new RegistryClient({ url: reg.url, identity: rotated, network: NET, timeoutMs: 5000 });
    const laterOld = new RegistryClient({ url: reg.url, identity: beta, network: NET, timeoutMs: 5000 });
    clients.push(later, laterOld);
    await later.heartbeat();
    await expect(laterOld.heartbeat()).rejects.toMatchObject({ code: 'BAD_SIGNATURE' });
    expect((await later.get('beta')).chain).toHaveLength(2);
  }, 60_000);

  it("refuses the thief: a stolen current key rotating to his own key, the ID's old key after a rotation, a replayed shorter chain, a fork", async () => {
    const { seeds, inception, original, rotateTo } = craftedIdentity();
    const client = clientOf(original);
    const j = await client.join('beta', token);
    await client.publish(signRecord(original, recordFor(original, j, 1)), original.chain);

    // 1. The thief holds the current (inception) key and signs a rotation to a key of his own: it is
    //    not the key the inception committed to.
    const thiefSeed = randomSeed();
    const thiefStatement = makeRotation(inception, signingKeyOf(seeds.inception), publicKeyOfSeed(thiefSeed), signingKeyOf(thiefSeed), publicKeyOfSeed(randomSeed()));
    const thief = new Identity(thiefSeed, { chain: [inception, thiefStatement], nextSeed: randomSeed(), dir: null });
    await expect(clientOf(thief).publish(signRecord(thief, recordFor(thief, j, 2)), thief.chain)).rejects.toMatchObject({ code: 'BAD_CHAIN' });

    // The owner rotates to the committed key, committing to the next one.
    const secondNext = seeds.second;
    const rotated = rotateTo(secondNext);
    await clientOf(rotated).publish(signRecord(rotated, recordFor(rotated, j, 2)), rotated.chain);

    const refusedBefore = { ...reg.stats().refused };
    const refusals = (code: string) => (reg.stats().refused[code] ?? 0) - (refusedBefore[code] ?? 0);
    // 2. The ID's own (rotated-out) key: a record it signs, with no chain or with the inception only.
    await expect(client.publish(signRecord(original, recordFor(original, j, 3)))).rejects.toMatchObject({ code: 'STALE_KEY' });
    await expect(client.publish(signRecord(original, recordFor(original, j, 3)), original.chain)).rejects.toMatchObject({ code: 'CHAIN_FORK' });
    // 3. A fork: the same first rotation key but another commitment (made with the old keys): the registry holds the first.
    const fork = rotateTo(randomSeed());
    await expect(clientOf(fork).publish(signRecord(fork, recordFor(fork, j, 3)), fork.chain)).rejects.toMatchObject({ code: 'CHAIN_FORK' });
    // 4. A replayed shorter chain, after a second rotation.
    const twice = rotated.rotate();
    await clientOf(twice).publish(signRecord(twice, recordFor(twice, j, 3)), twice.chain);
    await expect(clientOf(rotated).publish(signRecord(rotated, recordFor(rotated, j, 4)), rotated.chain)).rejects.toMatchObject({ code: 'CHAIN_FORK' });
    // 5. A chain of more statements than a chain may hold is refused before it is parsed.
    const long = [...twice.chain, ...Array.from({ length: 70 }, () => twice.chain[2])] as KeyStatement[];
    await expect(clientOf(twice).publish(signRecord(twice, recordFor(twice, j, 4)), long)).rejects.toMatchObject({ code: 'BAD_CHAIN' });

    const cheap = refusals('STALE_KEY') + refusals('CHAIN_FORK') + refusals('BAD_CHAIN');
    console.log(`thief's records after a rotation: ${cheap} refused (STALE_KEY ${refusals('STALE_KEY')}, CHAIN_FORK ${refusals('CHAIN_FORK')}, BAD_CHAIN ${refusals('BAD_CHAIN')}), each by the cheap checks that come before any signature check`);
    expect(cheap).toBe(5);
    expect((await clientOf(twice).get('beta')).chain).toEqual(twice.chain);
  }, 60_000);

  it("holds the inception from the first publish: a thief of the ID's key cannot start a chain of his own and rotate the identity away", async () => {
    const { seeds, original } = craftedIdentity();
    const client = clientOf(original);
    const j = await client.join('beta', token);
    await client.publish(signRecord(original, recordFor(original, j, 1)), original.chain);
    expect((await client.get('beta')).chain).toEqual(original.chain);
    // The thief copied the ID's key (not the pre-committed next one): his own inception commits to a
    // next key he holds, and a rotation to it verifies on its own, but it forks the held chain.
    const id = original.id;
    const thiefNext = randomSeed();
    const thiefInception = makeInception(id, publicKeyOfSeed(seeds.inception), signingKeyOf(seeds.inception), publicKeyOfSeed(thiefNext));
    const thiefChain = [thiefInception, makeRotation(thiefInception, signingKeyOf(seeds.inception), publicKeyOfSeed(thiefNext), signingKeyOf(thiefNext), publicKeyOfSeed(randomSeed()))];
    const thief = new Identity(thiefNext, { chain: thiefChain, nextSeed: randomSeed(), dir: null });
    await expect(clientOf(thief).publish(signRecord(thief, recordFor(thief, j, 2)), thief.chain)).rejects.toMatchObject({ code: 'CHAIN_FORK' });
    // The owner's unrotated records still go through, with or without the chain.
    await client.publish(signRecord(original, recordFor(original, j, 3)));
    expect((await client.get('beta')).record.seq).toBe(3);
  });

  it('a member sending long chains with a bad last signature spends its failed-signature budget per statement', async () => {
    const { seeds, inception, original } = craftedIdentity();
    const client = clientOf(original);
    const j = await client.join('beta', token);
    /** A fresh chain of `n` statements, all valid but the last one's self signature (so each costs ~2n checks). */
    const badChain = (n: number): KeyStatement[] => {
      const chain = [inception];
      let seed = seeds.first;
      let next = randomSeed();
      let priorSeed = seeds.inception;
      for (let i = 1; i < n; i++) {
        chain.push(makeRotation(chain[i - 1], signingKeyOf(priorSeed), publicKeyOfSeed(seed), signingKeyOf(seed), publicKeyOfSeed(next)));
        [priorSeed, seed, next] = [seed, next, randomSeed()];
      }
      const last = chain[n - 1];
      chain[n - 1] = { ...last, sigs: { ...last.sigs, self: Buffer.alloc(64, 7).toString('base64') } };
      return chain;
    };
    const started = Date.now();
    const codes: string[] = [];
    for (let i = 0; i < 12; i++) {
      const chain = badChain(40);
      await client.publish(signRecord(original, recordFor(original, j, i + 1)), chain).catch((e: { code: string }) => codes.push(e.code));
    }
    const seconds = Math.ceil((Date.now() - started) / 1000);
    const verified = codes.filter((c) => c === 'BAD_CHAIN').length;
    const limited = codes.filter((c) => c === 'RATE_LIMITED').length;
    console.log(`12 records with fresh 40-statement chains (bad last signature) in ~${seconds} s: ${verified} chains checked (~${verified * 79} signature checks), ${limited} refused before any check`);
    // One such chain spends the address's 20 failures a second: at most one is checked per second.
    expect(verified).toBeLessThanOrEqual(seconds + 1);
    expect(verified + limited).toBe(12);
  }, 60_000);
});
