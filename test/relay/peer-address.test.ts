import { afterEach, describe, expect, it } from 'vitest';
import { randomBytes } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Identity } from '../../src/identity/identity.js';
import { waitFor } from '../../src/lab/index.js';
import { formatEndpoint, makeEndpoint } from '../../src/net/endpoint.js';
import { PEER_ADDRESS_RATE_PER_CLIENT } from '../../src/relay/limits.js';
import { FRAME_NOTICE, FRAME_PEER_ADDRESS, PEER_ADDRESS_FRAME_SIZE, answerPeerAddress, encodePeerAddressRequest } from '../../src/relay/protocol.js';
import { startRelay, type RelayOptions, type RunningRelay } from '../../src/relay/server.js';
import { rawSocket, startAgent, waitState, type TestAgent } from './harness.js';

/**
 * PEER_ADDR (relay/protocol.ts): where the relay sees another member's session come from, the
 * address birthday probing's easy side is allowed to spray (paths/magicsock.ts).
 */
describe('relay: peer-address queries', () => {
  let relay: RunningRelay | null = null;
  let http: Server | null = null;
  const agents: TestAgent[] = [];

  async function start(over: Partial<RelayOptions> = {}): Promise<{ udp: string; tcp: string }> {
    http = createServer((_req, res) => res.writeHead(404).end());
    await new Promise<void>((resolve) => http!.listen(0, '127.0.0.1', () => resolve()));
    relay = await startRelay({ udp: { host: '127.0.0.1', port: 0 }, tcpServer: http, ...over });
    return { udp: `127.0.0.1:${relay.udpPort}`, tcp: `http://127.0.0.1:${(http.address() as AddressInfo).port}/v1/relay` };
  }

  async function agent(...args: Parameters<typeof startAgent>): Promise<TestAgent> {
    const a = await startAgent(...args);
    agents.push(a);
    return a;
  }

  afterEach(async () => {
    for (const a of agents.splice(0)) a.close();
    await relay?.stop();
    relay = null;
    await new Promise<void>((resolve) => (http ? http.close(() => resolve()) : resolve()));
    http = null;
  });

  it("answers with the address the peer's session comes from (UDP or TCP), port not told; zeros for an unknown key", async () => {
    const info = await start();
    const a = await agent(info);
    const b = await agent(info, { host: '127.0.0.2' });
    const c = await agent(info, { host: '127.0.0.3', blockUdp: true });
    await waitState(a, 'udp');
    await waitState(b, 'udp');
    await waitState(c, 'tcp');
    const ofB = await a.client.peerAddress(b.wgKey);
    const ofC = await a.client.peerAddress(c.wgKey);
    const fromTcp = await c.client.peerAddress(b.wgKey);
    const unknown = await a.client.peerAddress(randomBytes(32));
    console.log(`peer addresses: b (UDP) ${ofB && formatEndpoint(ofB)}, c (TCP, from 127.0.0.3 but connected from 127.0.0.1) ${ofC && formatEndpoint(ofC)}, asked over TCP ${fromTcp && formatEndpoint(fromTcp)}, unknown key ${unknown}`);
    expect(ofB && formatEndpoint(ofB)).toBe('127.0.0.2:0');
    expect(ofC && formatEndpoint(ofC)).toBe('127.0.0.1:0'); // the TCP connection's far end (the harness connects from 127.0.0.1)
    expect(fromTcp && formatEndpoint(fromTcp)).toBe('127.0.0.2:0');
    expect(unknown).toBeNull();
    expect(relay!.stats().peerAddressAnswered).toBe(4);
  });

  it('tells nothing about another network: a key there is answered with zeros, as one not here', async () => {
    const networks = new Map<string, string[]>();
    const info = await start({ allow: (k) => networks.get(Buffer.from(k).toString('hex')) ?? null });
    const [x, y] = [Identity.generate(), Identity.generate()];
    networks.set(Buffer.from(x.publicKey).toString('hex'), ['red']);
    networks.set(Buffer.from(y.publicKey).toString('hex'), ['blue']);
    const a = await agent(info, { identity: x });
    const b = await agent(info, { identity: y, host: '127.0.0.2' });
    await waitState(a, 'udp');
    await waitState(b, 'udp');
    const answer = await a.client.peerAddress(b.wgKey);
    console.log(`another network's member: ${answer}`);
    expect(answer).toBeNull();
  });

  it('one size both ways; a source without a session gets only a shorter notice; over the per-client budget nothing', async () => {
    const info = await start();
    const a = await agent(info);
    const b = await agent(info, { host: '127.0.0.2' });
    await waitState(a, 'udp');
    await waitState(b, 'udp');
    const request = encodePeerAddressRequest(randomBytes(16), b.wgKey);
    expect(answerPeerAddress(Buffer.from(request), makeEndpoint(Uint8Array.of(127, 0, 0, 2), 9)).length).toBe(request.length);
    const stranger = await rawSocket('127.0.0.4');
    stranger.send(request, relay!.udpPort);
    await waitFor(() => stranger.inbox.length > 0, { timeoutMs: 3000, intervalMs: 10, what: 'a notice to the stranger' });
    expect(stranger.inbox.every((f) => f[0] === FRAME_NOTICE && f.length < PEER_ADDRESS_FRAME_SIZE)).toBe(true);
    stranger.close();
    // A burst of queries from one member: the relay answers its budget's worth.
    const answers = await Promise.all(Array.from({ length: 16 }, () => a.client.peerAddress(b.wgKey)));
    const answered = answers.filter((x) => x !== null).length;
    console.log(`16 queries at once: ${answered} answered (budget ${PEER_ADDRESS_RATE_PER_CLIENT}/s), dropped ${relay!.stats().dropped['peer-address-rate']}`);
    expect(answered).toBeLessThanOrEqual(PEER_ADDRESS_RATE_PER_CLIENT + 1);
    expect(answered).toBeGreaterThan(0);
    expect(relay!.stats().dropped['peer-address-rate']).toBeGreaterThanOrEqual(16 - PEER_ADDRESS_RATE_PER_CLIENT - 1);
  });

  it('an answer to a query id we did not send is ignored (someone spoofing the relay cannot name an address)', async () => {
    const info = await start();
    const a = await agent(info);
    const b = await agent(info, { host: '127.0.0.2' });
    await waitState(a, 'udp');
    await waitState(b, 'udp');
    const asked = a.client.peerAddress(b.wgKey);
    // A forged answer for b's key, naming a victim, under a guessed id, handed in as if it came from the relay's address.
    const forged = answerPeerAddress(encodePeerAddressRequest(randomBytes(16), b.wgKey), makeEndpoint(Uint8Array.of(203, 0, 113, 99), 0));
    expect(forged[0]).toBe(FRAME_PEER_ADDRESS);
    a.client.handleDatagram(forged, 0, forged.length);
    const got = await asked;
    console.log(`with a forged answer in between: ${got && formatEndpoint(got)}`);
    expect(got && formatEndpoint(got)).toBe('127.0.0.2:0');
  });
});
