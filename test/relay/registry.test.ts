import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Identity } from '../../src/identity/identity.js';
import { waitFor } from '../../src/lab/index.js';
import { RegistryClient } from '../../src/registry/client.js';
import { startRegistryWithRelay, type RunningRegistryWithRelay } from '../../src/cli/registry-with-relay.js';
import { startRegistry, type RunningRegistry } from '../../src/registry/server.js';
import { buildBindingRequest, newTransactionId, parseBindingResponse } from '../../src/net/stun.js';
import { encodeHello } from '../../src/relay/protocol.js';
import { relayNameHash } from '../../src/relay/relay-name.js';
import { idleConnections } from '../registry/hostile-helpers.js';
import { rawSocket, sleep, startAgent, waitState, type TestAgent } from './harness.js';

/** A UDP socket on a port whose TCP number is free (other tests on this machine hold ports too): tried a few times. */
async function udpTakenTcpFree(): Promise<{ squatter: Awaited<ReturnType<typeof rawSocket>>; taken: number }> {
  for (let i = 0; i < 20; i++) {
    const squatter = await rawSocket();
    const tcp = createServer();
    const free = await new Promise<boolean>((resolve) => tcp.once('error', () => resolve(false)).listen(squatter.port, '127.0.0.1', () => resolve(true)));
    if (free) {
      await new Promise<void>((resolve) => tcp.close(() => resolve()));
      return { squatter, taken: squatter.port };
    }
    squatter.close();
  }
  throw new Error('no UDP port with a free TCP number in 20 tries');
}

