/** Traffic checks shared by the end-to-end tests: real ping, curl, TCP transfers, UDP datagrams. */
import { createHash } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { createReadStream, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { expect, it } from 'vitest';
import { Lab, labUnavailableReasons, waitFor, type LabProcess } from '../../src/lab/index.js';

/** Runs the suite only where the lab can work; in CI a missing prerequisite is a failure. */
export function labReady(tools: string[] = ['ip']): boolean {
  const reasons = labUnavailableReasons(tools);
  if (reasons.length === 0) return true;
  if (process.env.CI) throw new Error(`end-to-end tests cannot run: ${reasons.join('; ')}`);
  it.skip(`skipped: ${reasons.join('; ')}`, () => {});
  return false;
}

export async function sha256File(path: string): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of createReadStream(path)) h.update(chunk as Buffer);
  return h.digest('hex');
}

/** A directory served over HTTP by python3 bound to `bindAddr:port` inside ns. */
export async function startHttpServer(lab: Lab, ns: string, dir: string, bindAddr: string, port = 8080): Promise<LabProcess> {
  const proc = lab.spawn(ns, ['python3', '-m', 'http.server', '--bind', bindAddr, '--directory', dir, String(port)], { name: 'http' });
  await waitFor(async () => (await lab.exec(ns, ['ss', '-Hltn', `sport = :${port}`])).stdout.trim().length > 0, {
    timeoutMs: 10_000, what: `http server on ${bindAddr}:${port}`,
  });
  return proc;
}

export function urlHost(addr: string): string {
  return addr.includes(':') ? `[${addr}]` : addr;
}

/** Writes `mb` MiB of random bytes and returns the file's sha256. */
export async function makeRandomFile(path: string, mb: number): Promise<string> {
  const { randomBytes } = await import('node:crypto');
  const chunks: Buffer[] = [];
  for (let i = 0; i < mb; i++) chunks.push(randomBytes(1024 * 1024));
  writeFileSync(path, Buffer.concat(chunks));
  return sha256File(path);
}

/** curl a file from http://host:port/name inside ns; returns the sha256 of what arrived. */
export async function fetchAndHash(lab: Lab, ns: string, host: string, name: string, port = 8080, extraCurl: string[] = []): Promise<string> {
  const out = join(lab.dir, `fetch-${Date.now()}-${Math.random().toString(36).slice(2)}`);
  await lab.run(ns, ['curl', '-sS', '--fail', '--max-time', '120', ...extraCurl, '-o', out, `http://${urlHost(host)}:${port}/${name}`], { timeoutMs: 130_000 });
  return sha256File(out);
}

const UDP_ECHO = `
import socket, sys
fam = socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
while True:
    d, a = s.recvfrom(65535)
    s.sendto(d, a)
`;

const UDP_CLIENT = `
import os, socket, sys
fam = socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM)
s.settimeout(2)
ok = 0
for i in range(int(sys.argv[3])):
    size = 1 + (i * 97) % 1300
    msg = i.to_bytes(4, 'big') + os.urandom(size)
    for attempt in range(3):
        s.sendto(msg, (sys.argv[1], int(sys.argv[2])))
        try:
            d, _ = s.recvfrom(65535)
        except socket.timeout:
            continue
        if d == msg:
            ok += 1
            break
print(ok)
`;

/** A UDP echo server on addr:port in ns (every datagram is sent back to where it came from). */
export function startUdpEcho(lab: Lab, ns: string, addr: string, port: number, name = 'udp-echo'): LabProcess {
  return lab.spawn(ns, ['python3', '-c', UDP_ECHO, addr, String(port)], { name });
}

/** Sends `count` datagrams of varied sizes to a UDP echo server in the other namespace; returns how many came back intact. */
export async function udpEchoCount(lab: Lab, serverNs: string, clientNs: string, serverAddr: string, count = 50, port = 9999): Promise<number> {
  const server = startUdpEcho(lab, serverNs, serverAddr, port);
  try {
    await waitFor(async () => (await lab.exec(serverNs, ['ss', '-Hlun', `sport = :${port}`])).stdout.trim().length > 0, {
      timeoutMs: 10_000, what: `udp echo on ${serverAddr}:${port}`,
    });
    const r = await lab.run(clientNs, ['python3', '-c', UDP_CLIENT, serverAddr, String(port), String(count)], { timeoutMs: 60_000 });
    return Number(r.stdout.trim());
  } finally {
    await lab.kill(server, { graceMs: 500 });
  }
}

export interface Endpoints {
  nsA: string;
  nsB: string;
  v4A: string;
  v4B: string;
  v6A: string;
  v6B: string;
}

