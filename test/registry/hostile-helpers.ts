/** What the registry's adversarial tests share: agents made over HTTP, raw sockets, HTTP from a chosen source address. */
import { request } from 'node:http';
import { connect, type Socket } from 'node:net';
import { Identity } from '../../src/identity/identity.js';
import { RegistryClient, type JoinResult } from '../../src/registry/client.js';
import { RECORD_LIFETIME_MS, signRecord, type AgentRecord } from '../../src/registry/record.js';

export function recordFor(identity: Identity, join: JoinResult, name: string, over: Partial<AgentRecord> = {}): AgentRecord {
  const now = Date.now();
  return {
    v: 1, network: join.network, id: identity.id, name, wgPublicKey: Buffer.from(identity.wgPublicKey).toString('base64'),
    ipv4: join.ipv4, ipv6: join.ipv6, endpoints: ['192.0.2.7:51820'], capabilities: ['svc.test'], seq: 1, issuedAt: now,
    expiresAt: now + RECORD_LIFETIME_MS, ...over,
  };
}

export interface TestAgent {
  identity: Identity;
  client: RegistryClient;
  join: JoinResult;
}

/** Joins `name` with `token` and publishes its record (with `extra` fields merged in, signed or not). */
export async function makeAgent(url: string, network: string, name: string, token: string, extra: Record<string, unknown> = {}): Promise<TestAgent> {
  const identity = Identity.generate();
  const client = new RegistryClient({ url, identity, network, timeoutMs: 10_000 });
  const join = await client.join(name, token);
  await client.publish(signRecord(identity, { ...recordFor(identity, join, name), ...extra } as AgentRecord));
  return { identity, client, join };
}

/** An HTTP answer from a chosen local source address (so a "health checker" is not the attacker's address). */
export function httpGet(port: number, path: string, opts: { localAddress?: string; headers?: Record<string, string>; timeoutMs?: number } = {}): Promise<{ status: number; text: string }> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, path, localAddress: opts.localAddress, headers: opts.headers, agent: false, timeout: opts.timeoutMs ?? 5000 }, (res) => {
      let text = '';
      res.setEncoding('utf8').on('data', (d: string) => (text += d)).on('end', () => resolve({ status: res.statusCode ?? 0, text }));
    });
    req.on('timeout', () => req.destroy(new Error('no answer in time')));
    req.on('error', reject);
    req.end();
  });
}

/**
 * An event-stream request that reads only the first bytes of the answer (its status line),
 * then stops reading: a subscriber that never takes what it is sent.
 */
export function stuckStream(port: number, path: string, authorization: string): Promise<{ status: number; socket: Socket }> {
  return new Promise((resolve) => {
    const socket = connect({ host: '127.0.0.1', port }, () => {
      socket.write(`GET ${path} HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: ${authorization}\r\naccept: text/event-stream\r\n\r\n`);
    });
    socket.once('data', (d: Buffer) => {
      socket.pause();
      resolve({ status: Number(/^HTTP\/1\.1 (\d{3})/.exec(d.toString('latin1'))?.[1] ?? 0), socket });
    });
    socket.on('error', () => resolve({ status: 0, socket }));
    socket.on('close', () => resolve({ status: 0, socket }));
  });
}

/** Opens `n` TCP connections from `localAddress` that send nothing; resolves once each is connected or failed. */
export async function idleConnections(port: number, n: number, localAddress = '127.0.0.1'): Promise<Socket[]> {
  const sockets: Socket[] = [];
  await Promise.all(Array.from({ length: n }, () => new Promise<void>((resolve) => {
    const s = connect({ host: '127.0.0.1', port, localAddress }, () => resolve());
    s.resume(); // so a close by the server is seen
    s.on('error', () => resolve());
    s.on('close', () => resolve());
    sockets.push(s);
  })));
  return sockets;
}