describe('relay built into the registry', () => {
  let dir: string;
  let reg: RunningRegistryWithRelay | RunningRegistry;
  const agents: TestAgent[] = [];
  const clients: RegistryClient[] = [];

  beforeEach(async () => {
    dir = mkdtempSync(join(tmpdir(), 'agentvpn-registry-relay-'));
    reg = await startRegistryWithRelay({ db: join(dir, 'registry.db'), listen: '127.0.0.1:0' });
  });

  afterEach(async () => {
    for (const a of agents.splice(0)) a.close();
    for (const c of clients.splice(0)) c.close();
    await reg.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  /** The relay beside the registry (all tests but the last). */
  const relay = () => (reg as RunningRegistryWithRelay).relay;

  async function member(network = 'default', identity = Identity.generate()): Promise<{ identity: Identity; join: Awaited<ReturnType<RegistryClient['join']>> }> {
    const client = new RegistryClient({ url: reg.url, identity, network, timeoutMs: 5000 });
    clients.push(client);
    return { identity, join: await client.join(`agent-${clients.length}`, await reg.createToken({ network })) };
  }

  it('runs on the HTTP port number, tells joining agents where it is, and serves members over UDP and TCP', async () => {
    expect(relay().udpPort).toBe(reg.port);
    const m1 = await member();
    const m2 = await member();
    expect(m1.join.relays).toEqual([{ udp: `127.0.0.1:${reg.port}`, tcp: `http://127.0.0.1:${reg.port}/v1/relay`, name: 'registry', region: 'default' }]);
    expect(m1.join.stun).toEqual([`127.0.0.1:${reg.port}`, `127.0.0.1:${reg.port + 1}`]);

    const a = await startAgent(m1.join.relays[0], { identity: m1.identity });
    // m2 cannot use UDP (wrong port): it must come in over the registry's HTTP port.
    const b = await startAgent({ ...m1.join.relays[0], udp: '127.0.0.1:9' }, { identity: m2.identity, udpTimeoutMs: 200 });
    agents.push(a, b);
    await waitState(a, 'udp');
    await waitState(b, 'tcp');
    a.client.send(b.wgKey, Buffer.from('over the registry'));
    await waitFor(() => b.received.length === 1, { intervalMs: 10 });
    b.client.send(a.wgKey, Buffer.from('and back'));
    await waitFor(() => a.received.length === 1, { intervalMs: 10 });
    expect(relay().stats()).toMatchObject({ clients: 2, forwardedPackets: 2 });

    // STUN on both ports, answered with our loopback address.
    const raw = await rawSocket();
    try {
      for (const port of [reg.port, reg.port + 1]) {
        raw.send(buildBindingRequest(newTransactionId()), port);
        await waitFor(() => raw.inbox.length > 0, { intervalMs: 10 });
        const ans = raw.inbox.shift()!;
        expect(parseBindingResponse(ans, 0, ans.length)?.port).toBe(raw.port);
      }
    } finally {
      raw.close();
    }
  });

  it('refuses agents that have not joined the network', async () => {
    const m = await member();
    const info = m.join.relays[0];
    const stranger = await startAgent(info);
    const strangerTcp = await startAgent({ ...info, udp: '127.0.0.1:9' }, { udpTimeoutMs: 200 });
    agents.push(stranger, strangerTcp);
    await waitFor(() => (relay().stats().dropped['not-allowed'] ?? 0) >= 2, { intervalMs: 20, what: 'refused hellos' });
    expect(stranger.client.state).not.toBe('udp');
    expect(strangerTcp.client.state).not.toBe('tcp');
    expect(relay().stats().clients).toBe(0);
    const ok = await startAgent(info, { identity: m.identity });
    agents.push(ok);
    await waitState(ok, 'udp');
  });

  it('forwards only within a network: a member of one network cannot reach a member of another (counted, told "not here")', async () => {
    const a1 = await member('default');
    const a2 = await member('default');
    const b1 = await member('blue');
    const info = a1.join.relays[0];
    const [x, y, z] = [await startAgent(info, { identity: a1.identity }), await startAgent(info, { identity: a2.identity }), await startAgent(info, { identity: b1.identity })];
    agents.push(x, y, z);
    for (const agent of [x, y, z]) await waitState(agent, 'udp');

    // Across networks: dropped, and the sender hears the same "not here" as for an absent key.
    for (let i = 0; i < 20; i++) x.client.send(z.wgKey, Buffer.from(`to the other network ${i}`));
    z.client.send(x.wgKey, Buffer.from('back across'));
    // Within a network: delivered.
    x.client.send(y.wgKey, Buffer.from('same network'));
    await waitFor(() => y.received.length === 1 && (x.notHere.length > 0 || z.received.length > 0) && (z.notHere.length > 0 || x.received.length > 0),
      { intervalMs: 10, what: 'the frames handled' });
    await sleep(100);
    const crossed = z.received.length + x.received.length;
    console.log(`network separation: ${crossed} of 21 cross-network frames delivered, ${relay().stats().dropped['other-network'] ?? 0} dropped as other-network`);
    expect(crossed).toBe(0);
    expect(x.notHere[0].equals(z.wgKey)).toBe(true);
    expect(relay().stats()).toMatchObject({ forwardedPackets: 1, dropped: { 'other-network': 21 } });

    // An agent that joined both networks reaches members of each.
    const both = await member('default');
    await member('blue', both.identity);
    const w = await startAgent(info, { identity: both.identity });
    agents.push(w);
    await waitState(w, 'udp');
    w.client.send(x.wgKey, Buffer.from('to default'));
    w.client.send(z.wgKey, Buffer.from('to blue'));
    await waitFor(() => x.received.length === 1 && z.received.length === 1, { intervalMs: 10, what: 'frames from the agent in both networks' });
  });

  it('refuses hellos with keys of no member without checking their signatures', async () => {
    const m = await member();
    const raw = await rawSocket();
    try {
      const hello = encodeHello(Identity.generate(), Date.now(), 0, relayNameHash(m.join.relays[0].name ?? ''), await raw.challenge(reg.port));
      for (let i = 0; i < 2000; i++) raw.send(Buffer.concat([hello.subarray(0, 3), randomBytes(32), hello.subarray(35)]), reg.port);
      const handled = () => Object.values(relay().stats().dropped).reduce((a, b) => a + (b ?? 0), 0);
      await waitFor(() => handled() >= 1900, { intervalMs: 20, what: `refused hellos (${handled()})` });
      console.log(`hellos with 2000 random keys: ${relay().stats().helloVerifications} signatures checked`);
      expect(relay().stats().helloVerifications).toBe(0);
      const ok = await startAgent(m.join.relays[0], { identity: m.identity });
      agents.push(ok);
      await waitState(ok, 'udp');
      expect(relay().stats().helloVerifications).toBe(1);
    } finally {
      raw.close();
    }
  });

  it('counts a relay TCP session as held once it said hello: an idle flood past its address\'s cap evicts the flood, not the session', async () => {
    const m1 = await member();
    const m2 = await member();
    const a = await startAgent(m1.join.relays[0], { identity: m1.identity });
    // b over TCP only (its UDP goes nowhere): its session is a connection to the registry's HTTP port, from 127.0.0.1.
    const b = await startAgent({ ...m1.join.relays[0], udp: '127.0.0.1:9' }, { identity: m2.identity, udpTimeoutMs: 200 });
    agents.push(a, b);
    await waitState(b, 'tcp');
    const flood = await idleConnections(reg.port, 300, '127.0.0.1');
    await sleep(500);
    const stats = reg.stats().connections;
    a.client.send(b.wgKey, Buffer.from('after the flood'));
    await waitFor(() => b.received.length === 1, { intervalMs: 10, timeoutMs: 5_000, what: 'a frame over the TCP session' });
    console.log(`after 300 idle connections from the TCP session's address: guard ${JSON.stringify(stats)}; the session still carries frames`);
    for (const s of flood) s.destroy();
    expect(stats.evictedPerAddress).toBeGreaterThan(0);
    expect(b.received[0].packet.toString()).toBe('after the flood');
  });

  it('refuses a chosen port whose UDP number another process holds, and leaves the registry stopped', async () => {
    const { squatter, taken } = await udpTakenTcpFree();
    try {
      await expect(startRegistryWithRelay({ db: join(dir, 'other.db'), listen: `127.0.0.1:${taken}` }))
        .rejects.toMatchObject({ code: 'LISTEN_FAILED', message: expect.stringContaining('relay cannot bind UDP') });
      // The registry it had started was stopped: its HTTP port is free for the next one.
      const again = await startRegistry({ db: join(dir, 'other.db'), listen: `127.0.0.1:${taken}` });
      expect(again.port).toBe(taken);
      await again.stop();
    } finally {
      squatter.close();
    }
  });

  it('is not there when the registry runs alone', async () => {
    await reg.stop();
    reg = await startRegistry({ db: join(dir, 'registry.db'), listen: '127.0.0.1:0' });
    expect(reg.stats().relay).toBeNull();
    const m = await member();
    expect(m.join).toMatchObject({ relays: [], stun: [] });
  });
});
