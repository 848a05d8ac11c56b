import { afterEach, describe, expect, it } from 'vitest';
import { randomBytes } from 'node:crypto';
import { Identity } from '../../src/identity/identity.js';
import { waitFor } from '../../src/lab/index.js';
import { formatEndpoint, makeEndpoint } from '../../src/net/endpoint.js';
import { PEER_ADDRESS_RATE_PER_CLIENT } from '../../src/relay/limits.js';
import { FRAME_NOTICE, FRAME_PEER_ADDRESS, PEER_ADDRESS_FRAME_SIZE, answerPeerAddress, encodePeerAddressRequest } from '../../src/relay/protocol.js';
import type { RelayOptions, RunningRelay } from '../../src/relay/server.js';
import { RelayRig, rawSocket, waitState } from './harness.js';

/**
 * PEER_ADDR (relay/protocol.ts): where the relay sees another member's session come from, the
 * address birthday probing's easy side is allowed to spray (paths/magicsock.ts).
 */
describe('relay: peer-address queries', () => {
  const rig = new RelayRig();
  let relay: RunningRelay | null = null;

  /** The relay of this test, on UDP and TCP: its addresses as agents are given them. */
  async function start(over: Partial<RelayOptions> = {}): Promise<{ udp: string; tcp: string }> {
    const r = await rig.relayWithTcp(over);
    relay = r.relay;
    return { udp: r.udp, tcp: r.tcp };
  }

  afterEach(async () => {
    await rig.stop();
    relay = null;
  });

  it("confirms the address the peer's session comes from (UDP or TCP), whatever the port, and denies any other; no for an unknown key", async () => {
    const info = await start();
    const a = await rig.agent(info);
    const b = await rig.agent(info, { host: '127.0.0.2' });
    const c = await rig.agent(info, { host: '127.0.0.3', blockUdp: true });
    await waitState(a, 'udp');
    await waitState(b, 'udp');
    await waitState(c, 'tcp');
    const at = (a4: number, port = 51820) => makeEndpoint(Uint8Array.of(127, 0, 0, a4), port);
    const ofB = await a.client.confirmsPeerAddress(b.wgKey, at(2, 9999));
    const notB = await c.client.confirmsPeerAddress(b.wgKey, at(9)); // asked by c: each client may ask 4 a second
    const ofC = await a.client.confirmsPeerAddress(c.wgKey, at(1)); // the TCP connection's far end (the harness connects from 127.0.0.1)
    const cClaimed = await a.client.confirmsPeerAddress(c.wgKey, at(3));
    const fromTcp = await c.client.confirmsPeerAddress(b.wgKey, at(2));
    const unknown = await c.client.confirmsPeerAddress(randomBytes(32), at(2));
    console.log(`b (UDP) at 127.0.0.2: ${ofB}, at 127.0.0.9: ${notB}; c (TCP, connected from 127.0.0.1) there: ${ofC}, at its host 127.0.0.3: ${cClaimed}; asked over TCP: ${fromTcp}; unknown key: ${unknown}`);
    expect([ofB, notB, ofC, cClaimed, fromTcp, unknown]).toEqual([true, false, true, false, true, false]);
    expect(relay!.stats().peerAddressAnswered).toBe(6);
  });

  it('tells nothing about another network: a key there is answered with zeros, as one not here', async () => {
    const networks = new Map<string, string[]>();
    const info = await start({ allow: (k) => networks.get(Buffer.from(k).toString('hex')) ?? null });
    const [x, y] = [Identity.generate(), Identity.generate()];
    networks.set(Buffer.from(x.publicKey).toString('hex'), ['red']);
    networks.set(Buffer.from(y.publicKey).toString('hex'), ['blue']);
    const a = await rig.agent(info, { identity: x });
    const b = await rig.agent(info, { identity: y, host: '127.0.0.2' });
    await waitState(a, 'udp');
    await waitState(b, 'udp');
    const answer = await a.client.confirmsPeerAddress(b.wgKey, makeEndpoint(Uint8Array.of(127, 0, 0, 2), 0));
    console.log(`another network's member, at its true address: ${answer}`);
    expect(answer).toBe(false);
  });

  it('one size both ways; a source without a session gets only a shorter notice; over the per-client budget nothing', async () => {
    const info = await start();
    const a = await rig.agent(info);
    const b = await rig.agent(info, { host: '127.0.0.2' });
    await waitState(a, 'udp');
    await waitState(b, 'udp');
    const request = encodePeerAddressRequest(randomBytes(16), b.wgKey, makeEndpoint(Uint8Array.of(127, 0, 0, 2), 9));
    expect(answerPeerAddress(Buffer.from(request), true).length).toBe(request.length);
    const stranger = await rawSocket('127.0.0.4');
    stranger.send(request, relay!.udpPort);
    await waitFor(() => stranger.inbox.length > 0, { timeoutMs: 3000, intervalMs: 10, what: 'a notice to the stranger' });
    expect(stranger.inbox.every((f) => f[0] === FRAME_NOTICE && f.length < PEER_ADDRESS_FRAME_SIZE)).toBe(true);
    stranger.close();
    // A burst of queries from one member: the relay answers its budget's worth.
    const answers = await Promise.all(Array.from({ length: 16 }, () => a.client.confirmsPeerAddress(b.wgKey, makeEndpoint(Uint8Array.of(127, 0, 0, 2), 0))));
    const answered = answers.filter((x) => x).length;
    console.log(`16 queries at once: ${answered} answered (budget ${PEER_ADDRESS_RATE_PER_CLIENT}/s), dropped ${relay!.stats().dropped['peer-address-rate']}`);
    expect(answered).toBeLessThanOrEqual(PEER_ADDRESS_RATE_PER_CLIENT + 1);
    expect(answered).toBeGreaterThan(0);
    expect(relay!.stats().dropped['peer-address-rate']).toBeGreaterThanOrEqual(16 - PEER_ADDRESS_RATE_PER_CLIENT - 1);
  });

  it('an answer to a query id we did not send is ignored (someone spoofing the relay cannot name an address)', async () => {
    const info = await start();
    const a = await rig.agent(info);
    const b = await rig.agent(info, { host: '127.0.0.2' });
    await waitState(a, 'udp');
    await waitState(b, 'udp');
    const victim = makeEndpoint(Uint8Array.of(203, 0, 113, 99), 0);
    const asked = a.client.confirmsPeerAddress(b.wgKey, victim);
    // A forged "yes" for b's key at the victim's address, under a guessed id, handed in as if it came from the relay's address.
    const forged = answerPeerAddress(encodePeerAddressRequest(randomBytes(16), b.wgKey, victim), true);
    expect(forged[0]).toBe(FRAME_PEER_ADDRESS);
    a.client.handleDatagram(forged, 0, forged.length);
    const got = await asked;
    console.log(`with a forged answer in between: ${got}`);
    expect(got).toBe(false);
  });
});
