// Kept connections: an agent's heartbeats reuse one connection across the heartbeat interval
// (the registry keeps it two intervals and 5 s), and a kept connection the registry closed as a
// request went out costs a resend, not an outage. Real registry and client on loopback.
import { afterEach, expect, it } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, type AddressInfo, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { Identity } from '../../src/identity/identity.js';
import { RegistryClient } from '../../src/registry/client.js';
import { startRegistry, type RunningRegistry } from '../../src/registry/server.js';
import { cutProxy, type CutProxy } from './cut-proxy.js';
import { makeAgent } from './hostile-helpers.js';

const NET = 'keep-net';
const cleanups: Array<() => unknown> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

it('heartbeats 6 s apart (past the old 5 s keep-alive) go over one connection', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'agentvpn-keepalive-'));
  cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
  const reg: RunningRegistry = await startRegistry({ db: join(dir, 'registry.db'), network: NET }); // 10 s heartbeats: kept 25 s
  cleanups.push(() => reg.stop());
  const token = await reg.createToken({ network: NET });
  const proxy: CutProxy = await cutProxy(reg.port);
  cleanups.push(() => proxy.close());
  const agent = await makeAgent(proxy.url, NET, 'beat', token);
  cleanups.push(() => agent.client.close());
  const before = proxy.accepted();
  await agent.client.heartbeat();
  await sleep(6_000);
  await agent.client.heartbeat();
  console.log(`connections for join + publish: ${before}; for two heartbeats 6 s apart after them: ${proxy.accepted() - before}`);
  expect(proxy.accepted() - before).toBe(0);
});

it('a kept connection closed by the registry as the next request goes out: the request is resent on a new one', async () => {
  // A registry stand-in: answers the first request on a connection and keeps it open; a second
  // request on that connection gets a TCP reset (the registry's keep-alive timeout, just then).
  let connections = 0;
  const sockets = new Set<Socket>();
  const server = createServer((s) => {
    connections++;
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
    s.on('error', () => {});
    let requests = 0;
    let text = '';
    s.setEncoding('latin1').on('data', (d: string) => {
      text += d;
      while (text.includes('\r\n\r\n')) {
        text = text.slice(text.indexOf('\r\n\r\n') + 4); // heartbeats carry a small JSON body: drop it too
        const body = /^\{[^}]*\}/.exec(text);
        if (body) text = text.slice(body[0].length);
        if (++requests === 2) return void s.resetAndDestroy();
        s.write('HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\nconnection: keep-alive\r\n\r\n{"ok":true}');
      }
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  cleanups.push(() => {
    for (const s of sockets) s.destroy();
    return new Promise((r) => server.close(r));
  });
  const client = new RegistryClient({ url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, identity: Identity.generate(), network: NET });
  cleanups.push(() => client.close());
  await client.heartbeat();
  await client.heartbeat(); // on the kept connection: reset, then resent
  console.log(`two heartbeats took ${connections} connections (the second's kept one was reset)`);
  expect(connections).toBe(2);
});
