// The relay under attack (issue 7, classes 6 and 7), in network namespaces: a relay, an attacker
// on a link of its own, and agents on theirs. The attacker floods with the native batch sender
// (flood-peer.ts); the agents are real relay clients (netns-peer.ts). Each test prints the figure
// it measures.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { Identity } from '../../src/identity/identity.js';
import { Lab, waitFor, type LabProcess } from '../../src/lab/index.js';
import { labReady } from '../e2e/checks.js';

const ROOT = join(import.meta.dirname, '..', '..');
const VITE_NODE = join(ROOT, 'node_modules', 'vite-node', 'vite-node.mjs');
const PEER = join(ROOT, 'test', 'relay', 'netns-peer.ts');
const FLOODER = join(ROOT, 'test', 'relay', 'flood-peer.ts');
const RELAY = join(ROOT, 'test', 'relay', 'relay-process.ts');
const PORT = 7443;
/**
 * Floods go as fast as one sender can (~700k datagrams/s here, a core of its own): the security
 * review saw ~140k hellos/s keep new agents out and 144k SENDs/s give a pair 53 % loss; at full
 * speed the old relay lost 20-60 % on this machine, the same check at 150k/s too little to tell.
 */
const FLOOD_RATE = 0;
/** Below this the flooder did not get its core (a very busy machine) and the figure would say little. */
const MIN_FLOOD_PPS = 200_000;
/** Long enough for an agent to start (vite-node: 1-3 s), connect and measure during the flood. */
const FLOOD_SECONDS = 10;

interface RelayStats {
  helloVerifications: number;
  challengesAnswered: number;
  forwardedPackets: number;
  dropped: Record<string, number | undefined>;
}

interface FloodResult {
  sent: number;
  seconds: number;
  pps: number;
}

