import { afterEach, describe, expect, it } from 'vitest';
import { randomBytes } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import { connect } from 'node:net';
import type { AddressInfo } from 'node:net';
import { Identity } from '../../src/identity/identity.js';
import { waitFor } from '../../src/lab/index.js';
import { buildBindingRequest, newTransactionId, parseBindingResponse } from '../../src/net/stun.js';
import {
  FRAME_CHALLENGE, FRAME_HELLO_ACK, FRAME_KEEPALIVE, FRAME_NOTICE, FRAME_RECV, FRAME_SEND, HELLO_SIZE, MAX_FRAME_SIZE, NOTICE_BAD_SIGNATURE, NOTICE_NOT_REGISTERED,
  NOTICE_STALE_TIMESTAMP, SWEEP_INTERVAL_MS, encodeHello, encodeSend,
} from '../../src/relay/protocol.js';
import { HELLO_VERIFY_BURST_PER_SOURCE, STUN_BURST, STUN_BURST_PER_SOURCE, STUN_RATE } from '../../src/relay/limits.js';
import { startRelay, type RelayOptions, type RunningRelay } from '../../src/relay/server.js';
import { UPGRADE_PROTOCOL, encodeTcpFrame } from '../../src/relay/tcp.js';
import { rawSocket, sleep, startAgent, waitState, type TestAgent, UNNAMED } from './harness.js';

