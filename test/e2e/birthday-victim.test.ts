import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import {
  Lab, REPO_ROOT, addPublicHost, buildNatWorld, findAgent, sleep, startLabAgent, startLabRegistry, waitFor, waitForFleet,
} from '../../src/lab/index.js';
import type { DeviceStatus } from '../../src/daemon/status-types.js';
import { labReady } from './checks.js';

/** The port the member publishes for the victim: disco pings of a published candidate go there (a limit of records, not of birthday probing). */
const PUBLISHED_PORT = 4000;
/** How long the member keeps asking: longer than an attempt's 15 s would need to spray its 1,024 probes at 100/s after the burst. */
const ASK_MS = 12_000;

/** UDP datagrams the victim's namespace received on ports other than the published one (an iptables counter). */
async function victimCount(lab: Lab, ns: string): Promise<number> {
  const r = await lab.run(ns, ['iptables', '-w', '-nvxL', 'INPUT']);
  const line = r.stdout.split('\n').find((l) => l.includes('birthday-victim'));
  return Number(line?.trim().split(/\s+/)[0] ?? NaN);
}

/**
 * A malicious member (src/lab/birthday-member.ts) publishes a victim's address as its only
 * endpoint and keeps asking alice, behind a port-restricted NAT with traffic for it, to spray
 * random ports of that address (birthday probing's easy role). The victim is another host on
 * the lab's public network, counting what reaches it. Alice asks the relay where it sees the
 * member's session come from, finds another address, and probes nothing.
 */
describe.runIf(labReady(['ip', 'iptables', 'ping']))('birthday probing: a member naming a victim address', () => {
  let lab: Lab;

  afterAll(async () => {
    await lab?.cleanup();
  });

  it('the victim (in its record and its requests) gets 0 probes from the easy side', async () => {
    lab = new Lab();
    const world = await buildNatWorld(lab, { sites: [{ name: 'home', kind: 'port-restricted', agents: ['alice'] }] });
    const victim = await addPublicHost(world, 'victim');
    const mallory = await addPublicHost(world, 'mallory');
    await lab.run(victim.ns, ['iptables', '-w', '-I', 'INPUT', '-p', 'udp', '-d', victim.ip, '!', '--dport', String(PUBLISHED_PORT), '-m', 'comment', '--comment', 'birthday-victim', '-j', 'ACCEPT']);
    const registry = await startLabRegistry(lab, world.registryNs, world.registryIp);
    const alice = await startLabAgent(lab, findAgent(world, 'alice').ns, 'alice', registry);
    await waitForFleet([alice], 30_000);
    const nc = await alice.json<{ mappingVariesByDestination: boolean }>(['netcheck']);
    expect(nc.mappingVariesByDestination).toBe(false); // alice takes the easy role

    const statusFile = join(lab.dir, 'mallory.json');
    const member = lab.spawn(mallory.ns, [process.execPath, join(REPO_ROOT, 'dist', 'lab', 'birthday-member.js'), registry.url, registry.token, registry.network,
      'mallory', 'alice', `${victim.ip}:${PUBLISHED_PORT}`, String(ASK_MS), statusFile], { name: 'mallory', cwd: REPO_ROOT });
    await waitFor(() => existsSync(statusFile) || member.exitCode !== null, { timeoutMs: 20_000, intervalMs: 100, what: 'the member joined' });
    expect(member.exitCode, lab.logTail(member)).toBeNull();
    const malloryIp = (JSON.parse(readFileSync(statusFile, 'utf8')) as { ipv4: string }).ipv4;
    // Alice has traffic for the member (through the relay: its handshakes are never answered), so she wants a path to it.
    const pinger = lab.spawn(alice.ns, ['ping', '-i', '0.5', '-w', String(ASK_MS / 1000 + 8), malloryIp], { name: 'ping-mallory' });
    const before = await victimCount(lab, victim.ns);
    await member.exited;
    await sleep(3000); // probes of an attempt started late would still be flying
    const after = await victimCount(lab, victim.ns);
    await lab.kill(pinger);
    const s = await alice.json<DeviceStatus>(['status']);
    const stats = Object.fromEntries(Object.entries(s.pathStats ?? {}).filter(([k]) => k.startsWith('birthday')));
    console.log(`member ${lab.logTail(member, 1).trim()}; victim ${victim.ip} got ${after - before} datagrams on ports other than ${PUBLISHED_PORT}; alice ${JSON.stringify(stats)}`);
    expect(member.exitCode, lab.logTail(member)).toBe(0);
    expect(stats.birthdayRefused ?? 0).toBeGreaterThan(0); // the requests did arrive, and were refused
    expect(after - before).toBe(0);
    expect(stats.birthdayProbes ?? 0).toBe(0);
  }, 120_000);
});
