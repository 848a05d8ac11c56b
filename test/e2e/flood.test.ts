import { readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  Lab, formatPingStats, pingUnderFlood, startAgentVpn, startLabAgent, startLabRegistry, waitFor, waitForFleet, waitForPing,
  type AgentVpnProcess, type LabAgent, type PingUnderFlood,
} from '../../src/lab/index.js';
import type { DeviceStatus } from '../../src/daemon/status-types.js';
import { labReady } from './checks.js';
import { makePair, OVERLAY, type Pair } from './pair.js';

/**
 * Issue 7, classes 3 and 6 at the tunnel level (figures printed: flood rate offered/achieved,
 * ping loss %, RTT median/p90/max). Class 3: a flood at an agent's UDP port from a third namespace
 * must not hurt the tunnel it carries. The attacker sits on its own link to the victim
 * (198.51.100.0/24), so the flood costs the victim's daemon, not the tunnel's wire.
 *
 * Class 6 (relay hello floods) also at the tunnel level: a pair relayed through the registry's
 * built-in relay while random hellos flood the relay. Class 7 (one member starving the relay) is
 * tested at the relay level only (test/relay/): with the relay's per-agent limit, a member's SEND
 * flood at the 40k and 144k frames/s cost this tunnel nothing even before the fix; only
 * an unpaced flood (~500k/s) does, and its size depends on the machine. scripts/bench-flood shows
 * all of them side by side with wireguard-go.
 */
const ATTACKER = '198.51.100.1';
const VICTIM_SIDE = '198.51.100.2';
/**
 * Generous for a noisy 2-core machine. Before the fix (30746f5), with this flood generator:
 * handshake floods 0 % loss at 30k/s, 36 % at 60k/s, 55 % at 100k/s, 81 % at 156k/s (the issue
 * saw 21–35 % at 30k/s with a costlier sender competing for the cores); fleet disco floods with
 * the peer's key 0 % at 100k/s, 37 % at 170k/s, 67 % at 300k/s.
 */
const MAX_LOSS_PCT = 10;
/** The flood counts only if the sender got most of it out. */
const MIN_ACHIEVED = 0.8;
/** 3 s of pings every 10 ms. */
const PINGS = { count: 300, intervalSec: 0.01 };
/** 5 s of pings: the flood (~7.5 s) outlasts the time after which unanswered liveness pings declare a direct path dead (paths.directDeadAfterMs). */
const LONG_PINGS = { count: 500, intervalSec: 0.01 };
/** The figures, and the rates where the code before the fix breaks with this generator. */
const HANDSHAKE_RATES = [30_000, 100_000];
const DISCO_RATE = 170_000;
/** The class 6 figure; before the fix it cost the relayed pair 11–58 % of its pings (varies run to run). */
const RELAY_HELLO_RATE = 140_000;

/**
 * A registry (with its relay) and two agents a, b on subnets of their own behind a hub router,
 * joined into one fleet. `relayOnly`: UDP between the agents' subnets is dropped, so their only
 * path is the relay.
 */
async function fleetPair(lab: Lab, prefix: string, opts: { relayOnly?: boolean } = {}): Promise<{ a: LabAgent; b: LabAgent; reg: string }> {
  const hub = await lab.addRouter('hub');
  const reg = await lab.addNamespace('reg');
  await lab.connect(hub, reg, { a: '203.0.113.1/24', b: '203.0.113.10/24', ifB: 'eth0' });
  await lab.ip(reg, ['route', 'add', 'default', 'via', '203.0.113.1']);
  if (opts.relayOnly) {
    for (const [src, dst] of [['192.0.2.0/28', '192.0.2.16/28'], ['192.0.2.16/28', '192.0.2.0/28']]) {
      await lab.iptables(hub, ['-A', 'FORWARD', '-s', src, '-d', dst, '-p', 'udp', '-j', 'DROP']);
    }
  }
  const registry = await startLabRegistry(lab, reg, '203.0.113.10');
  const agents: LabAgent[] = [];
  for (const [i, name] of ['a', 'b'].entries()) {
    const ns = await lab.addNamespace(name);
    await lab.connect(hub, ns, { a: `192.0.2.${16 * i + 1}/28`, b: `192.0.2.${16 * i + 2}/28`, ifB: 'eth0' });
    await lab.ip(ns, ['route', 'add', 'default', 'via', `192.0.2.${16 * i + 1}`]);
    agents.push(await startLabAgent(lab, ns, `${prefix}-${name}`, registry));
  }
  await waitForFleet(agents, 20_000);
  return { a: agents[0], b: agents[1], reg };
}

