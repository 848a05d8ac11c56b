/**
 * The policy end to end: two agentvpn daemons in static mode (`up --config --policy FILE`) in
 * namespaces, with curl, ssh and ping. Before the filter existed every port was open both ways:
 * each "denied" check below failed (curl got 200, ping got replies).
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startAgentVpn, waitFor, type AgentVpnProcess } from '../../src/lab/index.js';
import type { DeviceStatus } from '../../src/daemon/status-types.js';
import { labReady, sshFixture, startHttpServer, type SshFixture } from '../e2e/checks.js';
import { makePair, OVERLAY, type Pair } from '../e2e/pair.js';

/** A refusal must come back this fast (an ICMP unreachable), not after a connect timeout. */
const FAIL_FAST_MS = 1000;

async function status(d: AgentVpnProcess): Promise<DeviceStatus> {
  return JSON.parse((await d.cli(['status', '--json'], { check: true })).stdout) as DeviceStatus;
}

describe.runIf(labReady(['ip', 'curl', 'python3', 'ping', 'ssh', 'sshd', 'ssh-keygen']))('policy between two agentvpn daemons', () => {
  let pair: Pair;
  let a: AgentVpnProcess;
  let b: AgentVpnProcess;
  let ssh: SshFixture;
  let policyA: string;
  let policyB: string;

  /** The same grants for both sides, as the registry would push them. */
  const writePolicy = (file: string, grants: object[]) => writeFileSync(file, `// written by the test\n${JSON.stringify({
    agents: { alpha: { wgPublicKey: pair.keyA.publicKey, tags: ['web'] }, beta: { wgPublicKey: pair.keyB.publicKey } },
    grants,
  }, null, 1)}`);
  const GRANTS = [
    { src: ['tag:web'], dst: ['name:beta'], ip: ['tcp:8080', 'tcp:2222', 'icmp'] },
    { src: ['name:beta'], dst: ['name:alpha'], ip: ['udp:9999'] },
  ];

  /** curl from ns; returns the exit code and how long it took. */
  async function curl(ns: string, url: string, maxTime = 10): Promise<{ code: number | null; ms: number; out: string }> {
    const t0 = Date.now();
    const r = await pair.lab.exec(ns, ['curl', '-sS', '-o', '/dev/null', '-w', '%{http_code}', '--max-time', String(maxTime), url], { timeoutMs: (maxTime + 5) * 1000 });
    return { code: r.code, ms: Date.now() - t0, out: r.stdout + r.stderr };
  }

  beforeAll(async () => {
    pair = await makePair();
    policyA = join(pair.lab.dir, 'policy-a.json');
    policyB = join(pair.lab.dir, 'policy-b.json');
    writePolicy(policyA, GRANTS);
    writePolicy(policyB, GRANTS);
    a = await startAgentVpn(pair.lab, pair.endpoints.nsA, pair.configA({ withEndpoint: true }), 'agentvpn0', { extraArgs: ['--policy', policyA] });
    b = await startAgentVpn(pair.lab, pair.endpoints.nsB, pair.configB({ withEndpoint: true }), 'agentvpn0', { extraArgs: ['--policy', policyB] });
    for (const [ns, v4, v6] of [[pair.endpoints.nsA, OVERLAY.v4A, OVERLAY.v6A], [pair.endpoints.nsB, OVERLAY.v4B, OVERLAY.v6B]]) {
      for (const port of [8080, 8081]) {
        await startHttpServer(pair.lab, ns, pair.lab.dir, v4, port);
        await startHttpServer(pair.lab, ns, pair.lab.dir, v6, port);
      }
    }
    ssh = sshFixture(pair.lab);
    await ssh.start(pair.endpoints.nsB, OVERLAY.v4B);
    await ssh.start(pair.endpoints.nsA, OVERLAY.v4A);
    // First contact (the handshake) through an allowed flow.
    await waitFor(async () => (await pair.lab.exec(pair.endpoints.nsA, ['ping', '-c1', '-W1', OVERLAY.v4B])).code === 0, { timeoutMs: 20_000, what: 'alpha pings beta' });
  });

  afterAll(async () => {
    await pair?.lab.cleanup();
  });

  it('allowed flows work and their replies pass: curl (v4, v6), ssh, ping', async () => {
    for (const host of [OVERLAY.v4B, `[${OVERLAY.v6B}]`]) {
      const r = await curl(pair.endpoints.nsA, `http://${host}:8080/`);
      expect(r.out).toBe('200');
    }
    expect((await ssh.run(pair.endpoints.nsA, OVERLAY.v4B, 'echo through-the-policy')).trim()).toBe('through-the-policy');
    const ping = await pair.lab.exec(pair.endpoints.nsA, ['ping', '-c3', '-i0.2', '-W1', OVERLAY.v6B]);
    expect(ping.stdout).toContain('3 received');
  });

  it('denied flows fail fast at the sender: connection refused by an ICMP unreachable, not a timeout', async () => {
    const cases: Array<[string, string]> = [
      [pair.endpoints.nsA, `http://${OVERLAY.v4B}:8081/`], // alpha -> beta, a port not granted
      [pair.endpoints.nsA, `http://[${OVERLAY.v6B}]:8081/`],
      [pair.endpoints.nsB, `http://${OVERLAY.v4A}:8080/`], // beta -> alpha: no tcp grant at all
    ];
    for (const [ns, url] of cases) {
      const r = await curl(ns, url);
      console.log(`denied ${url}: curl exit ${r.code} after ${r.ms} ms (${r.out.trim().split('\n').pop()})`);
      expect(r.code).toBe(7); // "Failed to connect": the ICMP error ended connect()
      expect(r.ms).toBeLessThan(FAIL_FAST_MS);
    }
    const sshDenied = await pair.lab.exec(pair.endpoints.nsB, ['ssh', '-i', ssh.clientKey, '-p', '2222', '-o', 'BatchMode=yes', '-o', 'ConnectTimeout=10',
      '-o', 'StrictHostKeyChecking=no', '-o', 'UserKnownHostsFile=/dev/null', `root@${OVERLAY.v4A}`, 'true'], { timeoutMs: 15_000 });
    expect(sshDenied.code).not.toBe(0);
    expect(sshDenied.stderr).toMatch(/No route to host|Permission denied|unreachable/i);
    const ping = await pair.lab.exec(pair.endpoints.nsB, ['ping', '-c2', '-i0.2', '-W1', OVERLAY.v4A]);
    expect(ping.stdout).toContain('0 received');
    // `policy test` against the daemon's policy says the same.
    for (const [src, dst, flow, code] of [['alpha', 'beta', 'tcp:8081', 2], ['alpha', 'beta', 'tcp:8080', 0], ['beta', 'alpha', 'tcp:8080', 2], ['alpha', 'beta', 'icmp', 0]] as const) {
      const t = await a.cli(['policy', 'test', '--src', src, '--dst', dst, flow]);
      expect(t.code, t.stdout + t.stderr).toBe(code);
    }
    const s = await status(a);
    console.log(`alpha's drops for beta: ${JSON.stringify(s.peers[0].dropped)}`);
    expect(s.peers[0].dropped.policyRejected).toBeGreaterThanOrEqual(2);
  });

  it('the receiver enforces even when the sender lets everything out', async () => {
    const before = (await status(b)).peers[0].dropped.policyDenied;
    writePolicy(policyA, [...GRANTS, { src: ['*'], dst: ['*'], ip: ['*'] }]); // alpha's own copy says all is fine
    // Once alpha has reloaded, its SYNs to beta:8081 go out, and beta drops them: a timeout, as
    // beta sends nothing back (it cannot tell a lost packet from a refused one to the sender).
    let r = await curl(pair.endpoints.nsA, `http://${OVERLAY.v4B}:8081/`, 2);
    await waitFor(async () => (r = await curl(pair.endpoints.nsA, `http://${OVERLAY.v4B}:8081/`, 2)).code === 28, { timeoutMs: 15_000, what: 'alpha applies its open policy' });
    console.log(`alpha -> beta:8081 with alpha's filter open: curl exit ${r.code} after ${r.ms} ms`);
    const after = (await status(b)).peers[0].dropped.policyDenied;
    console.log(`beta's policyDenied for alpha: ${before} -> ${after}`);
    expect(after).toBeGreaterThan(before);
    const sb = await status(b);
    // The reasons cover both directions: what beta dropped and what it refused to send.
    const d = sb.peers[0].dropped;
    expect(Object.values(sb.peers[0].policyDenies ?? {}).reduce((x, y) => x + y, 0)).toBe(d.policyDenied + d.policyRejected);
    expect(sb.policy).toMatchObject({ enforcing: true });
    const human = (await b.cli(['status'], { check: true })).stdout;
    expect(human).toMatch(/policy denied: +noGrant \d+/);
    expect(human).toMatch(/policy: +in force/);
    writePolicy(policyA, GRANTS);
  });

  it('an updated policy takes effect live, without restarting the tunnel; flows it denies stop', async () => {
    const handshakesBefore = (await status(a)).peers[0].handshakes;
    // An ssh session printing a line every 100 ms, open while tcp:2222 is granted.
    const stream = pair.lab.spawn(pair.endpoints.nsA, ['ssh', '-i', ssh.clientKey, '-p', '2222', '-o', 'BatchMode=yes', '-o', 'StrictHostKeyChecking=no',
      '-o', 'UserKnownHostsFile=/dev/null', '-o', 'LogLevel=ERROR', `root@${OVERLAY.v4B}`, 'for i in $(seq 300); do echo tick $i; sleep 0.1; done'], { name: 'ssh-stream' });
    const ticks = () => (pair.lab.logTail(stream, 1000).match(/tick \d+/g) ?? []).length;
    await waitFor(async () => ticks() >= 5, { timeoutMs: 10_000, what: 'the ssh session streams' });
    const flowing = ticks();
    await waitFor(async () => ticks() >= flowing + 5, { timeoutMs: 5_000, what: 'the ssh session keeps streaming' });
    const open = [...GRANTS.slice(1), { src: ['tag:web'], dst: ['name:beta'], ip: ['tcp:8081', 'icmp'] }];
    writePolicy(policyA, open);
    writePolicy(policyB, open);
    await waitFor(async () => (await curl(pair.endpoints.nsA, `http://${OVERLAY.v4B}:8081/`, 2)).out === '200', { timeoutMs: 10_000, what: '8081 allowed' });
    const r = await curl(pair.endpoints.nsA, `http://${OVERLAY.v4B}:8080/`);
    expect(r.code).toBe(7);
    expect(r.ms).toBeLessThan(FAIL_FAST_MS);
    // The ssh flow is no longer granted: it stops at its next packet (both ends re-check it).
    await new Promise((r) => setTimeout(r, 1000));
    const frozen = ticks();
    await new Promise((r) => setTimeout(r, 1500));
    console.log(`ssh session lines when the new policy applied: ${frozen}; 1.5 s later: ${ticks()}`);
    expect(ticks()).toBe(frozen);
    expect(frozen).toBeLessThan(100);
    await pair.lab.kill(stream);
    expect((await status(a)).peers[0].handshakes).toBe(handshakesBefore);
  });
});
