// A join answer is checked before its addresses go on the TUN: the agent routes its whole pool
// into the tunnel, so a registry that answers with a pool of public addresses (8.0.0.0/8) could
// take the host's traffic for 8.8.8.8, and a ULA /48 other than the network's would route
// another range. A fake registry on loopback answers the real client and Membership; the real
// registry refuses such a pool when it starts.
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { afterEach, expect, it } from 'vitest';
import { noAudit } from '../../src/audit/sink.js';
import { Membership } from '../../src/daemon/membership.js';
import { networkUlaPrefix, overlayIPv6 } from '../../src/identity/addresses.js';
import { Identity } from '../../src/identity/identity.js';
import { formatAddress, formatPrefix } from '../../src/ip/prefix.js';
import { RegistryClient } from '../../src/registry/client.js';
import { startRegistry } from '../../src/registry/server.js';

const NET = 'joincheck';
const cleanups: Array<() => unknown> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

/** Joins through a registry that answers with `answer` over the right addresses; resolves to the error code, or "ok". */
async function joinWith(answer: Record<string, unknown>): Promise<string> {
  const identity = Identity.generate();
  const good = { network: NET, ipv4: '100.64.0.5', ipv6: formatAddress(overlayIPv6(NET, identity.idKey)), ulaPrefix: formatPrefix(networkUlaPrefix(NET)), pool: '100.64.0.0/10' };
  const server: Server = createServer((_req, res) => res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ ok: true, ...good, ...answer })));
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const dir = mkdtempSync(join(tmpdir(), 'agentvpn-join-'));
  const client = new RegistryClient({ url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, identity, network: NET });
  cleanups.push(() => new Promise((r) => server.close(r)), () => rmSync(dir, { recursive: true, force: true }), () => client.close());
  const membership = new Membership({
    client, identity, name: 'me', token: 't', network: NET, capabilities: [], stateDir: dir, log: pino({ level: 'silent' }), endpoints: () => [], audit: noAudit,
  });
  return membership.join().then(() => 'ok', (e: { code?: string }) => e.code ?? 'error');
}

it('a pool of public addresses, or another ULA /48, is refused (BAD_JOIN); shared and private pools are taken', async () => {
  const answers: Array<[string, Record<string, unknown>, string]> = [
    ['100.64.0.0/10', {}, 'ok'],
    ['10.0.0.0/8', { pool: '10.0.0.0/8', ipv4: '10.1.2.3' }, 'ok'],
    ['192.168.7.0/24', { pool: '192.168.7.0/24', ipv4: '192.168.7.9' }, 'ok'],
    ['8.0.0.0/8 (holds 8.8.8.8)', { pool: '8.0.0.0/8', ipv4: '8.8.4.4' }, 'BAD_JOIN'],
    ['1.1.1.0/24', { pool: '1.1.1.0/24', ipv4: '1.1.1.7' }, 'BAD_JOIN'],
    ['100.0.0.0/8 (past the shared space)', { pool: '100.0.0.0/8', ipv4: '100.64.0.5' }, 'BAD_JOIN'],
    ['172.0.0.0/8 (past 172.16/12)', { pool: '172.0.0.0/8', ipv4: '172.16.0.5' }, 'BAD_JOIN'],
    ['a ULA /48 of another network', { ulaPrefix: formatPrefix(networkUlaPrefix('other')) }, 'BAD_JOIN'],
    ['another network', { network: 'other' }, 'BAD_JOIN'],
  ];
  const got: Record<string, string> = {};
  for (const [what, answer] of answers) got[what] = await joinWith(answer);
  console.log(`join answers: ${JSON.stringify(got)}`);
  expect(got).toEqual(Object.fromEntries(answers.map(([what, , want]) => [what, want])));
});

it('the registry refuses to start with a pool outside shared or private space, with a hint', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'agentvpn-join-'));
  cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
  const failed = await startRegistry({ db: join(dir, 'r.db'), network: NET, pool: '8.0.0.0/8' }).then(async (r) => {
    await r.stop();
    return null;
  }, (e: { code?: string; hint?: string }) => e);
  console.log(`--pool 8.0.0.0/8: ${failed?.code}: ${failed?.hint}`);
  expect(failed?.code).toBe('BAD_POOL');
  expect(failed?.hint).toMatch(/100\.64\.0\.0\/10/);
});
