// Issue 7, class 8: registry file descriptors and timeouts. Idle connections must not fill the
// registry's descriptors (health checks keep answering), and header timeouts must hold.
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { UPGRADE_PATH, UPGRADE_PROTOCOL } from '../../src/relay/tcp.js';
import { httpGet, idleConnections } from './hostile-helpers.js';
import { startRegistryProcess, type RegistryProcess } from './registry-process.js';

/** The registry runs with this many descriptors, so a flood that would fill 20,000 fits a test. */
const MAX_FDS = 1024;

describe('registry connections (issue 7, class 8)', () => {
  let dir: string;
  let proc: RegistryProcess | undefined;

  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'agentvpn-registry-conns-'));
  });

  afterEach(async () => {
    await proc?.stop();
    proc = undefined;
    rmSync(dir, { recursive: true, force: true });
  });

  it('caps idle connections per client and in total below the fd limit; health checks keep answering', async () => {
    proc = await startRegistryProcess(join(dir, 'registry.db'), { maxFds: MAX_FDS });
    const baseFds = proc.fds();

    // One client opening three times the registry's descriptors.
    const single = await idleConnections(proc.port, 3 * MAX_FDS);
    await sleep(1000);
    const singleFds = proc.fds();
    const healthSingle = await httpGet(proc.port, '/healthz', { localAddress: '127.0.0.2' }).catch((e: Error) => ({ status: 0, text: e.message }));
    // Past its cap, the address's own longest-idle connection makes room: a request from it still gets in.
    const healthSameAddress = await httpGet(proc.port, '/healthz', { localAddress: '127.0.0.1' }).catch((e: Error) => ({ status: 0, text: e.message }));

    // Then 40 more client addresses with 100 idle connections each: more than the total cap.
    const many = (await Promise.all(Array.from({ length: 40 }, (_, i) => idleConnections(proc!.port, 100, `127.0.1.${i + 1}`)))).flat();
    await sleep(1000);
    const manyFds = proc.fds();
    const healthMany = await httpGet(proc.port, '/healthz', { localAddress: '127.0.0.3' }).catch((e: Error) => ({ status: 0, text: e.message }));
    console.log(`registry fd limit ${MAX_FDS}, ${baseFds} fds at start; one client, ${single.length} connections: ` +
      `registry fds ${singleFds} (${singleFds - baseFds} held), health ${healthSingle.status} (from its address ${healthSameAddress.status}); 40 more clients, ${many.length} connections: registry fds ${manyFds}, health ${healthMany.status}`);
    for (const s of [...single, ...many]) s.destroy();

    // The registry's own count: the client also sees connections the kernel queued but the registry has not accepted yet.
    expect(singleFds - baseFds).toBeLessThanOrEqual(256 + 10);
    expect(healthSingle.status).toBe(200);
    expect(healthSameAddress.status).toBe(200);
    expect(manyFds).toBeLessThan(MAX_FDS - 50);
    expect(healthMany.status).toBe(200);
  });

  it.each([
    ['another upgrade, with the built-in relay', [], 'foo', /^HTTP\/1\.1 404/],
    ['another upgrade, without a relay', ['--no-relay'], 'foo', /^HTTP\/1\.1 404/],
    ['the relay\'s upgrade, never followed by a hello', [], 'relay', /^HTTP\/1\.1 101/],
  ] as const)('an upgrade request is answered, not held (%s): its address is not locked out', async (_label, args, kind, answered) => {
    proc = await startRegistryProcess(join(dir, 'registry.db'), { args: [...args] });
    const request = kind === 'relay'
      ? `GET ${UPGRADE_PATH} HTTP/1.1\r\nhost: a\r\nconnection: upgrade\r\nupgrade: ${UPGRADE_PROTOCOL}\r\n\r\n`
      : 'GET /x HTTP/1.1\r\nhost: a\r\nconnection: upgrade\r\nupgrade: foo\r\n\r\n';
    // 300 upgrade requests from one address, past its cap of 256: each used to hold its socket for good.
    const from = '127.0.0.4';
    const answers: string[] = [];
    const sockets = await Promise.all(Array.from({ length: 300 }, () => new Promise<Socket>((resolve) => {
      const s = connect({ host: '127.0.0.1', port: proc!.port, localAddress: from }, () => s.write(request));
      let text = '';
      s.setEncoding('latin1').on('data', (d: string) => {
        text += d;
        if (text.includes('\r\n')) answers.push(text.split('\r\n')[0]);
      });
      s.on('error', () => {});
      resolve(s);
    })));
    for (let i = 0; i < 100 && answers.length < 256; i++) await sleep(50);
    const health = await httpGet(proc.port, '/healthz', { localAddress: from }).catch((e: Error) => ({ status: 0, text: e.message }));
    for (const s of sockets) s.destroy();
    const kinds = [...new Set(answers)];
    console.log(`${answers.length} of 300 upgrade requests answered (${kinds.join(', ')}); a health check from the same address: ${health.status}`);
    expect(answers.length).toBeGreaterThanOrEqual(256);
    expect(kinds.every((k) => answered.test(k))).toBe(true);
    expect(health.status).toBe(200);
  });

  it('answers slow headers with 408 within ~11 s (headersTimeout holds) and closes idle keep-alive connections after two heartbeat intervals and 5 s', async () => {
    // Heartbeats every 1 s (offline after 3 s): a kept connection is closed after 2 x 1 + 5 = 7 s.
    proc = await startRegistryProcess(join(dir, 'registry.db'), { args: ['--offline-after', '3'] });
    const t0 = Date.now();
    const slow = await new Promise<{ ms: number; answer: string }>((resolve) => {
      let answer = '';
      const s = connect({ host: '127.0.0.1', port: proc!.port }, () => s.write('GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\n'));
      s.setEncoding('latin1').on('data', (d: string) => (answer += d));
      const done = () => resolve({ ms: Date.now() - t0, answer });
      s.on('close', done);
      s.on('error', done);
      // Bounded: give up well before the old 30-second check would have answered.
      setTimeout(() => s.destroy(), 20_000);
    });
    const t1 = Date.now();
    const idle = await new Promise<number>((resolve) => {
      const s = connect({ host: '127.0.0.1', port: proc!.port }, () => s.write('GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n'));
      s.resume();
      s.on('close', () => resolve(Date.now() - t1));
      setTimeout(() => s.destroy(), 20_000);
    });
    console.log(`slow headers: closed after ${(slow.ms / 1000).toFixed(1)} s with "${slow.answer.split('\r\n')[0]}"; idle keep-alive connection closed after ${(idle / 1000).toFixed(1)} s`);
    expect(slow.answer).toMatch(/^HTTP\/1\.1 408/);
    expect(slow.ms).toBeLessThan(14_000);
    expect(idle).toBeGreaterThan(6_000);
    expect(idle).toBeLessThan(10_000);
  });
});
