// A relay in its own namespace with two agents on separate links; one agent's namespace drops
// all outbound UDP (iptables), so it must reach the relay over the TCP fallback.
import { afterAll, describe, expect, it } from 'vitest';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { Identity } from '../../src/identity/identity.js';
import { Lab, waitFor } from '../../src/lab/index.js';
import { labReady } from '../e2e/checks.js';

const ROOT = join(import.meta.dirname, '..', '..');
const VITE_NODE = join(ROOT, 'node_modules', 'vite-node', 'vite-node.mjs');
const PEER = join(ROOT, 'test', 'relay', 'netns-peer.ts');
const PORT = 7443;

describe.runIf(labReady(['ip', 'iptables', 'ss']))('relay in network namespaces', () => {
  const lab = new Lab();
  afterAll(() => lab.cleanup());

  it('an agent whose network blocks outbound UDP talks to a UDP agent through the relay over TCP', async () => {
    const r = await lab.addNamespace('relay');
    const a = await lab.addNamespace('blocked');
    const b = await lab.addNamespace('open');
    await lab.connect(r, a, { a: '192.0.2.1/24', b: '192.0.2.2/24' });
    await lab.connect(r, b, { a: '198.51.100.1/24', b: '198.51.100.2/24' });
    await lab.iptables(a, ['-A', 'OUTPUT', '-o', 'lo', '-j', 'ACCEPT']);
    await lab.iptables(a, ['-A', 'OUTPUT', '-p', 'udp', '-j', 'DROP']);

    const relay = lab.spawn(r, [process.execPath, VITE_NODE, '--root', ROOT, join(ROOT, 'src', 'cli', 'main.ts'), '--', 'relay', '--listen', `0.0.0.0:${PORT}`],
      { name: 'relay', cwd: ROOT });
    await waitFor(async () => (await lab.exec(r, ['ss', '-Hltn', `sport = :${PORT}`])).stdout.trim().length > 0 &&
      (await lab.exec(r, ['ss', '-Hlun', `sport = :${PORT}`])).stdout.trim().length > 0, { timeoutMs: 30_000, what: `relay on ${PORT} (${lab.logTail(relay, 5)})` });

    const seedA = randomBytes(32);
    const seedB = randomBytes(32);
    const wgB = Buffer.from(new Identity(seedB).wgPublicKey).toString('base64');
    const peerArgv = [process.execPath, VITE_NODE, '--root', ROOT, PEER];
    const echo = lab.spawn(b, peerArgv, {
      name: 'echo', cwd: ROOT, stdio: 'pipe',
      env: { ...process.env, AVR_ROLE: 'echo', AVR_SEED: seedB.toString('hex'), AVR_UDP: `198.51.100.1:${PORT}`, AVR_TCP: `http://198.51.100.1:${PORT}/v1/relay` },
    });
    let echoOut = '';
    echo.stdout!.on('data', (d: Buffer) => (echoOut += d.toString()));
    await waitFor(() => echoOut.includes('"state":"udp"'), { timeoutMs: 30_000, what: `echo agent on UDP (${echoOut})` });

    const ping = await lab.run(a, peerArgv, {
      timeoutMs: 90_000,
      env: { ...process.env, AVR_ROLE: 'ping', AVR_SEED: seedA.toString('hex'), AVR_PEER: wgB, AVR_COUNT: '20',
        AVR_UDP: `192.0.2.1:${PORT}`, AVR_TCP: `http://192.0.2.1:${PORT}/v1/relay` },
    });
    const result = JSON.parse(ping.stdout.trim().split('\n').pop()!) as { state: string; pongs: number };
    expect(result).toEqual({ state: 'tcp', pongs: 20 });
    // The block really dropped UDP: the rule counted the hellos.
    const counters = await lab.run(a, ['iptables', '-w', '-L', 'OUTPUT', '-v', '-n', '-x']);
    const dropLine = counters.stdout.split('\n').find((l) => /\sDROP\s/.test(l))!;
    expect(Number(dropLine.trim().split(/\s+/)[0])).toBeGreaterThan(0);
    expect(echoOut).not.toContain('"state":"tcp"');
  });
});
