import { Registry } from 'prom-client';
import { afterAll, describe, expect, it } from 'vitest';
import { registerRelayMetrics } from '../../src/metrics/relay.js';
import { startRelay, type RunningRelay } from '../../src/relay/server.js';
import { waitFor } from '../../src/lab/index.js';
import { startAgent, waitState, type TestAgent } from '../relay/harness.js';
import { valueOf } from './exposition.js';

describe('relay metrics over a real relay', () => {
  let relay: RunningRelay | null = null;
  const agents: TestAgent[] = [];
  afterAll(async () => {
    for (const a of agents) a.close();
    await relay?.stop();
  });

  it('sessions, forwarded packets and bytes, and drops by reason, read from the relay at scrape time', async () => {
    relay = await startRelay({ udp: { host: '127.0.0.1', port: 0 } });
    const registry = new Registry();
    registerRelayMetrics(registry, () => relay!.stats());
    const info = { udp: `127.0.0.1:${relay.udpPort}` };
    const a = await startAgent(info);
    const b = await startAgent(info);
    agents.push(a, b);
    await waitState(a, 'udp');
    await waitState(b, 'udp');
    for (let i = 0; i < 20; i++) a.client.send(b.wgKey, Buffer.alloc(100, i));
    a.client.send(Buffer.alloc(32, 9), Buffer.from('nobody')); // a key that is not here
    await waitFor(() => b.received.length === 20, { timeoutMs: 5_000, what: 'b got 20 packets' });
    await waitFor(() => (relay!.stats().dropped['peer-not-here'] ?? 0) === 1, { timeoutMs: 5_000, what: 'the stranger counted' });
    const text = await registry.metrics();
    console.log(`relay: ${valueOf(text, 'agentvpn_relay_forwarded_packets_total')} packets, ${valueOf(text, 'agentvpn_relay_forwarded_bytes_total')} bytes forwarded`);
    expect(valueOf(text, 'agentvpn_relay_sessions', { transport: 'udp' })).toBe(2);
    expect(valueOf(text, 'agentvpn_relay_sessions', { transport: 'tcp' })).toBe(0);
    expect(valueOf(text, 'agentvpn_relay_sessions_opened_total')).toBe(2);
    expect(valueOf(text, 'agentvpn_relay_forwarded_packets_total')).toBe(20);
    expect(valueOf(text, 'agentvpn_relay_forwarded_bytes_total')).toBe(2000);
    expect(valueOf(text, 'agentvpn_relay_hello_verifications_total')).toBeGreaterThanOrEqual(2);
    expect(valueOf(text, 'agentvpn_relay_drops_total', { reason: 'peer-not-here' })).toBe(1);
    expect(valueOf(text, 'agentvpn_relay_drops_total', { reason: 'garbage' })).toBe(0);
  });
});
