import { execFileSync } from 'node:child_process';
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { CommandModule } from 'yargs';
import type { DeviceStatus } from '../../daemon/status-types.js';
import { AgentVpnError } from '../../errors.js';
import {
  Lab, buildNatWorld, findAgent, labUnavailableReasons, startLabAgent, startLabRegistry, waitFor, waitForFleet, type LabAgent,
} from '../../lab/index.js';
import { columns, printResult, runCommand, type GlobalArgs } from '../output.js';

/** The demo's small world: a registry with its relay on the "internet", three agents behind different NATs. */
const SITES = [
  { name: 'home', kind: 'port-restricted', agents: ['planner'], caps: ['llm.plan'] },
  { name: 'cloud', kind: 'double', agents: ['worker'], caps: ['llm.inference@1;model=llama3'] },
  // A network that blocks UDP: the one pair the demo shows relayed (symmetric NATs now go direct by birthday probing).
  { name: 'hotel', kind: 'udp-blocked', agents: ['gpu'], caps: ['gpu;model=h100'] },
] as const;
const NETWORK = 'demo';

function say(json: boolean, line: string): void {
  if (!json) process.stdout.write(`${line}\n`);
}

async function runDemo(args: GlobalArgs): Promise<void> {
  const missing = labUnavailableReasons(['ip', 'iptables', 'curl', 'python3', 'sshd', 'ssh', 'ssh-keygen']);
  if (missing.length) throw new AgentVpnError('DEMO_UNAVAILABLE', `the demo cannot run here: ${missing.join('; ')}`, 'run it as root after `bash scripts/install-deps.sh`');
  const lab = new Lab();
  const resolvConfs: string[] = [];
  try {
    say(args.json, 'building a small internet in network namespaces: a registry + relay, and three agents behind NATs');
    const world = await buildNatWorld(lab, { sites: SITES.map((s) => ({ name: s.name, kind: s.kind, agents: [...s.agents] })) });
    const registry = await startLabRegistry(lab, world.registryNs, world.registryIp, { network: NETWORK });
    say(args.json, `registry and relay at ${registry.url}`);
    const agents: LabAgent[] = [];
    for (const s of SITES) {
      const agent = await startLabAgent(lab, findAgent(world, s.agents[0]).ns, s.agents[0], registry, { caps: [...s.caps] });
      agents.push(agent);
      say(args.json, `  ${agent.name.padEnd(8)} up behind a ${s.kind} NAT`);
    }
    await waitForFleet(agents);
    // Each namespace resolves NAME.demo with its own agent's DNS responder.
    for (const a of agents) {
      const { ipv4 } = await a.json<{ ipv4: string }>(['id']);
      const dir = `/etc/netns/${a.ns}`;
      mkdirSync(dir, { recursive: true });
      writeFileSync(join(dir, 'resolv.conf'), `nameserver ${ipv4}\n`);
      resolvConfs.push(dir);
    }
    const [planner, worker, gpu] = agents;

    const www = join(lab.dir, 'www');
    mkdirSync(www, { recursive: true });
    writeFileSync(join(www, 'index.html'), 'hello from worker, across two NATs\n');
    const workerIp = (await worker.json<{ ipv4: string }>(['id'])).ipv4;
    lab.spawn(worker.ns, ['python3', '-m', 'http.server', '--bind', workerIp, '--directory', www, '8080'], { name: 'http' });
    const gpuIp = (await gpu.json<{ ipv4: string }>(['id'])).ipv4;
    const keyDir = join(lab.dir, 'ssh');
    mkdirSync(keyDir, { recursive: true });
    for (const k of ['client', 'host']) execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', join(keyDir, k)]);
    writeFileSync(join(keyDir, 'authorized_keys'), readFileSync(join(keyDir, 'client.pub')));
    mkdirSync('/run/sshd', { recursive: true });
    lab.spawn(gpu.ns, ['/usr/sbin/sshd', '-D', '-e', '-h', join(keyDir, 'host'), '-p', '22', '-o', `ListenAddress=${gpuIp}`,
      '-o', `AuthorizedKeysFile=${join(keyDir, 'authorized_keys')}`, '-o', 'StrictModes=no', '-o', 'UsePAM=no', '-o', 'PidFile=none'], { name: 'sshd' });

    say(args.json, `\nplanner$ curl http://worker.${NETWORK}:8080/`);
    const http = await waitFor(async () => {
      const r = await lab.exec(planner.ns, ['curl', '-sS', '--max-time', '5', `http://worker.${NETWORK}:8080/`]);
      return r.code === 0 ? r.stdout : null;
    }, { timeoutMs: 20_000, what: 'HTTP from planner to worker' });
    say(args.json, http.trimEnd());
    say(args.json, `planner$ ssh gpu.${NETWORK} 'echo "$(uname -s) on gpu, over agentvpn"'`);
    const sshOut = await waitFor(async () => {
      const r = await lab.exec(planner.ns, ['ssh', '-i', join(keyDir, 'client'), '-o', 'StrictHostKeyChecking=no', '-o', 'UserKnownHostsFile=/dev/null',
        '-o', 'BatchMode=yes', '-o', 'LogLevel=ERROR', `root@gpu.${NETWORK}`, 'echo "$(uname -s) on gpu, over agentvpn"']);
      return r.code === 0 ? r.stdout : null;
    }, { timeoutMs: 20_000, what: 'ssh from planner to gpu' });
    say(args.json, sshOut.trimEnd());
    say(args.json, `planner$ agentvpn peers --cap llm.inference`);
    const found = (await planner.json<{ peers: { name: string; ipv4: string }[] }>(['peers', '--cap', 'llm.inference'])).peers;
    say(args.json, found.map((p) => `  ${p.name} ${p.ipv4}`).join('\n'));

    // Let the path layer settle (direct where the NATs allow it), then show every agent's view.
    await new Promise((r) => setTimeout(r, 3000));
    const rows = [['AGENT', 'PEER', 'PATH', 'VIA', 'RTT']];
    const table: { agent: string; peer: string; path: string; via: string; rttMs: number | null }[] = [];
    for (const a of agents) {
      const st = await a.json<DeviceStatus>(['status']);
      const peers = (await a.json<{ peers: { name: string; ipv4: string }[] }>(['peers'])).peers;
      for (const p of st.peers) {
        const name = peers.find((x) => p.allowedIps.includes(`${x.ipv4}/32`))?.name ?? p.publicKey.slice(0, 8);
        const row = { agent: a.name, peer: name, path: p.path?.kind === 'direct' ? 'direct' : 'relayed', via: p.path?.endpoint ?? '-', rttMs: p.path?.rttMs ?? null };
        table.push(row);
        rows.push([row.agent, row.peer, row.path, row.via, row.rttMs === null ? '-' : `${row.rttMs} ms`]);
      }
    }
    say(args.json, `\n${columns(rows)}`);
    printResult(args.json, { http: http.trim(), ssh: sshOut.trim(), discovered: found.map((p) => p.name), paths: table }, () => '\ncleaning up');
  } finally {
    for (const d of resolvConfs) rmSync(d, { recursive: true, force: true });
    await lab.cleanup();
  }
}

export const demoCommand: CommandModule<GlobalArgs, GlobalArgs> = {
  command: 'demo',
  describe: 'Build a registry and three agents behind different NATs in network namespaces, show HTTP and SSH by name and the paths, clean up (root)',
  handler: runCommand(runDemo),
};
