import { afterEach, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Identity } from '../../src/identity/identity.js';
import { overlayIPv6 } from '../../src/identity/addresses.js';
import { formatAddress } from '../../src/ip/prefix.js';
import { RegistryClient } from '../../src/registry/client.js';
import { canonicalRecordBytes, signRecord, verifyRecord, type AgentRecord } from '../../src/registry/record.js';
import { advertisedRelays, parseRelayPeer } from '../../src/registry/relay-list.js';
import { startRegistryWithRelay, type RunningRegistryWithRelay } from '../../src/cli/registry-with-relay.js';

function recordFor(id: Identity, over: Partial<AgentRecord> = {}): AgentRecord {
  const now = Date.now();
  return {
    v: 1, network: 'lab', id: id.id, name: 'planner', wgPublicKey: Buffer.from(id.wgPublicKey).toString('base64'),
    ipv4: '100.64.0.5', ipv6: formatAddress(overlayIPv6('lab', id.publicKey)), endpoints: ['192.0.2.1:51820'],
    capabilities: [], seq: 1, issuedAt: now, expiresAt: now + 60_000, ...over,
  };
}

describe('the home relay in the signed record', () => {
  it('is optional: a record without it keeps the bytes it was signed with', () => {
    const id = Identity.generate();
    const r = recordFor(id);
    const before = Buffer.from('agentvpn record v1\n' + JSON.stringify(['v', 'network', 'id', 'name', 'wgPublicKey', 'ipv4', 'ipv6', 'endpoints', 'capabilities', 'seq', 'issuedAt', 'expiresAt'].map((f) => r[f as keyof AgentRecord])));
    expect(canonicalRecordBytes(r).equals(before)).toBe(true);
    expect(verifyRecord(signRecord(id, r))).toEqual({ ok: true });
  });

  it('is covered by the signature, and only as a home relay', () => {
    const id = Identity.generate();
    const signed = signRecord(id, recordFor(id, { homeRelay: 'eu1' }));
    expect(verifyRecord(signed)).toEqual({ ok: true });
    // A registry (or anyone between) cannot move an agent to another relay, add one or remove it.
    expect(verifyRecord({ ...signed, record: { ...signed.record, homeRelay: 'evil' } }).problem).toBe('BAD_SIGNATURE');
    const { homeRelay: _dropped, ...without } = signed.record;
    expect(verifyRecord({ ...signed, record: without }).problem).toBe('BAD_SIGNATURE');
    expect(verifyRecord({ ...signRecord(id, recordFor(id)), record: { ...recordFor(id), homeRelay: 'eu1' } }).problem).toBe('BAD_SIGNATURE');
    // The same text as `key` and as `homeRelay` signs different bytes.
    const text = Buffer.alloc(32, 7).toString('base64');
    expect(canonicalRecordBytes(recordFor(id, { key: text })).equals(canonicalRecordBytes(recordFor(id, { homeRelay: text })))).toBe(false);
  });

  it('must be a relay name', () => {
    const id = Identity.generate();
    for (const bad of ['EU', '203.0.113.1:7443', 'x'.repeat(64), 7 as never]) {
      expect(verifyRecord(signRecord(id, recordFor(id, { homeRelay: bad }))).problem).toBe('MALFORMED_RECORD');
    }
  });
});

describe('--relay-peer', () => {
  it('parses a name, an address, a TCP fallback and a region', () => {
    expect(parseRelayPeer('eu1=udp://198.51.100.7:7443,tcp=https://relay-eu.example:443/v1/relay,region=eu-west')).toEqual({
      name: 'eu1', udp: '198.51.100.7:7443', tcp: 'https://relay-eu.example:443/v1/relay', region: 'eu-west',
    });
    expect(parseRelayPeer('v6=udp://[2001:db8::7]:7443')).toEqual({ name: 'v6', udp: '[2001:db8::7]:7443', region: 'default' });
  });

  it('refuses what it cannot use, with a hint', () => {
    for (const bad of ['udp://198.51.100.7:7443', 'Eu=udp://198.51.100.7:7443', 'eu=198.51.100.7:7443', 'eu=udp://198.51.100.7', 'eu=udp://198.51.100.7:7443,tcp=ftp://x',
      'eu=udp://198.51.100.7:7443,region=EU', 'eu=udp://198.51.100.7:7443,color=red']) {
      expect(() => parseRelayPeer(bad), bad).toThrow(expect.objectContaining({ code: 'BAD_RELAY_PEER', hint: expect.stringContaining('NAME=udp://') }));
    }
    const a = parseRelayPeer('a=udp://198.51.100.7:7443');
    expect(() => advertisedRelays({ name: 'a', udp: '203.0.113.1:7443' }, [a])).toThrow(expect.objectContaining({ code: 'BAD_RELAY_PEER' }));
    expect(() => advertisedRelays(null, Array.from({ length: 17 }, (_, i) => parseRelayPeer(`r${i}=udp://198.51.100.7:${7000 + i}`)))).toThrow(/at most 16/);
  });
});

describe('the join answer', () => {
  let dir = '';
  let reg: RunningRegistryWithRelay | null = null;
  afterEach(async () => {
    await reg?.stop();
    reg = null;
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('lists the built-in relay and the standalone ones, named, with their regions', async () => {
    dir = mkdtempSync(join(tmpdir(), 'avpn-relays-'));
    reg = await startRegistryWithRelay({
      db: join(dir, 'r.db'), network: 'lab', relayName: 'home', relayRegion: 'lab-a',
      relayPeers: [parseRelayPeer('r1=udp://198.51.100.7:7443,region=lab-b'), parseRelayPeer('r2=udp://198.51.100.8:7443,tcp=http://198.51.100.8:7443/v1/relay')],
    });
    const identity = Identity.generate();
    const client = new RegistryClient({ url: reg.url, identity, network: 'lab', timeoutMs: 5000 });
    const j = await client.join('planner', await reg.createToken());
    expect(j.relays.map((r) => [r.name, r.region, r.udp])).toEqual([
      ['home', 'lab-a', `127.0.0.1:${reg.relay!.udpPort}`], ['r1', 'lab-b', '198.51.100.7:7443'], ['r2', 'default', '198.51.100.8:7443'],
    ]);
    expect(j.relays[2].tcp).toBe('http://198.51.100.8:7443/v1/relay');
  });
});
