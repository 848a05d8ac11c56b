// Loopback harness for relay tests: agents with their own UDP socket (standing in for the
// daemon's shared socket) and a RelayClient on it, plus raw sockets for hand-made frames.
import dgram, { type Socket } from 'node:dgram';
import { createServer, type Server } from 'node:http';
import { connect, type AddressInfo, type Socket as TcpSocket } from 'node:net';
import { Identity } from '../../src/identity/identity.js';
import { formatAddress, parseAddress } from '../../src/ip/prefix.js';
import { waitFor } from '../../src/lab/index.js';
import { RelayClient, type RelayInfo, type RelayState } from '../../src/relay/client.js';
import { FRAME_CHALLENGE, encodeChallengeRequest, parseChallenge, type RelayLog } from '../../src/relay/protocol.js';
import { endpointAddress, endpointPort, makeEndpoint, sameEndpoint } from '../../src/net/endpoint.js';
import { relayNameHash } from '../../src/relay/relay-name.js';
import { startRelay, type RelayOptions, type RunningRelay } from '../../src/relay/server.js';
import { FrameReader, UPGRADE_PROTOCOL, encodeTcpFrame } from '../../src/relay/tcp.js';

/** The name hash hellos to an unnamed relay carry (relay-name.ts): the relays of these tests have no name unless a test gives one. */
export const UNNAMED = relayNameHash('');

export interface Received {
  from: Buffer;
  packet: Buffer;
}

export interface TestAgent {
  identity: Identity;
  wgKey: Buffer;
  client: RelayClient;
  socket: Socket;
  received: Received[];
  notHere: Buffer[];
  /** Drop our datagrams to the relay (UDP blocked), and let them through again. */
  blockUdp: boolean;
  close(): void;
}

function sendFromSocket(socket: Socket, buf: Buffer, ep: Uint8Array): void {
  socket.send(buf, endpointPort(ep), formatAddress(endpointAddress(ep)), () => {});
}

/** An agent on 127.0.0.1 (or `host`) with a relay client; datagrams from the relay's endpoint go to the client. */
/**
 * `tap` sees every datagram the agent sends to a relay (an on-path observer); returning false drops it
 * (an on-path attacker that holds a frame back to replay it itself).
 */
export async function startAgent(relay: RelayInfo, opts: {
  udpTimeoutMs?: number; udpRetryMs?: number; identity?: Identity; blockUdp?: boolean; host?: string; tap?: (buf: Buffer) => boolean; log?: RelayLog;
} = {}): Promise<TestAgent> {
  const identity = opts.identity ?? Identity.generate();
  const socket = dgram.createSocket('udp4');
  await new Promise<void>((resolve) => socket.bind(0, opts.host ?? '127.0.0.1', () => resolve()));
  const received: Received[] = [];
  const notHere: Buffer[] = [];
  const client = new RelayClient({
    relay, identity, udpTimeoutMs: opts.udpTimeoutMs, udpRetryMs: opts.udpRetryMs, log: opts.log,
    sendUdp: (buf, ep) => agent.blockUdp || (opts.tap?.(Buffer.from(buf)) ?? true) === false || sendFromSocket(socket, buf, ep),
    onPacket: (from, packet) => received.push({ from: Buffer.from(from), packet: Buffer.from(packet) }),
    onPeerNotHere: (key) => notHere.push(key),
  });
  socket.on('message', (msg, rinfo) => {
    const src = makeEndpoint(parseAddress(rinfo.address)!, rinfo.port);
    if (sameEndpoint(src, 0, client.endpoint, 0)) client.handleDatagram(msg, 0, msg.length);
  });
  const agent: TestAgent = {
    identity, wgKey: Buffer.from(identity.wgPublicKey), client, socket, received, notHere, blockUdp: opts.blockUdp ?? false,
    close: () => {
      client.stop();
      socket.close();
    },
  };
  client.start();
  return agent;
}

export async function waitState(agent: TestAgent, state: RelayState, timeoutMs = 15_000): Promise<void> {
  await waitFor(() => agent.client.state === state, { timeoutMs, intervalMs: 20, what: `relay client state ${state} (is ${agent.client.state})` });
}

export interface RawSocket {
  socket: Socket;
  port: number;
  inbox: Buffer[];
  send(buf: Buffer, port: number): void;
  /** Asks the relay on `port` for a challenge for this socket; it is taken out of the inbox. */
  challenge(port: number): Promise<Buffer>;
  close(): void;
}