/** Ping both ways over IPv4 and IPv6 overlay addresses. */
export async function expectPingBothWays(lab: Lab, e: Endpoints): Promise<void> {
  for (const [ns, dst] of [[e.nsA, e.v4B], [e.nsB, e.v4A], [e.nsA, e.v6B], [e.nsB, e.v6A]]) {
    const r = await lab.exec(ns, ['ping', '-n', '-c', '3', '-i', '0.2', '-W', '2', dst]);
    expect(r.code, `ping ${dst} from ${ns}:\n${r.stdout}${r.stderr}`).toBe(0);
  }
}

/** The standard battery: ping both ways, HTTP with curl, a large TCP transfer with matching sha256, UDP datagrams. */
export async function expectFullConnectivity(lab: Lab, e: Endpoints, opts: { transferMb?: number } = {}): Promise<void> {
  await expectPingBothWays(lab, e);
  const dir = join(lab.dir, `www-${Date.now()}`);
  await lab.run(e.nsB, ['mkdir', '-p', dir]);
  writeFileSync(join(dir, 'hello.txt'), 'hello over agentvpn\n');
  const bigHash = await makeRandomFile(join(dir, 'big.bin'), opts.transferMb ?? 50);
  const http = await startHttpServer(lab, e.nsB, dir, e.v4B);
  const http6 = await startHttpServer(lab, e.nsB, dir, e.v6B, 8081);
  try {
    const hello = await lab.run(e.nsA, ['curl', '-sS', '--fail', '--max-time', '10', `http://${e.v4B}:8080/hello.txt`]);
    expect(hello.stdout).toBe('hello over agentvpn\n');
    const hello6 = await lab.run(e.nsA, ['curl', '-sS', '--fail', '--max-time', '10', `http://[${e.v6B}]:8081/hello.txt`]);
    expect(hello6.stdout).toBe('hello over agentvpn\n');
    expect(await fetchAndHash(lab, e.nsA, e.v4B, 'big.bin')).toBe(bigHash);
  } finally {
    await lab.kill(http, { graceMs: 500 });
    await lab.kill(http6, { graceMs: 500 });
  }
  expect(await udpEchoCount(lab, e.nsB, e.nsA, e.v4B, 50)).toBe(50);
  expect(await udpEchoCount(lab, e.nsA, e.nsB, e.v6A, 20, 9998)).toBe(20);
}

/** A throwaway sshd bound to `bindAddr:port` inside ns, accepting one generated client key. */
export interface SshFixture {
  clientKey: string;
  start(ns: string, bindAddr: string, port?: number): Promise<LabProcess>;
  /** Runs `echo` over ssh from ns; returns what came back. */
  run(ns: string, host: string, command: string, port?: number): Promise<string>;
}

export function sshFixture(lab: Lab): SshFixture {
  const dir = join(lab.dir, 'ssh');
  mkdirSync(dir, { recursive: true });
  const clientKey = join(dir, 'client');
  const hostKey = join(dir, 'host');
  execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', clientKey]);
  execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', hostKey]);
  const authorized = join(dir, 'authorized_keys');
  writeFileSync(authorized, readFileSync(`${clientKey}.pub`));
  mkdirSync('/run/sshd', { recursive: true, mode: 0o755 }); // sshd's privilege-separation directory
  return {
    clientKey,
    async start(ns, bindAddr, port = 2222) {
      const proc = lab.spawn(ns, ['/usr/sbin/sshd', '-D', '-e', '-h', hostKey, '-p', String(port),
        '-o', `ListenAddress=${bindAddr}`, '-o', `AuthorizedKeysFile=${authorized}`, '-o', 'StrictModes=no',
        '-o', 'UsePAM=no', '-o', 'PermitRootLogin=prohibit-password', '-o', 'PidFile=none', '-o', 'PasswordAuthentication=no'], { name: 'sshd' });
      await waitFor(async () => (await lab.exec(ns, ['ss', '-Hltn', `sport = :${port}`])).stdout.trim().length > 0, { timeoutMs: 10_000, what: `sshd on ${bindAddr}` });
      return proc;
    },
    async run(ns, host, command, port = 2222) {
      const r = await lab.run(ns, ['ssh', '-i', clientKey, '-p', String(port), '-o', 'StrictHostKeyChecking=no', '-o', 'UserKnownHostsFile=/dev/null',
        '-o', 'BatchMode=yes', '-o', 'ConnectTimeout=10', '-o', 'LogLevel=ERROR', `root@${host}`, command], { timeoutMs: 30_000 });
      return r.stdout;
    },
  };
}