function report(what: string, r: PingUnderFlood): void {
  console.log(`${what}: flood ${r.flood.kind} offered ${r.flood.offeredPps ?? 'max'}/s, achieved ${r.flood.achievedPps}/s; ping ${formatPingStats(r.ping)}`);
}

async function attackerOn(lab: Lab, victimNs: string): Promise<string> {
  const x = await lab.addNamespace('x');
  await lab.connect(x, victimNs, { a: `${ATTACKER}/24`, b: `${VICTIM_SIDE}/24`, ifA: 'eth0', ifB: 'from-x' });
  return x;
}

describe.runIf(labReady(['ip', 'ping']))('class 3a: a static pair under a valid-mac1 handshake flood', () => {
  let pair: Pair;
  let b: AgentVpnProcess;
  let attacker: string;

  beforeAll(async () => {
    pair = await makePair();
    await startAgentVpn(pair.lab, pair.endpoints.nsA, pair.configA({ withEndpoint: true }), 'agentvpn0');
    b = await startAgentVpn(pair.lab, pair.endpoints.nsB, pair.configB({ withEndpoint: true }), 'agentvpn0');
    attacker = await attackerOn(pair.lab, pair.endpoints.nsB);
    await waitForPing(pair.lab, pair.endpoints.nsA, OVERLAY.v4B);
  });

  afterAll(async () => {
    await pair?.lab.cleanup();
  });

  it(`ping loss through the tunnel stays <= ${MAX_LOSS_PCT} % during ${HANDSHAKE_RATES.join(' and ')} initiations/s`, async () => {
    const results: PingUnderFlood[] = [];
    for (const rate of HANDSHAKE_RATES) {
      const r = await pingUnderFlood(pair.lab, attacker,
        { kind: 'handshake', target: `${VICTIM_SIDE}:51821`, key: pair.keyB.publicKey, rate },
        pair.endpoints.nsA, OVERLAY.v4B, PINGS);
      report('class 3a static, handshake flood', r);
      results.push(r);
    }
    const s = JSON.parse((await b.cli(['status', '--json'], { check: true })).stdout) as DeviceStatus;
    console.log(`class 3a: victim drop counters after the floods: ${JSON.stringify(s.dropped)}`);
    for (const [i, r] of results.entries()) {
      expect(r.flood.achievedPps).toBeGreaterThan(MIN_ACHIEVED * HANDSHAKE_RATES[i]!);
      expect(r.ping.lossPct).toBeLessThanOrEqual(MAX_LOSS_PCT);
    }
  });
});