describe.runIf(labReady(['ip', 'ss']))('relay under floods, in network namespaces', () => {
  const lab = new Lab();
  afterAll(() => lab.cleanup());
  let relayNs: string, attackerNs: string, aNs: string, bNs: string;
  const relayAt = { attacker: '203.0.113.1', a: '192.0.2.1', b: '198.51.100.1' };

  const tsArgv = (file: string, ...args: string[]) => [process.execPath, VITE_NODE, '--root', ROOT, file, ...(args.length ? ['--', ...args] : [])];
  // The relay, the attacker and the pair stand for machines of their own: on this shared 2-core
  // machine they run at a higher priority, so what other tests run meanwhile does not decide the figures.
  // (`nice` execs the command: the PID stays the process's own.)
  const ownMachine = (argv: string[]) => ['nice', '-n', '-10', ...argv];
  let relay: LabProcess;
  let relayOut = '';
  /** The relay's counters now, with its RSS (MB) and CPU time (ms) so far (it prints them on SIGUSR2). */
  async function relayReport(): Promise<{ stats: RelayStats; rssMb: number; cpuMs: number }> {
    const before = relayOut.length;
    relay.kill('SIGUSR2');
    await waitFor(() => relayOut.slice(before).includes('"stats"'), { timeoutMs: 5000, what: 'relay stats' });
    return JSON.parse(relayOut.slice(before).split('\n').find((l) => l.includes('"stats"'))!) as { stats: RelayStats; rssMb: number; cpuMs: number };
  }
  const relayStats = async (): Promise<RelayStats> => (await relayReport()).stats;
  const relayEnv = (at: string) => ({ AVR_UDP: `${at}:${PORT}`, AVR_TCP: `http://${at}:${PORT}/v1/relay` });

  /** An agent that answers pings, connected to the relay; resolves with its process once it is on UDP. */
  async function startEcho(ns: string, at: string, seed: Buffer): Promise<{ proc: LabProcess; out: () => string }> {
    const proc = lab.spawn(ns, ownMachine(tsArgv(PEER)), { name: 'echo', cwd: ROOT, stdio: 'pipe', env: { ...process.env, AVR_ROLE: 'echo', AVR_SEED: seed.toString('hex'), ...relayEnv(at) } });
    let out = '';
    proc.stdout!.on('data', (d: Buffer) => (out += d.toString()));
    return { proc, out: () => out };
  }

  /** Starts the attacker; `started` resolves once it floods, `done` with its report. */
  function startFlood(env: Record<string, string>): { started: Promise<unknown>; done: Promise<FloodResult> } {
    const proc = lab.spawn(attackerNs, ownMachine(tsArgv(FLOODER)), { name: 'flood', cwd: ROOT, stdio: 'pipe',
      env: { ...process.env, AVF_RELAY: `${relayAt.attacker}:${PORT}`, AVF_SECONDS: String(FLOOD_SECONDS), AVF_RATE: String(FLOOD_RATE), ...env } });
    let out = '';
    proc.stdout!.on('data', (d: Buffer) => (out += d.toString()));
    const started = waitFor(() => out.includes('"flooding"'), { timeoutMs: 30_000, what: `the flood to start (${lab.logTail(proc, 5)})` });
    const done = proc.exited.then(() => JSON.parse(out.trim().split('\n').pop()!) as FloodResult);
    return { started, done };
  }

  beforeAll(async () => {
    relayNs = await lab.addNamespace('relay');
    attackerNs = await lab.addNamespace('attacker');
    aNs = await lab.addNamespace('a');
    bNs = await lab.addNamespace('b');
    await lab.connect(relayNs, attackerNs, { a: `${relayAt.attacker}/24`, b: '203.0.113.2/24' });
    await lab.connect(relayNs, aNs, { a: `${relayAt.a}/24`, b: '192.0.2.2/24' });
    await lab.connect(relayNs, bNs, { a: `${relayAt.b}/24`, b: '198.51.100.2/24' });
    relay = lab.spawn(relayNs, ownMachine(tsArgv(RELAY)), { name: 'relay', cwd: ROOT, stdio: 'pipe', env: { ...process.env, AVX_LISTEN: `0.0.0.0:${PORT}` } });
    relay.stdout!.on('data', (d: Buffer) => (relayOut += d.toString()));
    await waitFor(() => relayOut.includes('"listening"'), { timeoutMs: 30_000, what: `relay on ${PORT} (${lab.logTail(relay, 5)})` });
  }, 60_000);

  it('a new agent gets its hello acked while one source floods hellos with random keys and signatures (time to ack, flood rate)', async () => {
    const beforeReport = await relayReport();
    const before = beforeReport.stats;
    const flood = startFlood({ AVF_KIND: 'hello' });
    await flood.started;
    const agent = await startEcho(aNs, relayAt.a, randomBytes(32));
    const acked = await waitFor(() => /"state":"udp","ms":(\d+)/.exec(agent.out())?.[1], { timeoutMs: 20_000, intervalMs: 50 }).then(Number, () => null);
    const result = await flood.done;
    await lab.kill(agent.proc);
    const afterReport = await relayReport();
    const after = afterReport.stats;
    const verified = after.helloVerifications - before.helloVerifications;
    console.log(`hello flood: ${result.pps} hellos/s from one source for ${result.seconds} s; new agent acked over UDP after ${acked ?? 'never (>20 s)'} ms; ` +
      `signatures checked: ${verified}; shed: ${(after.dropped['hello-source-rate'] ?? 0) - (before.dropped['hello-source-rate'] ?? 0)} by the source budget, ` +
      `${(after.dropped['fair-share'] ?? 0) - (before.dropped['fair-share'] ?? 0)} by fair shares; relay CPU ${afterReport.cpuMs - beforeReport.cpuMs} ms, ` +
      `RSS ${beforeReport.rssMb} -> ${afterReport.rssMb} MB`);
    expect(result.pps).toBeGreaterThan(MIN_FLOOD_PPS);
    // Acked while the flood still ran (it runs FLOOD_SECONDS from before the agent started).
    expect(acked).not.toBeNull();
    expect(acked!).toBeLessThan(5_000);
    // One source spent its own budget (burst 500 + 100/s), not the global one (burst 10,000 + 2,000/s).
    expect(verified).toBeLessThan(500 + 100 * (FLOOD_SECONDS + 2) + 10);
  }, 90_000);

  it('an uninvolved relayed pair keeps its packets while one member floods SEND frames (loss %, flood rate)', async () => {
    const seedA = randomBytes(32);
    const seedB = randomBytes(32);
    const echo = await startEcho(bNs, relayAt.b, seedB);
    await waitFor(() => echo.out().includes('"state":"udp"'), { timeoutMs: 30_000, what: `echo agent on UDP (${echo.out()})` });
    const attackerSeed = randomBytes(32);
    // The member floods its own key: the relay forwards what its limits let through back to the attacker.
    const flood = startFlood({ AVF_KIND: 'member', AVF_SEED: attackerSeed.toString('hex'), AVF_DST: Buffer.from(new Identity(attackerSeed).wgPublicKey).toString('base64'), AVF_SIZE: '128' });
    await flood.started;
    const probe = await lab.run(aNs, ownMachine(tsArgv(PEER)), {
      timeoutMs: 60_000,
      env: { ...process.env, AVR_ROLE: 'probe', AVR_SEED: seedA.toString('hex'), AVR_PEER: Buffer.from(new Identity(seedB).wgPublicKey).toString('base64'),
        AVR_COUNT: '300', AVR_INTERVAL: '10', ...relayEnv(relayAt.a) },
    });
    const result = await flood.done;
    await lab.kill(echo.proc);
    const stats = await relayStats();
    const pair = JSON.parse(probe.stdout.trim().split('\n').pop()!) as { state: string; sent: number; pongs: number; lossPct: number; rttP50Ms: number | null; rttMaxMs: number | null };
    console.log(`member flood: ${result.pps} frames/s for ${result.seconds} s; uninvolved pair: ${pair.lossPct} % loss (${pair.pongs}/${pair.sent}), rtt p50 ${pair.rttP50Ms} ms, max ${pair.rttMaxMs} ms; ` +
      `relay dropped ${stats.dropped['rate-limit'] ?? 0} over the member's rate, ${stats.dropped['fair-share'] ?? 0} by fair shares`);
    expect(result.pps).toBeGreaterThan(MIN_FLOOD_PPS);
    expect(pair.state).toBe('udp');
    // Measured: 0-3 % on a quiet machine, up to ~10 % while other tests' floods share its two
    // cores; the relay on node:dgram lost 60-89 % to the same flood (and the pair fell back to TCP).
    expect(pair.lossPct).toBeLessThan(15);
  }, 90_000);

  it('a new agent gets its hello acked while one source floods challenge requests; answers stay within the source budget (answers, relay CPU and RSS)', async () => {
    const before = await relayReport();
    const flood = startFlood({ AVF_KIND: 'challenge' });
    await flood.started;
    const agent = await startEcho(aNs, relayAt.a, randomBytes(32));
    const acked = await waitFor(() => /"state":"udp","ms":(\d+)/.exec(agent.out())?.[1], { timeoutMs: 20_000, intervalMs: 50 }).then(Number, () => null);
    const result = await flood.done;
    await lab.kill(agent.proc);
    const after = await relayReport();
    const answered = after.stats.challengesAnswered - before.stats.challengesAnswered;
    const shed = (after.stats.dropped['challenge-source-rate'] ?? 0) - (before.stats.dropped['challenge-source-rate'] ?? 0);
    const requests = result.sent;
    console.log(`challenge flood: ${result.pps} requests/s from one source for ${result.seconds} s; new agent acked over UDP after ${acked ?? 'never (>20 s)'} ms; ` +
      `answered ${answered} (${((answered / Math.max(1, requests)) * 100).toFixed(3)} % of ${requests}), ${shed} shed by the source budget, ` +
      `${(after.stats.dropped['fair-share'] ?? 0) - (before.stats.dropped['fair-share'] ?? 0)} by fair shares; relay CPU ${after.cpuMs - before.cpuMs} ms ` +
      `(${(((after.cpuMs - before.cpuMs) / 1000 / result.seconds) * 100).toFixed(0)} % of a core), RSS ${before.rssMb} -> ${after.rssMb} MB`);
    expect(result.pps).toBeGreaterThan(MIN_FLOOD_PPS);
    expect(acked).not.toBeNull();
    expect(acked!).toBeLessThan(5_000);
    // One source gets its own budget (burst 500 + 100/s), plus the new agent's one or two.
    expect(answered).toBeLessThan(500 + 100 * (FLOOD_SECONDS + 2) + 10);
    // Nothing kept per request: a flood of millions leaves the relay's memory where it was, give or take.
    expect(after.rssMb - before.rssMb).toBeLessThan(100);
  }, 90_000);
});
