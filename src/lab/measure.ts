/** Throughput (iperf3) and latency (ping) measurements between lab namespaces. */
import { WaitAborted, runCommand, waitFor } from './proc.js';
import type { Lab } from './netns.js';

export interface IperfResult {
  /** Receiver-side goodput. */
  bitsPerSecond: number;
  retransmits: number | undefined;
  seconds: number;
}

export interface IperfOptions {
  durationSec?: number;
  port?: number;
  /** Extra client arguments (e.g. ['-R'], ['-P', '4']). */
  clientArgs?: string[];
}

/** One iperf3 TCP test: server bound to serverIp in serverNs, client in clientNs. */
export async function iperf3(lab: Lab, serverNs: string, clientNs: string, serverIp: string, opts: IperfOptions = {}): Promise<IperfResult> {
  const port = opts.port ?? 5201;
  const duration = opts.durationSec ?? 10;
  const server = lab.spawn(serverNs, ['iperf3', '-s', '-1', '-B', serverIp, '-p', String(port)], { name: 'iperf3-server' });
  try {
    await waitFor(
      async () => {
        if (server.exitCode !== null) throw new WaitAborted(`iperf3 server exited:\n${lab.logTail(server)}`);
        const r = await runCommand(['ip', 'netns', 'exec', serverNs, 'ss', '-Hltn', `sport = :${port}`]);
        return r.stdout.trim().length > 0;
      },
      { timeoutMs: 10_000, what: `iperf3 server on ${serverIp}:${port}` },
    );
    const r = await lab.exec(
      clientNs,
      ['iperf3', '-c', serverIp, '-p', String(port), '-t', String(duration), '--json', ...(opts.clientArgs ?? [])],
      { timeoutMs: (duration + 30) * 1000 },
    );
    let json: {
      error?: string;
      end?: { sum_received?: { bits_per_second: number; seconds: number }; sum_sent?: { retransmits?: number } };
    };
    try {
      json = JSON.parse(r.stdout);
    } catch {
      throw new Error(`iperf3 client gave no JSON (code ${r.code}): ${r.stderr.trim() || r.stdout.slice(0, 500)}`);
    }
    if (json.error) throw new Error(`iperf3: ${json.error}`);
    const rx = json.end?.sum_received;
    if (!rx) throw new Error('iperf3: no sum_received in result');
    return { bitsPerSecond: rx.bits_per_second, retransmits: json.end?.sum_sent?.retransmits, seconds: rx.seconds };
  } finally {
    await lab.kill(server, { graceMs: 1000 });
  }
}

export interface PingResult {
  sent: number;
  received: number;
  minMs: number;
  avgMs: number;
  maxMs: number;
  mdevMs: number;
}

/** `ping -c count -i interval` from ns to dst; RTT figures are NaN when nothing came back. */
export async function ping(lab: Lab, ns: string, dst: string, opts: { count?: number; intervalSec?: number; timeoutSec?: number } = {}): Promise<PingResult> {
  const count = opts.count ?? 50;
  const interval = opts.intervalSec ?? 0.05;
  const argv = ['ping', '-n', '-q', '-c', String(count), '-i', String(interval), '-W', String(opts.timeoutSec ?? 2), dst];
  const r = await lab.exec(ns, argv, { timeoutMs: (count * interval + 30) * 1000 });
  const pkts = /(\d+) packets transmitted, (\d+) (?:packets )?received/.exec(r.stdout);
  if (!pkts) throw new Error(`ping ${dst} from ${ns} failed: ${r.stderr.trim() || r.stdout.trim()}`);
  const rtt = /= ([\d.]+)\/([\d.]+)\/([\d.]+)\/([\d.]+) ms/.exec(r.stdout);
  const n = (i: number): number => (rtt ? Number(rtt[i]) : NaN);
  return { sent: Number(pkts[1]), received: Number(pkts[2]), minMs: n(1), avgMs: n(2), maxMs: n(3), mdevMs: n(4) };
}

/** Waits until one ping from ns reaches dst (tunnels handshake on first traffic). */
export async function waitForPing(lab: Lab, ns: string, dst: string, timeoutMs = 15_000): Promise<void> {
  await waitFor(async () => (await lab.exec(ns, ['ping', '-n', '-q', '-c', '1', '-W', '1', dst])).code === 0, {
    timeoutMs,
    intervalMs: 200,
    what: `ping ${dst} from ${ns}`,
  });
}

export interface IperfUdpResult {
  /** Receiver-side goodput. */
  bitsPerSecond: number;
  lossPct: number;
}

/** One iperf3 UDP test at `rateMbps` with `len`-byte datagrams: what arrived and the loss. */
export async function iperf3Udp(lab: Lab, serverNs: string, clientNs: string, serverIp: string, opts: { rateMbps: number; durationSec?: number; len?: number; port?: number }): Promise<IperfUdpResult> {
  const port = opts.port ?? 5202;
  const duration = opts.durationSec ?? 5;
  const server = lab.spawn(serverNs, ['iperf3', '-s', '-1', '-B', serverIp, '-p', String(port)], { name: 'iperf3-udp-server' });
  try {
    await waitFor(async () => (await runCommand(['ip', 'netns', 'exec', serverNs, 'ss', '-Hltn', `sport = :${port}`])).stdout.trim().length > 0,
      { timeoutMs: 10_000, what: `iperf3 server on ${serverIp}:${port}` });
    const r = await lab.exec(clientNs, ['iperf3', '-c', serverIp, '-p', String(port), '-u', '-b', `${Math.round(opts.rateMbps)}M`, '-l', String(opts.len ?? 1300),
      '-t', String(duration), '--json'], { timeoutMs: (duration + 30) * 1000 });
    const json = JSON.parse(r.stdout) as { error?: string; end?: { sum?: { bits_per_second: number; lost_percent: number } } };
    if (json.error) throw new Error(`iperf3: ${json.error}`);
    const sum = json.end?.sum;
    if (!sum) throw new Error('iperf3: no end.sum in the UDP result');
    return { bitsPerSecond: sum.bits_per_second * (1 - sum.lost_percent / 100), lossPct: sum.lost_percent };
  } finally {
    await lab.kill(server, { graceMs: 1000 });
  }
}
