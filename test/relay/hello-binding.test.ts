// A captured hello is bound to the relay it was sent to and to the address it came from
// (the relay's challenge, protocol.ts): replayed to another relay, or to the same relay from
// another address, it moves no session. Loopback: the member on 127.0.0.1, the attacker on
// 127.0.0.2, both relays in this process. Each test prints what the replayer got.
import { afterEach, describe, expect, it } from 'vitest';
import { waitFor } from '../../src/lab/index.js';
import { FRAME_HELLO, FRAME_HELLO_ACK, FRAME_RECV } from '../../src/relay/protocol.js';
import { startRelay, type RunningRelay } from '../../src/relay/server.js';
import { rawSocket, sleep, startAgent, waitState, type TestAgent } from './harness.js';

/** Packets the honest peer sends to the member after the replay. */
const PACKETS = 10;

describe('relay hello bound to its relay and its source', () => {
  const relays: RunningRelay[] = [];
  const agents: TestAgent[] = [];
  const closers: Array<() => void> = [];

  async function relay(): Promise<{ relay: RunningRelay; udp: string }> {
    const r = await startRelay({ udp: { host: '127.0.0.1', port: 0 } });
    relays.push(r);
    return { relay: r, udp: `127.0.0.1:${r.udpPort}` };
  }

  async function agent(...args: Parameters<typeof startAgent>): Promise<TestAgent> {
    const a = await startAgent(...args);
    agents.push(a);
    return a;
  }

  afterEach(async () => {
    for (const a of agents.splice(0)) a.close();
    for (const c of closers.splice(0)) c();
    for (const r of relays.splice(0)) await r.stop();
  });

  it('a hello captured on the way to one relay, replayed to a second relay from another address, is refused and the session there stays', async () => {
    const r1 = await relay();
    const r2 = await relay();
    const m2 = await agent({ udp: r2.udp }); // the member's session at the second relay, opened first
    const peer = await agent({ udp: r2.udp });
    for (const a of [m2, peer]) await waitState(a, 'udp');
    // Then the member says hello to the first relay: that hello is newer than its last one at the second.
    let captured: Buffer | null = null;
    const m1 = await agent({ udp: r1.udp }, { identity: m2.identity, tap: (buf) => ((buf[0] === FRAME_HELLO && (captured = buf)), true) });
    await waitState(m1, 'udp');
    expect(captured).not.toBeNull();

    const attacker = await rawSocket('127.0.0.2');
    closers.push(attacker.close);
    attacker.send(captured!, r2.relay.udpPort);
    await sleep(200);
    for (let i = 0; i < PACKETS; i++) peer.client.send(m1.wgKey, Buffer.from(`to member ${i}`));
    await waitFor(() => m2.received.length + attacker.inbox.filter((f) => f[0] === FRAME_RECV).length >= PACKETS, { timeoutMs: 3000, intervalMs: 10 }).catch(() => {});
    const acks = attacker.inbox.filter((f) => f[0] === FRAME_HELLO_ACK).length;
    const stolen = attacker.inbox.filter((f) => f[0] === FRAME_RECV).length;
    console.log(`hello replayed to another relay: ${acks} acks to the replayer, ${stolen}/${PACKETS} of the member's packets went to the replayer, ${m2.received.length}/${PACKETS} to the member`);
    expect(acks).toBe(0);
    expect(stolen).toBe(0);
    expect(m2.received.length).toBe(PACKETS);
  });

  it('a hello held back on the path and replayed to the same relay from another address is refused', async () => {
    const r1 = await relay();
    let held: Buffer | null = null;
    let holding = true;
    // The on-path attacker keeps the member's hellos from the relay and sends the first one itself.
    const m = await agent({ udp: r1.udp }, { tap: (buf) => !(buf[0] === FRAME_HELLO && holding && ((held ??= buf), true)) });
    const peer = await agent({ udp: r1.udp });
    await waitState(peer, 'udp');
    await waitFor(() => held !== null, { timeoutMs: 5000, intervalMs: 10, what: 'a hello of the member' });

    const attacker = await rawSocket('127.0.0.2');
    closers.push(attacker.close);
    attacker.send(held!, r1.relay.udpPort);
    await sleep(200);
    for (let i = 0; i < PACKETS; i++) peer.client.send(m.wgKey, Buffer.from(`to member ${i}`));
    await sleep(300);
    const acks = attacker.inbox.filter((f) => f[0] === FRAME_HELLO_ACK).length;
    const stolen = attacker.inbox.filter((f) => f[0] === FRAME_RECV).length;
    console.log(`hello replayed to the same relay from another address: ${acks} acks to the replayer, ${stolen}/${PACKETS} of the member's packets went to it`);
    expect(acks).toBe(0);
    expect(stolen).toBe(0);

    // Let the member's own hellos through: it connects from its own address.
    holding = false;
    await waitState(m, 'udp');
    peer.client.send(m.wgKey, Buffer.from('now'));
    await waitFor(() => m.received.length === 1, { intervalMs: 10 });
  });
});