/** A raw UDP socket on loopback (127.0.0.1, or another 127/8 `host`: another source) that keeps every datagram it gets. */
export async function rawSocket(host = '127.0.0.1'): Promise<RawSocket> {
  const socket = dgram.createSocket('udp4');
  await new Promise<void>((resolve) => socket.bind(0, host, () => resolve()));
  const inbox: Buffer[] = [];
  socket.on('message', (m) => inbox.push(m));
  const send = (buf: Buffer, port: number) => socket.send(buf, port, '127.0.0.1');
  return {
    socket, port: socket.address().port, inbox, send,
    challenge: async (port) => {
      send(encodeChallengeRequest(), port);
      await waitFor(() => inbox.some((f) => f[0] === FRAME_CHALLENGE), { timeoutMs: 3000, intervalMs: 5, what: 'a challenge from the relay' });
      const i = inbox.findIndex((f) => f[0] === FRAME_CHALLENGE);
      return Buffer.from(parseChallenge(inbox.splice(i, 1)[0])!);
    },
    close: () => socket.close(),
  };
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A RelayLog that keeps every line (level, fields, message). */
export function capturingLog(): RelayLog & { lines: { level: string; obj: object; msg?: string }[] } {
  const lines: { level: string; obj: object; msg?: string }[] = [];
  const at = (level: string) => (obj: object, msg?: string) => void lines.push({ level, obj, msg });
  return { lines, debug: at('debug'), info: at('info'), warn: at('warn'), error: at('error') };
}

/** A raw TCP fallback connection to a relay (through its HTTP server's upgrade): frames in, frames out. */
export interface RawTcp {
  socket: TcpSocket;
  inbox: Buffer[];
  send(frame: Buffer): void;
}

/**
 * What one test starts on loopback (relays, the HTTP servers of their TCP fallback, agents, raw
 * connections, anything given a closer), all stopped by stop() in afterEach.
 */
export class RelayRig {
  readonly closers: Array<() => void> = [];
  private readonly agents: TestAgent[] = [];
  private readonly relays: RunningRelay[] = [];
  private readonly servers: Server[] = [];

  /** A relay on UDP: it, and its address as agents are given it. */
  async relay(over: Partial<RelayOptions> = {}): Promise<{ relay: RunningRelay; udp: string }> {
    const relay = await startRelay({ udp: { host: '127.0.0.1', port: 0 }, ...over });
    this.relays.push(relay);
    return { relay, udp: `127.0.0.1:${relay.udpPort}` };
  }

  /** A relay on UDP and on TCP (an HTTP server's upgrade): its addresses as agents are given them. */
  async relayWithTcp(over: Partial<RelayOptions> = {}): Promise<{ relay: RunningRelay; udp: string; tcp: string; tcpPort: number }> {
    const http = createServer((_req, res) => res.writeHead(404).end());
    this.servers.push(http);
    await new Promise<void>((resolve) => http.listen(0, '127.0.0.1', () => resolve()));
    const { relay, udp } = await this.relay({ ...over, tcpServer: http });
    const tcpPort = (http.address() as AddressInfo).port;
    return { relay, udp, tcp: `http://127.0.0.1:${tcpPort}/v1/relay`, tcpPort };
  }

  async agent(...args: Parameters<typeof startAgent>): Promise<TestAgent> {
    const a = await startAgent(...args);
    this.agents.push(a);
    return a;
  }

  /** A raw TCP connection to the relay behind HTTP port `port`, from `localAddress` (another 127/8 address: another source). */
  async rawTcp(port: number, localAddress = '127.0.0.1'): Promise<RawTcp> {
    const inbox: Buffer[] = [];
    const reader = new FrameReader((f) => inbox.push(Buffer.from(f)), () => {});
    const socket = await new Promise<TcpSocket>((resolve) => {
      const s = connect({ port, host: '127.0.0.1', localAddress }, () => {
        s.write(`GET /v1/relay HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: ${UPGRADE_PROTOCOL}\r\n\r\n`);
        resolve(s);
      });
    });
    let head: Buffer | null = Buffer.alloc(0); // the HTTP answer's head until it ends; then frames
    socket.on('data', (chunk: Buffer) => {
      if (head === null) return reader.push(chunk);
      head = Buffer.concat([head, chunk]);
      const end = head.indexOf('\r\n\r\n');
      if (end < 0) return;
      const rest = head.subarray(end + 4);
      head = null;
      if (rest.length > 0) reader.push(rest);
    });
    socket.on('error', () => {});
    this.closers.push(() => socket.destroy());
    return { socket, inbox, send: (frame) => socket.write(encodeTcpFrame(frame)) };
  }

  async stop(): Promise<void> {
    for (const a of this.agents.splice(0)) a.close();
    for (const c of this.closers.splice(0)) c();
    for (const r of this.relays.splice(0)) await r.stop();
    for (const h of this.servers.splice(0)) await new Promise<void>((resolve) => h.close(() => resolve()));
  }
}
