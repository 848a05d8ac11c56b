import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { AGENTVPN_BIN, Lab, LabAgent, startHubFleet, startLabAgent, waitFor, type LabRegistry } from '../../src/lab/index.js';
import type { PeerInfo } from '../../src/daemon/fleet.js';
import { fetchAndHash, labReady, makeRandomFile, startHttpServer } from './checks.js';

/**
 * Issue 8 end to end: what operators decide on the registry (remove, block) reaches every agent
 * within 5 s: no WireGuard peer, no route, no name, no relay.
 */

describe.runIf(labReady(['ip', 'ping', 'curl', 'python3']))('trust and operator actions', () => {
  let lab: Lab;
  let registry: LabRegistry;
  let hub: string;
  const agents: Record<string, LabAgent> = {};

  const registryCli = (args: string[]) => lab.run(registry.ns, [process.execPath, AGENTVPN_BIN, 'registry', ...args, '--db', registry.db, '--network', registry.network]);
  const peersOf = async (a: LabAgent) => (await a.json<{ peers: PeerInfo[] }>(['peers'])).peers;
  const idOf = (a: LabAgent) => a.json<{ id: string; ipv4: string }>(['id']);
  const reaches = async (from: LabAgent, ipv4: string) => (await lab.exec(from.ns, ['ping', '-c', '1', '-W', '1', ipv4])).code === 0;

  beforeAll(async () => {
    lab = new Lab();
    const fleet = await startHubFleet(lab, ['alpha', 'beta', 'gamma']);
    ({ hub, registry } = fleet);
    Object.assign(agents, fleet.agents);
  });

  afterAll(async () => {
    await lab?.cleanup();
  });

  it('policy from the registry: allowed flows work, denied ones fail fast, replies pass, an update applies live; whois shows app capabilities', async () => {
    const { alpha, beta } = agents;
    const b = await idOf(beta);
    const aIp = (await idOf(alpha)).ipv4;
    const dir = join(lab.dir, 'www-policy');
    mkdirSync(dir, { recursive: true });
    writeFileSync(join(dir, 'hello'), 'hello\n');
    const servers = [await startHttpServer(lab, beta.ns, dir, b.ipv4, 8080), await startHttpServer(lab, beta.ns, dir, b.ipv4, 8081)];
    const curl = (port: number) => lab.exec(alpha.ns, ['curl', '-sS', '--max-time', '5', '-o', '/dev/null', '-w', '%{http_code}', `http://${b.ipv4}:${port}/hello`]);
    const setPolicy = async (grants: object[]) => {
      const file = join(lab.dir, `policy-${Date.now()}.json`);
      writeFileSync(file, `// test policy\n${JSON.stringify({ grants })}`);
      await registryCli(['policy', 'set', file]);
    };
    try {
      expect((await curl(8081)).stdout).toBe('200'); // no policy: everything is allowed
      await setPolicy([{ src: ['name:alpha'], dst: ['name:beta'], ip: ['tcp:8080', 'icmp'], app: { 'example.com/cap/files': { read: ['/srv'] } } }]);
      await waitFor(async () => (await curl(8081)).code !== 0, { timeoutMs: 5_000, what: 'the policy reaches the agents' });
      expect((await curl(8080)).stdout).toBe('200'); // allowed, and its replies pass
      const started = Date.now();
      const denied = await curl(8081);
      const ms = Date.now() - started;
      console.log(`denied flow failed after ${ms} ms (curl exit ${denied.code})`);
      expect(denied.code).not.toBe(0);
      expect(ms).toBeLessThan(3_000); // an ICMP unreachable, not a timeout
      expect(await reaches(alpha, b.ipv4)).toBe(true); // icmp granted
      expect(await reaches(beta, aIp)).toBe(false); // nothing granted beta -> alpha
      const who = await beta.json<{ name: string; app: Record<string, unknown[]> }>(['whois', aIp]);
      expect(who.app).toEqual({ 'example.com/cap/files': [{ read: ['/srv'] }] });
      // A new version opens 8081 without touching the tunnel.
      await setPolicy([{ src: ['name:alpha'], dst: ['name:beta'], ip: ['tcp:8080-8081', 'icmp'] }]);
      await waitFor(async () => (await curl(8081)).stdout === '200', { timeoutMs: 5_000, what: 'the updated policy applies' });
      // No policy grants beyond this: remove it again for the tests that follow.
      await setPolicy([{ src: ['*'], dst: ['*'], ip: ['*'] }]);
      await waitFor(() => reaches(beta, aIp), { timeoutMs: 5_000, what: 'allow-all policy applies' });
    } finally {
      for (const h of servers) await lab.kill(h);
    }
  });

  it('approve mode: a new agent gets no tunnel until `trust approve NAME`', async () => {
    const { alpha } = agents;
    const ns = await lab.addNamespace('omega');
    await lab.connect(hub, ns, { a: '192.0.2.49/28', b: '192.0.2.50/28', ifB: 'eth0' });
    await lab.ip(ns, ['route', 'add', 'default', 'via', '192.0.2.49']);
    const omega = await startLabAgent(lab, ns, 'omega', registry, { extraArgs: ['--trust', 'approve'] });
    try {
      type TrustList = { mode: string; entries: { name: string; state: string }[] };
      await waitFor(async () => (await omega.json<TrustList>(['trust', 'list'])).entries.filter((e) => e.state === 'pending').length === 3,
        { timeoutMs: 10_000, what: 'omega holds alpha, beta and gamma as pending' });
      expect((await omega.json<TrustList>(['trust', 'list'])).mode).toBe('approve');
      const a = await idOf(alpha);
      expect((await omega.json<{ peers: PeerInfo[] }>(['peers'])).peers).toEqual([]);
      expect(await reaches(omega, a.ipv4)).toBe(false);
      expect(((await omega.json<{ alerts?: string[] }>(['status'])).alerts ?? []).some((l) => /alpha/.test(l))).toBe(true);
      await omega.cli(['trust', 'approve', 'alpha']);
      await waitFor(() => reaches(omega, a.ipv4), { timeoutMs: 10_000, what: 'omega reaches the approved alpha' });
      expect((await omega.json<{ peers: PeerInfo[] }>(['peers'])).peers.map((p) => p.name)).toEqual(['alpha']);
    } finally {
      await lab.kill(omega.proc!);
    }
  });

  it('key rotation during a 20 MB transfer: the transfer completes intact, alpha follows the chain silently, addresses stay', async () => {
    const { alpha, beta } = agents;
    const before = await beta.json<{ id: string; name: string; ipv4: string; ipv6: string; wgPublicKey: string }>(['id']);
    type TrustList = { entries: { name: string; state: string; fingerprint: string; keySeq: number }[] };
    const pinBefore = (await alpha.json<TrustList>(['trust', 'list'])).entries.find((e) => e.name === 'beta')!;
    const dir = join(lab.dir, 'www-rotate');
    mkdirSync(dir, { recursive: true });
    const hash = await makeRandomFile(join(dir, 'big.bin'), 20);
    const http = await startHttpServer(lab, beta.ns, dir, before.ipv4, 8090);
    try {
      const transfer = fetchAndHash(lab, alpha.ns, before.ipv4, 'big.bin', 8090, ['--limit-rate', '5M']);
      await new Promise((r) => setTimeout(r, 1_500));
      const rotated = await beta.json<{ id: string; seq: number; key: string }>(['key', 'rotate']);
      expect(rotated.id).toBe(before.id);
      expect(await transfer).toBe(hash);
      const after = await beta.json<{ id: string; name: string; ipv4: string; ipv6: string; wgPublicKey: string }>(['id']);
      expect(after).toMatchObject({ id: before.id, name: 'beta', ipv4: before.ipv4, ipv6: before.ipv6 });
      expect(after.wgPublicKey).not.toBe(before.wgPublicKey);
      await waitFor(async () => (await alpha.json<TrustList>(['trust', 'list'])).entries.find((e) => e.name === 'beta')!.fingerprint !== pinBefore.fingerprint,
        { timeoutMs: 10_000, what: 'alpha moves its pin to the new key' });
      const pin = (await alpha.json<TrustList>(['trust', 'list'])).entries.find((e) => e.name === 'beta')!;
      console.log(`rotation: beta statement ${rotated.seq}; alpha's pin ${pinBefore.fingerprint} -> ${pin.fingerprint} (${pin.state})`);
      expect(pin.state).not.toBe('changed');
      expect(((await alpha.json<{ alerts?: string[] }>(['status'])).alerts ?? []).length).toBe(0);
      await waitFor(() => reaches(alpha, before.ipv4), { timeoutMs: 5_000, what: 'alpha reaches beta under its new key' });
    } finally {
      await lab.kill(http);
    }
  });

  it('a removed agent is gone from every peer within 5 s (peer, route, name) and does not re-join on its own', async () => {
    const { alpha, beta } = agents;
    const b = await idOf(beta);
    expect(await reaches(alpha, b.ipv4)).toBe(true);
    const started = Date.now();
    await registryCli(['agent', 'remove', 'beta']);
    await waitFor(async () => !(await peersOf(alpha)).some((p) => p.name === 'beta'), { timeoutMs: 5_000, intervalMs: 100, what: 'alpha drops beta' });
    const took = Date.now() - started;
    console.log(`removed beta: gone from alpha's peers after ${took} ms`);
    expect(await reaches(alpha, b.ipv4)).toBe(false);
    const status = await alpha.json<{ peers: { allowedIps: string[] }[] }>(['status']);
    expect(status.peers.some((p) => p.allowedIps.includes(`${b.ipv4}/32`))).toBe(false);
    expect((await alpha.cli(['resolve', 'beta', '--json'], { check: false })).code).not.toBe(0);
    // beta learned it was removed: it says so and does not slip back in on its own.
    await waitFor(async () => ((await beta.json<{ alerts?: string[] }>(['status'])).alerts ?? []).some((a) => /removed/.test(a)), { timeoutMs: 5_000, what: 'beta shows the removal' });
    await new Promise((r) => setTimeout(r, 6_000));
    expect(JSON.parse((await registryCli(['agent', 'list', '--json'])).stdout).agents.map((a: { name: string }) => a.name)).not.toContain('beta');
  });

  it('TOFU: a new machine joining as beta with another key is refused by alpha until `trust accept beta`', async () => {
    const { alpha } = agents;
    const oldBeta = agents.beta;
    await lab.kill(oldBeta.proc!);
    // A new machine (a new identity) takes the name beta, which the removal freed.
    const impostor = new LabAgent(lab, 'beta', oldBeta.ns, join(lab.dir, 'state-beta-new'), join(lab.dir, 'run-beta-new'));
    await startLabAgent(lab, oldBeta.ns, 'beta', registry, { agent: impostor });
    const b = await idOf(impostor);
    type TrustList = { entries: { name: string; state: string; fingerprint: string; offered?: { fingerprint: string; id: string } }[] };
    await waitFor(async () => (await alpha.json<TrustList>(['trust', 'list'])).entries.some((e) => e.name === 'beta' && e.state === 'changed'), { timeoutMs: 10_000, what: 'alpha flags beta as changed' });
    const entry = (await alpha.json<TrustList>(['trust', 'list'])).entries.find((e) => e.name === 'beta')!;
    console.log(`trust list on alpha: beta ${entry.state}, pinned ${entry.fingerprint}, offered ${entry.offered?.fingerprint}`);
    expect(entry.offered?.id).toBe(b.id);
    expect(entry.offered?.fingerprint).not.toBe(entry.fingerprint);
    const status = await alpha.json<{ alerts?: string[] }>(['status']);
    expect((status.alerts ?? []).some((a) => /beta/.test(a))).toBe(true);
    expect((await alpha.json<{ peers: PeerInfo[] }>(['peers'])).peers.some((p) => p.name === 'beta')).toBe(false);
    expect(await reaches(alpha, b.ipv4)).toBe(false);
    expect((await alpha.cli(['resolve', 'beta', '--json'], { check: false })).code).not.toBe(0);

    await alpha.cli(['trust', 'accept', 'beta']);
    await waitFor(() => reaches(alpha, b.ipv4), { timeoutMs: 10_000, what: 'alpha reaches the accepted beta' });
    const accepted = (await alpha.json<TrustList>(['trust', 'list'])).entries.find((e) => e.name === 'beta')!;
    expect(accepted.state).not.toBe('changed');
    expect(((await alpha.json<{ alerts?: string[] }>(['status'])).alerts ?? []).some((a) => /beta/.test(a))).toBe(false);
    agents.beta = impostor;
  });

  it('a blocked agent is dropped the same way and cannot join again', async () => {
    const { alpha, gamma } = agents;
    const g = await idOf(gamma);
    await registryCli(['agent', 'block', 'gamma']);
    await waitFor(async () => !(await peersOf(alpha)).some((p) => p.name === 'gamma'), { timeoutMs: 5_000, intervalMs: 100, what: 'alpha drops gamma' });
    expect(await reaches(alpha, g.ipv4)).toBe(false);
    // gamma restarts with its token: the registry refuses its ID.
    await lab.kill(gamma.proc!);
    await expect(startLabAgent(lab, gamma.ns, 'gamma', registry, { agent: gamma })).rejects.toThrow(/BLOCKED|blocked/);
  });
});