describe.runIf(labReady(['ip', 'ping', 'curl']))('class 3b: a fleet pair on a direct path under a disco flood with the peer\'s key', () => {
  let lab: Lab;
  let a: LabAgent;
  let b: LabAgent;
  let attacker: string;
  let ipB: string;

  const status = async (agent: LabAgent) => agent.json<DeviceStatus>(['status']);
  const pathOf = async (agent: LabAgent) => (await status(agent)).peers[0]?.path?.kind ?? 'none';
  const failovers = (agent: LabAgent) => readFileSync(agent.proc!.logFile, 'utf8').split('direct path stopped answering').length - 1;

  beforeAll(async () => {
    lab = new Lab();
    ({ a, b } = await fleetPair(lab, 'flood'));
    attacker = await attackerOn(lab, b.ns);
    ipB = (await b.json<{ ipv4: string }>(['id'])).ipv4;
    await waitForPing(lab, a.ns, ipB);
    await waitFor(async () => (await pathOf(a)) === 'direct' && (await pathOf(b)) === 'direct', { timeoutMs: 15_000, what: 'direct path both ways' });
  });

  afterAll(async () => {
    await lab?.cleanup();
  });

  it(`ping loss stays <= ${MAX_LOSS_PCT} % and the direct path is never declared dead during ${DISCO_RATE} disco/s`, async () => {
    const memberKey = (await status(a)).publicKey; // B knows A: the flood looks like disco from A
    const before = [failovers(a), failovers(b)];
    // No status polling during the flood: each CLI call is a node start-up, CPU the daemons need.
    // The daemon logs every failover, so its log is the witness.
    const r = await pingUnderFlood(lab, attacker, { kind: 'disco', target: `${VICTIM_SIDE}:51820`, key: memberKey, rate: DISCO_RATE }, a.ns, ipB, LONG_PINGS);
    const after = [failovers(a), failovers(b)];
    const paths = [await pathOf(a), await pathOf(b)];
    report('class 3b fleet, disco flood', r);
    console.log(`class 3b: paths after (A, B) ${paths.join(', ')}; "direct path stopped answering" during the flood: A ${after[0]! - before[0]!}, B ${after[1]! - before[1]!}`);
    expect(r.flood.achievedPps).toBeGreaterThan(MIN_ACHIEVED * DISCO_RATE);
    expect(r.ping.lossPct).toBeLessThanOrEqual(MAX_LOSS_PCT);
    expect(after).toEqual(before);
    expect(paths).toEqual(['direct', 'direct']);
  });
});

describe.runIf(labReady(['ip', 'ping', 'curl', 'iptables']))('class 6: a relayed pair while random hellos flood the relay', () => {
  let lab: Lab;
  let a: LabAgent;
  let b: LabAgent;
  let attacker: string;
  let ipB: string;

  const pathOf = async (agent: LabAgent) => (await agent.json<DeviceStatus>(['status'])).peers[0]?.path?.kind ?? 'none';

  beforeAll(async () => {
    lab = new Lab();
    const pair = await fleetPair(lab, 'relayed', { relayOnly: true });
    ({ a, b } = pair);
    const { reg } = pair;
    attacker = await lab.addNamespace('x');
    await lab.connect(attacker, reg, { a: `${ATTACKER}/24`, b: `${VICTIM_SIDE}/24`, ifA: 'eth0', ifB: 'from-x' });
    await lab.addRoute(attacker, '203.0.113.10/32', VICTIM_SIDE);
    ipB = (await b.json<{ ipv4: string }>(['id'])).ipv4;
    await waitForPing(lab, a.ns, ipB, 20_000);
    expect([await pathOf(a), await pathOf(b)]).toEqual(['relay', 'relay']);
  });

  afterAll(async () => {
    await lab?.cleanup();
  });

  it(`ping loss through the relay stays <= ${MAX_LOSS_PCT} % during ${RELAY_HELLO_RATE} random hellos/s at it`, async () => {
    const r = await pingUnderFlood(lab, attacker, { kind: 'relay-hello', target: '203.0.113.10:7443', rate: RELAY_HELLO_RATE }, a.ns, ipB, PINGS);
    report('class 6 relayed pair, relay hello flood', r);
    expect(r.flood.achievedPps).toBeGreaterThan(MIN_ACHIEVED * RELAY_HELLO_RATE);
    expect(r.ping.lossPct).toBeLessThanOrEqual(MAX_LOSS_PCT);
    expect([await pathOf(a), await pathOf(b)]).toEqual(['relay', 'relay']);
  });
});
