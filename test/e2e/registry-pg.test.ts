// Two registry instances (`agentvpn registry --db postgres://...`) on one real PostgreSQL, each
// in its own namespace; agent "one" is given instance 1, "two" instance 2, "three" both
// (`--registry URL1,URL2`). They see each other, reach each other by name, and each instance's
// event stream shows the other instance's agents (measured: how long after the instance they
// joined). Then the instance "three" uses is killed (SIGKILL): its tunnels keep carrying pings,
// it fails over to the other instance (measured: kill to its record on the survivor's stream)
// and stays online there, and the survivor still lists every agent.
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AGENTVPN_BIN, Lab, REPO_ROOT, startLabAgent, waitFor, waitForFleet, type LabAgent, type LabProcess, type LabRegistry } from '../../src/lab/index.js';
import { postgresUnavailableReason, startPostgres, type LabPostgres } from '../../src/lab/postgres.js';
import { labReady } from './checks.js';

const NETWORK = 'lab';
const PASSWORD = 'pw-never-logged';
/** Heartbeats every 2 s: an agent that does not fail over within ~4 s goes offline. */
const OFFLINE_AFTER_S = 6;

/** Prints one JSON line per event of a registry's stream, stamped with the time it arrived. */
const SSE_WATCHER = `
import http from 'node:http';
const req = http.get(process.env.URL, { headers: { authorization: 'Bearer ' + process.env.TOKEN } }, (res) => {
  console.log(JSON.stringify({ t: Date.now(), event: 'open', status: res.statusCode }));
  let buf = '';
  res.setEncoding('utf8');
  res.on('data', (c) => {
    buf += c;
    let i;
    while ((i = buf.indexOf('\\n\\n')) >= 0) {
      const frame = buf.slice(0, i);
      buf = buf.slice(i + 2);
      const event = /^event: (.*)$/m.exec(frame)?.[1];
      const data = /^data: (.*)$/m.exec(frame)?.[1];
      if (!event || !data) continue;
      const d = JSON.parse(data);
      const agents = event === 'snapshot' ? d.agents : d.agent ? [d.agent] : [];
      for (const a of agents) console.log(JSON.stringify({ t: Date.now(), event, name: a.record.name, seq: a.record.seq }));
      if (event === 'policy') console.log(JSON.stringify({ t: Date.now(), event, version: d.version }));
    }
  });
});
req.on('error', (e) => { console.error(e.message); process.exit(1); });
`;

interface Seen { t: number; event: string; name?: string; seq?: number; version?: number }

const readEvents = (proc: LabProcess): Seen[] => readFileSync(proc.logFile, 'utf8').split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as Seen);

