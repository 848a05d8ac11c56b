import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Identity } from '../../src/identity/identity.js';
import { waitFor } from '../../src/lab/index.js';
import { RegistryClient } from '../../src/registry/client.js';
import { startRegistry, type RunningRegistry } from '../../src/registry/server.js';
import { buildBindingRequest, newTransactionId, parseBindingResponse } from '../../src/paths/stun.js';
import { rawSocket, startAgent, waitState, type TestAgent } from './harness.js';

describe('relay built into the registry', () => {
  let dir: string;
  let reg: RunningRegistry;
  const agents: TestAgent[] = [];
  const clients: RegistryClient[] = [];

  beforeEach(async () => {
    dir = mkdtempSync(join(tmpdir(), 'agentvpn-registry-relay-'));
    reg = await startRegistry({ db: join(dir, 'registry.db'), listen: '127.0.0.1:0' });
  });

  afterEach(async () => {
    for (const a of agents.splice(0)) a.close();
    for (const c of clients.splice(0)) c.close();
    await reg.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  async function member(): Promise<{ identity: Identity; join: Awaited<ReturnType<RegistryClient['join']>> }> {
    const identity = Identity.generate();
    const client = new RegistryClient({ url: reg.url, identity, network: 'default', timeoutMs: 5000 });
    clients.push(client);
    return { identity, join: await client.join(`agent-${clients.length}`, await reg.createToken()) };
  }

  it('runs on the HTTP port number, tells joining agents where it is, and serves members over UDP and TCP', async () => {
    expect(reg.relay?.udpPort).toBe(reg.port);
    const m1 = await member();
    const m2 = await member();
    expect(m1.join.relays).toEqual([{ udp: `127.0.0.1:${reg.port}`, tcp: `http://127.0.0.1:${reg.port}/v1/relay` }]);
    expect(m1.join.stun).toEqual([`127.0.0.1:${reg.port}`, `127.0.0.1:${reg.port + 1}`]);

    const a = await startAgent(m1.join.relays[0], { identity: m1.identity });
    // m2 cannot use UDP (wrong port): it must come in over the registry's HTTP port.
    const b = await startAgent({ udp: '127.0.0.1:9', tcp: m1.join.relays[0].tcp }, { identity: m2.identity, udpTimeoutMs: 200 });
    agents.push(a, b);
    await waitState(a, 'udp');
    await waitState(b, 'tcp');
    a.client.send(b.wgKey, Buffer.from('over the registry'));
    await waitFor(() => b.received.length === 1, { intervalMs: 10 });
    b.client.send(a.wgKey, Buffer.from('and back'));
    await waitFor(() => a.received.length === 1, { intervalMs: 10 });
    expect(reg.relay!.stats()).toMatchObject({ clients: 2, forwardedPackets: 2 });

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
    const strangerTcp = await startAgent({ udp: '127.0.0.1:9', tcp: info.tcp }, { udpTimeoutMs: 200 });
    agents.push(stranger, strangerTcp);
    await waitFor(() => (reg.relay!.stats().dropped['not-allowed'] ?? 0) >= 2, { intervalMs: 20, what: 'refused hellos' });
    expect(stranger.client.state).not.toBe('udp');
    expect(strangerTcp.client.state).not.toBe('tcp');
    expect(reg.relay!.stats().clients).toBe(0);
    const ok = await startAgent(info, { identity: m.identity });
    agents.push(ok);
    await waitState(ok, 'udp');
  });

  it('can be turned off', async () => {
    await reg.stop();
    reg = await startRegistry({ db: join(dir, 'registry.db'), listen: '127.0.0.1:0', relay: false });
    expect(reg.relay).toBeNull();
    const m = await member();
    expect(m.join).toMatchObject({ relays: [], stun: [] });
  });
});