describe('relay', () => {
  let relay: RunningRelay | null = null;
  let http: Server | null = null;
  const agents: TestAgent[] = [];
  const closers: Array<() => void> = [];

  async function start(over: Partial<RelayOptions> = {}): Promise<{ udp: string; tcp: string }> {
    http = createServer((_req, res) => res.writeHead(404).end());
    await new Promise<void>((resolve) => http!.listen(0, '127.0.0.1', () => resolve()));
    relay = await startRelay({ udp: { host: '127.0.0.1', port: 0 }, stunSecondPort: true, tcpServer: http, ...over });
    return { udp: `127.0.0.1:${relay.udpPort}`, tcp: `http://127.0.0.1:${(http.address() as AddressInfo).port}/v1/relay` };
  }

  /** An agent from another loopback source address. */
  async function agentFrom(host: string): Promise<TestAgent> {
    return agent({ udp: `127.0.0.1:${relay!.udpPort}` }, { host });
  }

  async function agent(...args: Parameters<typeof startAgent>): Promise<TestAgent> {
    const a = await startAgent(...args);
    agents.push(a);
    return a;
  }

  /** A UDP port nothing listens on (bound, then closed). */
  async function deadUdpPort(): Promise<number> {
    const r = await rawSocket();
    r.close();
    return r.port;
  }

  afterEach(async () => {
    for (const a of agents.splice(0)) a.close();
    for (const c of closers.splice(0)) c();
    await relay?.stop();
    relay = null;
    await new Promise<void>((resolve) => (http ? http.close(() => resolve()) : resolve()));
    http = null;
  });

  it('forwards packets between two agents over UDP, both ways, and tells a sender when the peer is not there', async () => {
    const info = await start();
    const a = await agent(info);
    const b = await agent(info);
    await waitState(a, 'udp');
    await waitState(b, 'udp');
    expect(relay!.stats()).toMatchObject({ clients: 2, udpClients: 2, tcpClients: 0 });

    expect(a.client.send(b.wgKey, Buffer.from('hello b'))).toBe(true);
    await waitFor(() => b.received.length === 1, { intervalMs: 10 });
    expect(b.received[0].from.equals(a.wgKey)).toBe(true);
    expect(b.received[0].packet.toString()).toBe('hello b');

    for (let i = 0; i < 200; i++) b.client.send(a.wgKey, Buffer.from(`reply ${i}`));
    await waitFor(() => a.received.length >= 190, { intervalMs: 10, what: `replies at a (${a.received.length})` });
    expect(a.received.every((r) => r.from.equals(b.wgKey))).toBe(true);
    expect(relay!.stats().forwardedPackets).toBeGreaterThanOrEqual(191);
    // Each packet received was forwarded once (none bypassed the relay or came twice); on a loaded
    // machine the last few forwarded may still be in a socket buffer, or dropped from a full one.
    const delivered = () => a.received.length + b.received.length;
    await waitFor(() => delivered() === relay!.stats().forwardedPackets, { intervalMs: 10, timeoutMs: 1_000 }).catch(() => {});
    expect(delivered()).toBeLessThanOrEqual(relay!.stats().forwardedPackets);

    const nobody = Identity.generate().wgPublicKey;
    a.client.send(nobody, Buffer.from('anyone?'));
    await waitFor(() => a.notHere.length === 1, { intervalMs: 10 });
    expect(a.notHere[0].equals(Buffer.from(nobody))).toBe(true);
    expect(relay!.stats().dropped['peer-not-here']).toBe(1);
    // Packets too big for the relay are refused by the client, not sent.
    expect(a.client.send(b.wgKey, Buffer.alloc(MAX_FRAME_SIZE))).toBe(false);
  });

  it('falls back to TCP when UDP to the relay gets no answer, and a TCP agent talks to a UDP agent', async () => {
    const info = await start();
    const blocked = await agent({ udp: `127.0.0.1:${await deadUdpPort()}`, tcp: info.tcp }, { udpTimeoutMs: 300 });
    const open = await agent(info);
    await waitState(blocked, 'tcp');
    await waitState(open, 'udp');
    expect(relay!.stats()).toMatchObject({ clients: 2, udpClients: 1, tcpClients: 1 });

    for (let i = 0; i < 50; i++) expect(blocked.client.send(open.wgKey, Buffer.from(`up ${i}`))).toBe(true);
    await waitFor(() => open.received.length === 50, { intervalMs: 10, what: 'TCP → UDP packets' });
    expect(open.received.map((r) => r.packet.toString())).toEqual(Array.from({ length: 50 }, (_, i) => `up ${i}`));
    expect(open.received[0].from.equals(blocked.wgKey)).toBe(true);

    const big = Buffer.alloc(1452, 7);
    for (let i = 0; i < 20; i++) open.client.send(blocked.wgKey, big);
    await waitFor(() => blocked.received.length >= 18, { intervalMs: 10, what: 'UDP → TCP packets' });
    expect(blocked.received.every((r) => r.packet.equals(big) && r.from.equals(open.wgKey))).toBe(true);
  });

  it('moves a client from UDP to TCP and back without losing its key', async () => {
    const info = await start();
    const a = await agent(info);
    const b = await agent({ udp: `127.0.0.1:${await deadUdpPort()}`, tcp: info.tcp }, { udpTimeoutMs: 200 });
    await waitState(a, 'udp');
    await waitState(b, 'tcp');
    // The same identity over TCP replaces the UDP session, which a new UDP hello takes back.
    const a2 = await agent({ udp: `127.0.0.1:${await deadUdpPort()}`, tcp: info.tcp }, { udpTimeoutMs: 200, identity: a.identity });
    await waitState(a2, 'tcp');
    b.client.send(a.wgKey, Buffer.from('to tcp'));
    await waitFor(() => a2.received.length === 1, { intervalMs: 10 });
    expect(relay!.stats()).toMatchObject({ clients: 2, udpClients: 0, tcpClients: 2 });
    const a3 = await agent(info, { identity: a.identity });
    await waitState(a3, 'udp');
    b.client.send(a.wgKey, Buffer.from('to udp'));
    await waitFor(() => a3.received.length === 1, { intervalMs: 10 });
    expect(relay!.stats()).toMatchObject({ clients: 2, udpClients: 1, tcpClients: 1 });
    expect(a2.received.length).toBe(1);
  });

  it('goes back to UDP when UDP works again, and says hello again after the relay restarts', async () => {
    const info = await start();
    const a = await agent(info, { udpTimeoutMs: 200, udpRetryMs: 200, blockUdp: true });
    const b = await agent(info);
    await waitState(a, 'tcp');
    a.blockUdp = false;
    await waitState(a, 'udp');
    await waitFor(() => relay!.stats().tcpClients === 0 && relay!.stats().udpClients === 2, { intervalMs: 10 });
    a.client.send(b.wgKey, Buffer.from('direct to the relay again'));
    await waitFor(() => b.received.length === 1, { intervalMs: 10 });

    // A restarted relay has forgotten everyone: the first send is refused with a notice, and the hello follows.
    const port = relay!.udpPort;
    await relay!.stop();
    relay = await startRelay({ udp: { host: '127.0.0.1', port }, tcpServer: http! });
    a.client.send(b.wgKey, Buffer.from('lost'));
    b.client.send(a.wgKey, Buffer.from('lost'));
    await waitFor(() => relay!.stats().clients === 2, { intervalMs: 10, what: 'both clients registered again' });
    a.client.send(b.wgKey, Buffer.from('after restart'));
    await waitFor(() => b.received.length === 2, { intervalMs: 10 });
    expect(b.received[1].packet.toString()).toBe('after restart');
    expect(relay!.stats().dropped['not-registered']).toBe(2);
  });

  it('refuses hellos signed by another key, stale or replayed, and sends from unknown sources', async () => {
    await start();
    const raw = await rawSocket();
    closers.push(raw.close);
    const port = relay!.udpPort;
    const me = Identity.generate();
    const victim = Identity.generate();
    const ch = await raw.challenge(port);

    // Signed by me, claiming the victim's key.
    const forged = encodeHello(me, Date.now(), 0, UNNAMED, ch);
    forged.set(victim.publicKey, 3);
    raw.send(forged, port);
    await waitFor(() => raw.inbox.length === 1, { intervalMs: 10 });
    expect([raw.inbox[0][0], raw.inbox[0][1]]).toEqual([FRAME_NOTICE, NOTICE_BAD_SIGNATURE]);

    raw.send(encodeHello(me, Date.now() - 10 * 60_000, 0, UNNAMED, ch), port);
    await waitFor(() => raw.inbox.length === 2, { intervalMs: 10 });
    expect([raw.inbox[1][0], raw.inbox[1][1]]).toEqual([FRAME_NOTICE, NOTICE_STALE_TIMESTAMP]);

    const good = encodeHello(me, Date.now(), 0, UNNAMED, ch);
    raw.send(good, port);
    await waitFor(() => raw.inbox.length === 3, { intervalMs: 10 });
    expect(raw.inbox[2][0]).toBe(FRAME_HELLO_ACK);
    expect(raw.inbox[2].subarray(3, 35).equals(Buffer.from(me.wgPublicKey))).toBe(true);
    raw.send(good, port); // replayed: the timestamp is not newer
    await waitFor(() => raw.inbox.length === 4, { intervalMs: 10 });
    expect([raw.inbox[3][0], raw.inbox[3][1]]).toEqual([FRAME_NOTICE, NOTICE_STALE_TIMESTAMP]);

    const stranger = await rawSocket();
    closers.push(stranger.close);
    stranger.send(encodeSend(me.wgPublicKey, Buffer.from('x')), port);
    await waitFor(() => stranger.inbox.length === 1, { intervalMs: 10 });
    expect([stranger.inbox[0][0], stranger.inbox[0][1]]).toEqual([FRAME_NOTICE, NOTICE_NOT_REGISTERED]);
    // A 1-byte keepalive from a stranger gets no 34-byte notice (no answer larger than its request).
    stranger.send(Buffer.from([FRAME_KEEPALIVE]), port);
    await waitFor(() => relay!.stats().dropped['not-registered'] === 2, { intervalMs: 10 });
    await sleep(50);
    expect(stranger.inbox.length).toBe(1);

    expect(relay!.stats().dropped).toMatchObject({ 'bad-signature': 1, 'stale-timestamp': 2, 'not-registered': 2 });
    expect(relay!.stats().clients).toBe(1);
  });

  it("never delivers one agent's traffic to another", async () => {
    const info = await start();
    const a = await agent(info);
    const b = await agent(info);
    await waitState(a, 'udp');
    await waitState(b, 'udp');
    const eve = await rawSocket();
    closers.push(eve.close);
    const eveId = Identity.generate();
    const eveCh = await eve.challenge(relay!.udpPort);
    eve.send(encodeHello(eveId, Date.now(), 0, UNNAMED, eveCh), relay!.udpPort);
    await waitFor(() => eve.inbox.length === 1, { intervalMs: 10 });
    // Eve tries to take b's key with her own signature: refused.
    const grab = encodeHello(eveId, Date.now() + 1, 0, UNNAMED, eveCh);
    grab.set(b.identity.publicKey, 3);
    eve.send(grab, relay!.udpPort);
    await waitFor(() => eve.inbox.length === 2, { intervalMs: 10 });

    for (let i = 0; i < 20; i++) a.client.send(b.wgKey, Buffer.from(`secret ${i}`));
    await waitFor(() => b.received.length === 20, { intervalMs: 10 });
    await sleep(100);
    expect(eve.inbox.slice(2).filter((f) => f[0] === FRAME_RECV)).toEqual([]);
    expect(eve.inbox[1][0]).toBe(FRAME_NOTICE);
    expect(a.received).toEqual([]);
  });

  it('drops and counts what goes over the per-agent packet and byte limits', async () => {
    const info = await start({ limits: { packetsPerSecond: 10, bytesPerSecond: 1e9, burst: { packets: 10, bytes: 1e9 } } });
    const a = await agent(info);
    const b = await agent(info);
    await waitState(a, 'udp');
    await waitState(b, 'udp');
    for (let i = 0; i < 100; i++) a.client.send(b.wgKey, Buffer.from(`p${i}`));
    await waitFor(() => (relay!.stats().dropped['rate-limit'] ?? 0) + relay!.stats().forwardedPackets >= 100, { intervalMs: 10 });
    expect(relay!.stats().dropped['rate-limit']).toBeGreaterThan(50);
    await relay!.stop();

    const info2 = await start({ limits: { packetsPerSecond: 1e6, bytesPerSecond: 1000, burst: { packets: 1e6, bytes: 2000 } } });
    const c = await agent(info2);
    const d = await agent(info2);
    await waitState(c, 'udp');
    await waitState(d, 'udp');
    for (let i = 0; i < 40; i++) c.client.send(d.wgKey, Buffer.alloc(500));
    await waitFor(() => (relay!.stats().dropped['byte-limit'] ?? 0) + relay!.stats().forwardedPackets >= 40, { intervalMs: 10 });
    expect(relay!.stats().dropped['byte-limit']).toBeGreaterThan(20);
    expect(relay!.stats().forwardedBytes).toBeLessThan(40 * 500);
  });

  it('counts and drops garbage and oversized frames over UDP and TCP, and keeps serving', async () => {
    const info = await start();
    const raw = await rawSocket();
    closers.push(raw.close);
    const port = relay!.udpPort;
    const junk = [
      Buffer.alloc(0), Buffer.from([0xb7]), Buffer.from([0xbf, 1, 2, 3]), Buffer.from([FRAME_SEND, 1, 2]), Buffer.alloc(HELLO_SIZE - 1, 0xb0),
      Buffer.from([1, 0, 0, 0, 9, 9]), Buffer.from([0x00, 0x01, 0x00, 0x00]), Buffer.from([0xb2, 0]), Buffer.from([FRAME_HELLO_ACK, 1]),
    ];
    for (let i = 0; i < 200; i++) junk.push(Buffer.from(Array.from({ length: 1 + (i % 60) }, (_, j) => (i * 131 + j * 17) & 0xff)));
    for (const j of junk) raw.send(j, port);
    const oversized = Buffer.alloc(MAX_FRAME_SIZE + 1, 0);
    oversized[0] = FRAME_SEND;
    raw.send(oversized, port);

    // TCP: a length over the limit closes the connection; a bad frame inside a good length is dropped.
    const tcpPort = Number(new URL(info.tcp).port);
    const closed = new Promise<void>((resolve) => {
      const s = connect(tcpPort, '127.0.0.1', () => {
        s.write(`GET /v1/relay HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: ${UPGRADE_PROTOCOL}\r\n\r\n`);
        s.write(encodeTcpFrame(Buffer.from([0xbe, 1, 2])));
        s.write(Buffer.from([0xff, 0xff, 0xb4]));
      });
      s.resume();
      s.on('error', () => {});
      s.on('close', () => resolve());
    });
    await closed;

    await waitFor(() => (relay!.stats().dropped.oversized ?? 0) >= 2, { intervalMs: 10, what: 'oversized counted' });
    const a = await agent(info);
    const b = await agent(info);
    await waitState(a, 'udp');
    await waitState(b, 'udp');
    a.client.send(b.wgKey, Buffer.from('still here'));
    await waitFor(() => b.received.length === 1, { intervalMs: 10 });
    const { dropped } = relay!.stats();
    expect(dropped.garbage).toBeGreaterThanOrEqual(150);
    expect(dropped.oversized).toBe(2);
  });

  it('answers STUN Binding requests on its port and on the next one', async () => {
    await start();
    const raw = await rawSocket();
    closers.push(raw.close);
    expect(relay!.stunSecondPort).toBe(relay!.udpPort + 1);
    for (const port of [relay!.udpPort, relay!.stunSecondPort]) {
      const txid = newTransactionId();
      raw.send(buildBindingRequest(txid), port);
      await waitFor(() => raw.inbox.length > 0, { intervalMs: 10, what: `STUN answer from port ${port}` });
      const answer = raw.inbox.shift()!;
      const r = parseBindingResponse(answer, 0, answer.length);
      expect(r?.txid.equals(txid)).toBe(true);
      expect([...r!.address]).toEqual([127, 0, 0, 1]);
      expect(r!.port).toBe(raw.port);
    }
    // The second port answers STUN only.
    raw.send(encodeHello(Identity.generate(), Date.now(), 0, UNNAMED, randomBytes(20)), relay!.stunSecondPort);
    await sleep(50);
    expect(raw.inbox).toEqual([]);
    expect(relay!.stats().stunAnswered).toBe(2);
  });

  it('refuses keys the allow hook refuses, over UDP and TCP', async () => {
    const allowed = Identity.generate();
    const info = await start({ allow: (k) => (Buffer.from(k).equals(Buffer.from(allowed.publicKey)) ? ['n'] : null) });
    const ok = await agent(info, { identity: allowed });
    const no = await agent(info);
    const noTcp = await agent({ udp: `127.0.0.1:${await deadUdpPort()}`, tcp: info.tcp }, { udpTimeoutMs: 200 });
    await waitState(ok, 'udp');
    await waitFor(() => (relay!.stats().dropped['not-allowed'] ?? 0) >= 2, { intervalMs: 10 });
    expect(no.client.state).not.toBe('udp');
    expect(noTcp.client.state).not.toBe('tcp');
    expect(relay!.stats().clients).toBe(1);
  });

  it('acks a re-hello of a session on its own address without a signature check, and checks hellos from elsewhere', async () => {
    await start();
    const port = relay!.udpPort;
    const raw = await rawSocket();
    const other = await rawSocket();
    closers.push(raw.close, other.close);
    const me = Identity.generate();
    const ch = await raw.challenge(port);
    raw.send(encodeHello(me, Date.now(), 0, UNNAMED, ch), port);
    await waitFor(() => raw.inbox.length === 1, { intervalMs: 10 });
    expect(raw.inbox[0][0]).toBe(FRAME_HELLO_ACK);
    expect(relay!.stats().helloVerifications).toBe(1);

    // Same key, same address, a garbage signature: acked as is (it changes nothing), not verified.
    const again = encodeHello(me, Date.now() + 1, 0, UNNAMED, ch);
    again.fill(7, HELLO_SIZE - 64);
    raw.send(again, port);
    await waitFor(() => raw.inbox.length === 2, { intervalMs: 10 });
    expect(raw.inbox[1][0]).toBe(FRAME_HELLO_ACK);
    expect(relay!.stats().helloVerifications).toBe(1);

    // The same hello from another address would move the session: its challenge is not for that address,
    // so it is refused before its signature is looked at, and answered with that address's own challenge.
    other.send(again, port);
    await waitFor(() => other.inbox.length === 1, { intervalMs: 10 });
    expect(other.inbox[0][0]).toBe(FRAME_CHALLENGE);
    expect(relay!.stats()).toMatchObject({ clients: 1, helloVerifications: 1, dropped: { 'bad-challenge': 1 } });
    // Forged over the other address's own challenge: checked and refused.
    other.inbox.length = 0;
    const forged = encodeHello(me, Date.now() + 2, 0, UNNAMED, await other.challenge(port));
    forged.fill(7, HELLO_SIZE - 64);
    other.send(forged, port);
    await waitFor(() => other.inbox.length === 1, { intervalMs: 10 });
    expect([other.inbox[0][0], other.inbox[0][1]]).toEqual([FRAME_NOTICE, NOTICE_BAD_SIGNATURE]);
    expect(relay!.stats()).toMatchObject({ clients: 1, helloVerifications: 2 });
  });

  it('checks at most a per-source budget of signatures for one source; another source still gets its hello checked and acked', async () => {
    await start();
    const port = relay!.udpPort;
    const flooder = await rawSocket('127.0.0.1');
    closers.push(flooder.close);
    const template = encodeHello(Identity.generate(), Date.now(), 0, UNNAMED, await flooder.challenge(port));
    const FLOOD = 3000;
    for (let i = 0; i < FLOOD; i++) {
      const f = Buffer.concat([template.subarray(0, 3), randomBytes(32), template.subarray(35)]);
      flooder.send(f, port);
      if (i % 500 === 499) await sleep(5); // stay within the socket buffers: every hello reaches the relay
    }
    const handled = () => Object.values(relay!.stats().dropped).reduce((a, b) => a + (b ?? 0), 0);
    await waitFor(() => handled() >= FLOOD * 0.9, { intervalMs: 20, what: `flood handled (${handled()})` });
    const { helloVerifications, dropped } = relay!.stats();
    console.log(`hello flood from one source: ${FLOOD} hellos, ${helloVerifications} signatures checked, ${dropped['hello-source-rate'] ?? 0} shed by the source budget`);
    expect(helloVerifications).toBeLessThanOrEqual(HELLO_VERIFY_BURST_PER_SOURCE + 50);
    const agent = await agentFrom('127.0.0.2');
    await waitState(agent, 'udp', 3000);
    expect(relay!.stats().helloVerifications).toBe(helloVerifications + 1);
  });

  it('answers STUN at a budget per source', async () => {
    await start();
    const raw = await rawSocket();
    closers.push(raw.close);
    for (let i = 0; i < 1000; i++) raw.send(buildBindingRequest(newTransactionId()), relay!.udpPort);
    await sleep(300);
    console.log(`STUN flood from one source: 1000 requests, ${raw.inbox.length} answers`);
    expect(raw.inbox.length).toBeGreaterThan(0);
    expect(raw.inbox.length).toBeLessThanOrEqual(STUN_BURST_PER_SOURCE + 50);
  });

  it('answers STUN within a total budget: sources invented for a reflection do not add up past it', async () => {
    await start();
    // 130 loopback sources, each within its own burst (100), 13,000 requests in all: past the total burst.
    const sources = await Promise.all(Array.from({ length: 130 }, (_, i) => rawSocket(`127.0.3.${i + 1}`)));
    for (const s of sources) closers.push(s.close);
    const started = performance.now();
    for (let round = 0; round < 50; round++) {
      for (const s of sources) for (let k = 0; k < 2; k++) s.send(buildBindingRequest(newTransactionId()), relay!.udpPort);
      await sleep(2); // the kernel's receive buffer holds a few hundred datagrams: rounds, so they reach the relay
    }
    const stunHandled = () => relay!.stats().stunAnswered + (relay!.stats().dropped['stun-rate'] ?? 0) + (relay!.stats().dropped['stun-source-rate'] ?? 0);
    await waitFor(() => stunHandled() >= 13_000 * 0.9, { intervalMs: 20, what: `STUN flood handled (${stunHandled()})` });
    const seconds = (performance.now() - started) / 1000;
    const { stunAnswered, dropped } = relay!.stats();
    console.log(`STUN from 130 sources: 13,000 requests in ${seconds.toFixed(2)} s, ${stunAnswered} answered, ${dropped['stun-rate'] ?? 0} refused by the total budget`);
    expect(stunAnswered).toBeLessThanOrEqual(STUN_BURST + STUN_RATE * seconds + 100);
    expect(dropped['stun-rate']).toBeGreaterThan(0);
    expect(dropped['stun-source-rate'] ?? 0).toBe(0);
  });

  it('an agent with a session here is answered STUN while strangers keep the total budget drained', async () => {
    const info = await start();
    const member = await agent(info);
    await waitState(member, 'udp');
    let memberAnswers = 0;
    member.socket.on('message', (m) => void (parseBindingResponse(m, 0, m.length) && memberAnswers++));
    // 250 sources within their own budgets (40/s each): 10,000/s in all, twice the total's refill.
    const sources = await Promise.all(Array.from({ length: 250 }, (_, i) => rawSocket(`127.0.4.${i + 1}`)));
    for (const s of sources) closers.push(s.close);
    const rounds = 80;
    for (let round = 0; round < rounds; round++) {
      // The member's request after the strangers' first 300: past what the total refilled since the last round.
      sources.forEach((s, i) => {
        if (i === 150) member.socket.send(buildBindingRequest(newTransactionId()), round % 2 ? relay!.udpPort : relay!.stunSecondPort, '127.0.0.1');
        for (let k = 0; k < 2; k++) s.send(buildBindingRequest(newTransactionId()), relay!.udpPort);
      });
      await sleep(50);
    }
    await sleep(200);
    const { dropped, stunAnswered } = relay!.stats();
    const handled = stunAnswered + (dropped['stun-rate'] ?? 0) + (dropped['stun-source-rate'] ?? 0);
    console.log(`STUN while 250 strangers drain the total: the member got ${memberAnswers} of ${rounds} answers; of ${rounds * 501} requests ${handled} reached the relay, ${dropped['stun-rate'] ?? 0} refused by the total`);
    expect(dropped['stun-rate']).toBeGreaterThan(0);
    expect(memberAnswers).toBeGreaterThanOrEqual(rounds - 2);
  });

  it('asks the allow hook again at each sweep: a key moved to another network, or refused, is cut off', async () => {
    const networks = new Map<string, string[]>();
    const info = await start({ allow: (k) => networks.get(Buffer.from(k).toString('hex')) ?? null });
    const [x, y, z] = [Identity.generate(), Identity.generate(), Identity.generate()];
    for (const id of [x, y, z]) networks.set(Buffer.from(id.publicKey).toString('hex'), ['red']);
    const [a, b, c] = [await agent(info, { identity: x }), await agent(info, { identity: y }), await agent(info, { identity: z })];
    for (const t of [a, b, c]) await waitState(t, 'udp');
    a.client.send(b.wgKey, Buffer.from('before'));
    await waitFor(() => b.received.length === 1, { intervalMs: 10 });

    networks.set(Buffer.from(y.publicKey).toString('hex'), ['blue']);
    networks.delete(Buffer.from(z.publicKey).toString('hex'));
    await waitFor(() => relay!.stats().clients === 2, { timeoutMs: SWEEP_INTERVAL_MS + 2000, intervalMs: 50, what: 'the refused key forgotten' });
    a.client.send(b.wgKey, Buffer.from('after'));
    await waitFor(() => a.notHere.length === 1, { intervalMs: 10 });
    expect(b.received.length).toBe(1);
    expect(relay!.stats().dropped['other-network']).toBe(1);
  });
});