describe.runIf(labReady(['ip', 'ping', 'curl']) && postgresUnavailableReason() === null)('registry on PostgreSQL: two instances, one fleet', () => {
  let lab: Lab;
  let pg: LabPostgres;
  const regs: LabRegistry[] = [];
  const watchers: LabProcess[] = [];
  const agents: LabAgent[] = [];
  const regIps = ['203.0.113.2', '203.0.113.18'];

  beforeAll(async () => {
    pg = await startPostgres();
    lab = new Lab();
    const hub = await lab.addRouter('hub');
    const witnessKey = join(lab.dir, 'witness.key'); // shared: agents pin one witness whichever instance they use
    const token = JSON.parse((await lab.run(hub, [process.execPath, AGENTVPN_BIN, 'registry', 'token', 'create', '--db', pg.url, '--network', NETWORK, '--json'])).stdout).token as string;
    for (const [i, ip] of regIps.entries()) {
      const ns = await lab.addNamespace(`reg${i + 1}`);
      await lab.connect(hub, ns, { a: `203.0.113.${16 * i + 1}/28`, b: `${ip}/28`, ifB: 'eth0' });
      await lab.ip(ns, ['route', 'add', 'default', 'via', `203.0.113.${16 * i + 1}`]);
      // Instance 1 takes the URL, with a password, from the environment; instance 2 from --db.
      const withPassword = pg.url.replace('agentvpn@', `agentvpn:${PASSWORD}@`);
      const dbArgs = i === 0 ? [] : ['--db', pg.url];
      const env = i === 0 ? { ...process.env, AGENTVPN_REGISTRY_DB: withPassword } : process.env;
      const proc = lab.spawn(ns, [process.execPath, AGENTVPN_BIN, 'registry', '--listen', `${ip}:7443`, ...dbArgs, '--network', NETWORK,
        '--witness-key', witnessKey, '--offline-after', String(OFFLINE_AFTER_S), '--log-level', 'debug'], { name: 'registry', cwd: REPO_ROOT, env });
      const url = `http://${ip}:7443`;
      await waitFor(async () => (await lab.exec(ns, ['curl', '-sf', `${url}/healthz`])).code === 0, { timeoutMs: 20_000, what: `registry ${i + 1}` });
      regs.push({ ns, url, db: pg.url, token, network: NETWORK, proc });
    }
    const script = join(lab.dir, 'sse-watch.mjs');
    writeFileSync(script, SSE_WATCHER);
    for (const r of regs) {
      watchers.push(lab.spawn(r.ns, [process.execPath, script], { name: 'sse', env: { ...process.env, URL: `${r.url}/v1/events?network=${NETWORK}`, TOKEN: token } }));
    }
    await waitFor(() => watchers.every((w) => readEvents(w).some((e) => e.event === 'open')), { timeoutMs: 10_000, what: 'both event streams open' });
    const both = { ...regs[0], url: regs.map((r) => r.url).join(',') };
    for (const [i, name] of ['one', 'two', 'three'].entries()) {
      const ns = await lab.addNamespace(name);
      await lab.connect(hub, ns, { a: `192.0.2.${16 * i + 1}/28`, b: `192.0.2.${16 * i + 2}/28`, ifB: 'eth0' });
      await lab.ip(ns, ['route', 'add', 'default', 'via', `192.0.2.${16 * i + 1}`]);
      agents.push(await startLabAgent(lab, ns, name, i < 2 ? regs[i] : both));
    }
    for (const a of agents) {
      const { ipv4 } = await a.json<{ ipv4: string }>(['id']);
      mkdirSync(`/etc/netns/${a.ns}`, { recursive: true });
      writeFileSync(`/etc/netns/${a.ns}/resolv.conf`, `nameserver ${ipv4}\n`);
    }
    await waitForFleet(agents, 20_000);
  }, 60_000);

  afterAll(async () => {
    for (const a of agents) rmSync(`/etc/netns/${a.ns}`, { recursive: true, force: true });
    await lab?.cleanup();
    await pg?.stop();
  });

  it('agents on different instances see each other, with distinct addresses, and reach each other by name', async () => {
    const ids = await Promise.all(agents.map((a) => a.json<{ ipv4: string }>(['id'])));
    expect(new Set(ids.map((x) => x.ipv4)).size).toBe(3);
    for (const [i, a] of agents.slice(0, 2).entries()) {
      const other = agents[1 - i];
      const r = await lab.exec(a.ns, ['ping', '-c', '3', '-i', '0.3', '-W', '2', `${other.name}.${NETWORK}`]);
      expect(r.code, `${a.name} pings ${other.name}.${NETWORK}:\n${r.stdout}${r.stderr}`).toBe(0);
    }
  });

  it("each instance's event stream shows the other instance's agent within 1 s", async () => {
    // The agents' first records, and a policy set on the database by the CLI (an operator action).
    const policy = join(lab.dir, 'policy.json');
    writeFileSync(policy, JSON.stringify({ grants: [{ src: ["*"], dst: ["*"], ip: ["icmp"] }] }));
    const setAt = Date.now();
    await lab.run(regs[0].ns, [process.execPath, AGENTVPN_BIN, 'registry', 'policy', 'set', policy, '--db', pg.url, '--network', NETWORK]);
    await waitFor(() => watchers.every((w) => readEvents(w).some((e) => e.event === 'policy')), { timeoutMs: 5_000, what: 'policy event on both streams' });
    const [one, two] = watchers.map(readEvents);
    const lags: Array<{ what: string; ms: number }> = [];
    for (const name of ['one', 'two']) {
      const here = name === 'one' ? one : two;
      const there = name === 'one' ? two : one;
      const first = here.find((e) => e.name === name && e.event === 'upsert')!;
      const mirrored = there.find((e) => e.name === name && e.seq === first.seq && (e.event === 'upsert' || e.event === 'snapshot'));
      expect(mirrored, `agent ${name}'s record on the other instance's stream`).toBeDefined();
      lags.push({ what: `agent ${name}'s record`, ms: mirrored!.t - first.t });
    }
    for (const [i, events] of [one, two].entries()) lags.push({ what: `policy on instance ${i + 1} (from the CLI's start)`, ms: events.find((e) => e.event === 'policy')!.t - setAt });
    console.log(`change propagation between instances: ${lags.map((l) => `${l.what} ${l.ms} ms`).join('; ')}`);
    for (const l of lags) expect(l.ms, l.what).toBeLessThan(l.what.startsWith('policy') ? 5_000 : 1_000);
  });

  it('the database password is never logged', () => {
    for (const r of regs) expect(readFileSync(r.proc.logFile, 'utf8')).not.toContain(PASSWORD);
  });

  it('killing the instance an agent uses loses no agent and no tunnel; the agent fails over to the other one', async () => {
    const three = agents[2];
    // Which instance "three" joined (given both, it picks one by its ID).
    const used = regs.findIndex((r) => readFileSync(r.proc.logFile, 'utf8').split('\n').some((l) => l.includes('"event":"join"') && l.includes('"name":"three"')));
    expect(used).toBeGreaterThanOrEqual(0);
    const survivor = 1 - used;
    const peer = agents[survivor]; // the agent given only the surviving instance
    const { ipv4 } = await peer.json<{ ipv4: string }>(['id']);
    const ping = lab.exec(three.ns, ['ping', '-c', '40', '-i', '0.1', '-W', '1', ipv4], { timeoutMs: 20_000 });
    await new Promise((r) => setTimeout(r, 800));
    const streamsOf = async (k: number) => (JSON.parse((await lab.exec(regs[k].ns, ['curl', '-sf', '-H', `authorization: Bearer ${regs[k].token}`,
      `${regs[k].url}/v1/stats?network=${NETWORK}`])).stdout) as { streams: { open: number; resumed: number; digestResumed: number } }).streams;
    const streamsBefore = await streamsOf(survivor);
    const killedAt = Date.now();
    regs[used].proc.kill('SIGKILL');
    const r = await ping;
    const received = Number(/(\d+) received/.exec(r.stdout)?.[1] ?? 0);
    console.log(`ping three -> ${peer.name} across the kill of instance ${used + 1} (the one three used): ${received}/40 replies (${((1 - received / 40) * 100).toFixed(0)} % loss)`);
    expect(received).toBeGreaterThanOrEqual(36);
    // Its event stream moves to the survivor, which resumes it by view digest (no snapshot, no re-publish).
    const movedAt = await waitFor(async () => ((await streamsOf(survivor)).digestResumed > streamsBefore.digestResumed ? Date.now() : undefined),
      { timeoutMs: 15_000, what: 'three fails over to the surviving instance' });
    console.log(`three failed over: its stream resumed by digest on instance ${survivor + 1} ${movedAt - killedAt} ms after the kill; streams there ${JSON.stringify(await streamsOf(survivor))}`);
    expect(movedAt - killedAt).toBeLessThan(10_000);
    // Past one offline period, three (heartbeating to the survivor now) is still online there.
    await new Promise((res) => setTimeout(res, OFFLINE_AFTER_S * 1000 + 1_500 - (Date.now() - killedAt)));
    const listed = await lab.exec(regs[survivor].ns, ['curl', '-sf', '-H', `authorization: Bearer ${regs[survivor].token}`, `${regs[survivor].url}/v1/agents?network=${NETWORK}`]);
    const views = (JSON.parse(listed.stdout) as { agents: Array<{ record: { name: string }; online: boolean }> }).agents;
    console.log(`instance ${survivor + 1} lists ${OFFLINE_AFTER_S + 1.5} s after instance ${used + 1} died: ${views.map((v) => `${v.record.name} (${v.online ? 'online' : 'offline'})`).sort().join(', ')}`);
    expect(views.map((v) => v.record.name).sort()).toEqual(['one', 'three', 'two']);
    expect(views.find((v) => v.record.name === 'three')!.online).toBe(true);
    // Still reachable by name after the instance is gone (the agents keep their peers).
    const again = await lab.exec(peer.ns, ['ping', '-c', '3', '-i', '0.3', '-W', '2', `${three.name}.${NETWORK}`]);
    expect(again.code, again.stdout + again.stderr).toBe(0);
  });
});
