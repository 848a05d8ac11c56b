// Which records become WireGuard peers (src/daemon/admission.ts), against the races and inputs a
// malicious member or registry can bring: a removal that arrives while a peer is being set up
// (its audit entry is written first), two quick key rotations, a liveness event that carries a
// changed record under the old signature, and tags that are not a list. The real Admission, trust
// gate, trust store and audit trail (fsync'd); a daemon stand-in that records its WireGuard peers.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import pino from 'pino';
import { afterEach, expect, it } from 'vitest';
import { Admission, tagsOf } from '../../src/daemon/admission.js';
import { AuditTrail } from '../../src/daemon/audit-trail.js';
import type { Daemon } from '../../src/daemon/daemon.js';
import { overlayIPv6 } from '../../src/identity/addresses.js';
import { Identity } from '../../src/identity/identity.js';
import { formatAddress, parsePrefix } from '../../src/ip/prefix.js';
import type { AgentView } from '../../src/registry/client.js';
import { signRecord } from '../../src/registry/record.js';
import { TrustGate } from '../../src/trust/gate.js';
import { TrustStore } from '../../src/trust/store.js';

const NET = 'adm';
const log = pino({ level: 'silent' });
const cleanups: Array<() => unknown> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

/** An Admission as the fleet agent builds it, with a trail on disk; `peers`: the WireGuard peers (key → allowed IPs). */
async function setup() {
  const dir = mkdtempSync(join(tmpdir(), 'agentvpn-admission-'));
  const me = Identity.generate();
  const trail = await AuditTrail.open(dir, me, log);
  cleanups.push(() => rmSync(dir, { recursive: true, force: true }), () => trail.close());
  const audit = (type: string, subject: string, details: Record<string, unknown>) => trail.record(type, subject, details as never);
  const peers = new Map<string, string[]>();
  const daemon = {
    sock: null,
    removePeer: (k: Uint8Array) => void peers.delete(Buffer.from(k).toString('base64')),
    upsertPeer: async (p: { publicKey: Uint8Array; allowedIps: Array<{ addr: Uint8Array; bits: number }> }) =>
      void peers.set(Buffer.from(p.publicKey).toString('base64'), p.allowedIps.map((a) => `${formatAddress(a.addr)}/${a.bits}`)),
  } as unknown as Daemon;
  const gate = new TrustGate(TrustStore.open(dir, NET), 'tofu', log, audit);
  const self = { id: me.id, name: 'me', network: NET, ipv4: '100.64.0.1', ipv6: formatAddress(overlayIPv6(NET, me.idKey)) };
  const admission = new Admission({ daemon, self, pool: parsePrefix('100.64.0.0/10')!, log, gate, audit });
  return { admission, peers };
}

function viewOf(identity: Identity, name: string, ipv4: string, seq: number, online = true): AgentView {
  const now = Date.now();
  const signed = signRecord(identity, {
    v: 1, network: NET, id: identity.id, name, wgPublicKey: Buffer.from(identity.wgPublicKey).toString('base64'),
    ipv4, ipv6: formatAddress(overlayIPv6(NET, identity.idKey)), endpoints: ['192.0.2.9:51820'], capabilities: [],
    seq, issuedAt: now, expiresAt: now + 3_600_000,
  });
  return { ...signed, ...(identity.chain.length > 1 ? { chain: identity.chain } : {}), online, lastSeen: now, tags: [] };
}

const keyOf = (identity: Identity) => Buffer.from(identity.wgPublicKey).toString('base64');

it('an agent removed while its peer is being set up stays removed: a new peer (audited first) and a routine update', async () => {
  const { admission, peers } = await setup();
  // A new agent and its removal in the same stream chunk: the peer waits for its audit entry.
  const x = Identity.generate();
  admission.applySafely(viewOf(x, 'x', '100.64.0.7', 1));
  admission.remove(x.id);
  // A known agent's new record (no audit entry) and its removal in the same chunk.
  const y = Identity.generate();
  admission.applySafely(viewOf(y, 'y', '100.64.0.8', 1));
  await sleep(200);
  expect(peers.has(keyOf(y))).toBe(true);
  admission.applySafely(viewOf(y, 'y', '100.64.0.8', 2));
  admission.remove(y.id);
  await sleep(200);
  console.log(`WireGuard peers after both removals: ${peers.size}; admitted: ${admission.admitted().length}`);
  expect(peers.size).toBe(0);
  expect(admission.admitted()).toEqual([]);
  // Removed agents come back only with a record the registry sends again.
  admission.applySafely(viewOf(y, 'y', '100.64.0.8', 3));
  await sleep(200);
  expect([...peers.keys()]).toEqual([keyOf(y)]);
});

it('two quick key rotations leave only the current key\'s peer', async () => {
  const { admission, peers } = await setup();
  const k1 = Identity.generate();
  admission.applySafely(viewOf(k1, 'worker', '100.64.0.7', 1));
  await sleep(200);
  const k2 = k1.rotate();
  const k3 = k2.rotate();
  admission.applySafely(viewOf(k2, 'worker', '100.64.0.7', 2));
  admission.applySafely(viewOf(k3, 'worker', '100.64.0.7', 3));
  await sleep(300);
  console.log(`peers: key 1 ${peers.has(keyOf(k1))}, key 2 (rotated out) ${peers.has(keyOf(k2))}, key 3 ${peers.has(keyOf(k3))}`);
  expect([...peers.keys()]).toEqual([keyOf(k3)]);
});

it('a liveness event takes only the liveness: a record changed under the old signature is not believed', async () => {
  const { admission } = await setup();
  const x = Identity.generate();
  const first = viewOf(x, 'worker', '100.64.0.7', 1);
  admission.applySafely(first);
  await sleep(200);
  // A registry sends "offline" with the same signature and a record that now names another agent's address and name.
  admission.applySafely({ ...first, online: false, record: { ...first.record, name: 'db', ipv4: '100.64.0.99' } });
  admission.applySafely({ ...first, online: false });
  await sleep(100);
  const [held] = admission.admitted();
  console.log(`after the events: ${held.record.name} ${held.record.ipv4} online=${held.online}; lookup "db": ${JSON.stringify(admission.lookupName('db'))}`);
  expect({ name: held.record.name, ipv4: held.record.ipv4, online: held.online }).toEqual({ name: 'worker', ipv4: '100.64.0.7', online: false });
  expect(admission.lookupName('db')).toBeNull();
});

it('tags that are not a list of strings count as none', () => {
  const x = Identity.generate();
  const v = viewOf(x, 'x', '100.64.0.7', 1);
  for (const tags of [{}, 'ops', [1, 'ops'], null]) expect(tagsOf({ ...v, tags } as unknown as AgentView)).toEqual([]);
  expect(tagsOf({ ...v, tags: ['ops', 'gpu'] })).toEqual(['ops', 'gpu']);
});
