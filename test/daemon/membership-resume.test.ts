// The daemon's membership after a blip: its event stream resumes (no snapshot, no re-publish of
// our record), and a watcher it starts again while the old one waits in its backoff resumes too.
// After a registry restart it resumes by view digest: no snapshot, and no re-publish unless the
// registry came back without our record. A real registry on loopback (behind a TCP proxy the
// test cuts); the real client and Membership.
import Database from 'better-sqlite3';
import { afterEach, expect, it } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import pino from 'pino';
import { noAudit } from '../../src/audit/sink.js';
import { Membership, type FleetEvents } from '../../src/daemon/membership.js';
import { Identity } from '../../src/identity/identity.js';
import { RegistryClient } from '../../src/registry/client.js';
import { startRegistry, type RunningRegistry } from '../../src/registry/server.js';
import { cutProxy, type CutProxy } from '../registry/cut-proxy.js';
import { makeAgent, type TestAgent } from '../registry/hostile-helpers.js';
import { waitFor } from '../../src/lab/proc.js';

const NET = 'resume-net';
let dir: string;
let reg: RunningRegistry | undefined;
let proxy: CutProxy | undefined;
const cleanups: Array<() => unknown> = [];

afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
  proxy?.close();
  await reg?.stop();
  rmSync(dir, { recursive: true, force: true });
});

it('a blip resumes the stream without a snapshot or a re-publish, and so does a watcher started again', async () => {
  dir = mkdtempSync(join(tmpdir(), 'agentvpn-membership-'));
  reg = await startRegistry({ db: join(dir, 'registry.db'), network: NET });
  const token = await reg.createToken({ network: NET });
  const peers: TestAgent[] = [];
  for (let i = 0; i < 3; i++) peers.push(await makeAgent(reg.url, NET, `peer-${i}`, token));
  cleanups.push(() => peers.forEach((p) => p.client.close()));
  proxy = await cutProxy(reg.port);

  const identity = Identity.generate();
  const client = new RegistryClient({ url: proxy.url, identity, network: NET });
  cleanups.push(() => client.close());
  const membership = new Membership({
    client, identity, name: 'me', token, network: NET, capabilities: [], stateDir: dir, log: pino({ level: 'silent' }),
    endpoints: () => ['192.0.2.20:51820'], audit: noAudit,
  });
  cleanups.push(() => membership.stop());
  await membership.join();
  await membership.publish();
  // Our record as the registry holds it.
  const ourSeq = async () => (await peers[0].client.get('me')).record.seq;
  const seqBefore = await ourSeq();
  const counts = { snapshot: 0, agent: 0 };
  const events: FleetEvents = { snapshot: () => counts.snapshot++, agent: () => counts.agent++, removed: () => {}, gone: () => {}, policy: () => {} };
  membership.watch(events);
  await waitFor(() => counts.snapshot === 1 && membership.registryUp, { what: 'the snapshot', intervalMs: 20 });
  // A snapshot is followed by a publish (the registry may have restarted without our record).
  let seqAfterSnapshot = seqBefore;
  for (let i = 0; i < 250 && seqAfterSnapshot === seqBefore; i++, await sleep(20)) seqAfterSnapshot = await ourSeq();
  expect(seqAfterSnapshot).toBeGreaterThan(seqBefore);

  proxy.cut();
  await waitFor(() => reg!.stats().streams.resumed === 1 && membership.registryUp, { what: 'the resume', intervalMs: 20 });
  // The membership starts its watcher again (what a heartbeat does while the stream waits in its backoff).
  membership.watch(events);
  await waitFor(() => reg!.stats().streams.resumed === 2, { what: 'the second resume', intervalMs: 20 });
  await sleep(300);
  console.log(`fleet events ${JSON.stringify(counts)}; our record seq ${seqAfterSnapshot} -> ${await ourSeq()}; registry streams ${JSON.stringify(reg.stats().streams)}`);
  expect(counts.snapshot).toBe(1);
  expect(await ourSeq()).toBe(seqAfterSnapshot);
});

it('after a registry restart the stream resumes by digest: no snapshot, no re-publish; a registry back without our record gets it again', async () => {
  dir = mkdtempSync(join(tmpdir(), 'agentvpn-membership-'));
  const db = join(dir, 'registry.db');
  reg = await startRegistry({ db, network: NET });
  const port = reg.port;
  const token = await reg.createToken({ network: NET });
  const peers: TestAgent[] = [];
  for (let i = 0; i < 5; i++) peers.push(await makeAgent(reg.url, NET, `peer-${i}`, token));
  cleanups.push(() => peers.forEach((p) => p.client.close()));
  const identity = Identity.generate();
  const client = new RegistryClient({ url: reg.url, identity, network: NET });
  cleanups.push(() => client.close());
  const membership = new Membership({
    client, identity, name: 'me', token, network: NET, capabilities: [], stateDir: dir, log: pino({ level: 'silent' }),
    endpoints: () => ['192.0.2.21:51820'], audit: noAudit,
  });
  cleanups.push(() => membership.stop());
  await membership.join();
  const counts = { snapshot: 0, gone: 0 };
  const events: FleetEvents = { snapshot: () => counts.snapshot++, agent: () => {}, removed: () => {}, gone: () => counts.gone++, policy: () => {} };
  membership.watch(events);
  const ourSeq = async () => (await peers[0].client.get('me').catch(() => null))?.record.seq ?? 0;
  let seq = 0;
  for (let i = 0; i < 250 && seq === 0; i++, await sleep(20)) seq = await ourSeq(); // the publish after the snapshot
  await waitFor(() => counts.snapshot === 1 && seq > 0, { what: 'the snapshot', intervalMs: 20 });

  const restart = async (meanwhile: () => void) => {
    await reg!.stop();
    meanwhile();
    reg = await startRegistry({ db, network: NET, listen: `127.0.0.1:${port}` });
  };
  await restart(() => {});
  await waitFor(() => reg!.stats().streams.digestResumed === 1 && membership.registryUp, { what: 'the resume by digest', intervalMs: 20 });
  await sleep(500);
  const seqAfterRestart = await ourSeq();
  // Restored from a backup taken before our record was stored: the registry no longer has it.
  await restart(() => {
    const raw = new Database(db);
    raw.prepare('DELETE FROM records WHERE id = ?').run(identity.id);
    raw.close();
  });
  await waitFor(() => reg!.stats().streams.digestResumed === 1 && membership.registryUp, { what: 'the resume by digest', intervalMs: 20 });
  let seqAfterLoss = 0;
  for (let i = 0; i < 250 && seqAfterLoss === 0; i++, await sleep(20)) seqAfterLoss = await ourSeq();
  console.log(`fleet events ${JSON.stringify(counts)}; our record seq ${seq} -> ${seqAfterRestart} (restart) -> ${seqAfterLoss} (restart without it); streams ${JSON.stringify(reg.stats().streams)}`);
  expect(counts.snapshot).toBe(1);
  expect(seqAfterRestart).toBe(seq);
  expect(seqAfterLoss).toBeGreaterThan(seq);
  expect(counts.gone).toBe(0); // our own record missing is ours to publish, not a peer gone
});
