/**
 * Port mapping on the local NAT: asks the default gateway to forward an external UDP port to
 * ours, so peers can reach us directly even behind a NAT whose mapping varies by destination.
 *
 * Two protocols on the same server port 5351: PCP (RFC 6887, MAP opcode) and its predecessor
 * NAT-PMP (RFC 6886). In 'auto' mode we follow RFC 6887 §9: send PCP first and fall back to
 * NAT-PMP when the server answers "unsupported version". No answer at all means no server, so
 * there is no second wait.
 *
 * Each call uses its own UDP socket connected to gateway:5351 (so only the gateway's answers
 * reach it), never the agent's WireGuard socket: the mapping is requested *for* the agent's
 * port (the internal port in the request), which is how both protocols work.
 */
import { randomBytes } from 'node:crypto';
import { createSocket, type Socket } from 'node:dgram';
import { isIPv4 } from 'node:net';
import type { PortMapping } from './port-mapping.js';
import { releaseUpnpMapping } from './upnp.js';

/** NAT-PMP and PCP servers listen here (RFC 6886 §3, RFC 6887 §19.1). */
export const PORTMAP_SERVER_PORT = 5351;
/** Mapping lifetime we ask for: RFC 6886 §3.3 recommends two hours; we renew at half of it. */
export const DEFAULT_MAPPING_LIFETIME_SEC = 7200;
/** First retransmission after 250 ms, doubling after each try (RFC 6886 §3.1, RFC 6887 §8.1.1). */
export const PORTMAP_FIRST_RETRY_MS = 250;
/**
 * Whole-call budget: tries at 0, 0.25, 0.75 and 1.75 s. The gateway is one hop away and
 * answers in milliseconds; one that has said nothing after 2 s runs no server (the RFC's full
 * 64 s schedule is for a daemon that keeps trying in the background, not for a netcheck).
 */
export const DEFAULT_PORTMAP_TIMEOUT_MS = 2000;

const NATPMP_VERSION = 0;
const PCP_VERSION = 2;
const NATPMP_OP_EXTERNAL_ADDRESS = 0;
const NATPMP_OP_MAP_UDP = 1;
const NATPMP_RESPONSE_BIT = 128;
const PCP_OP_MAP = 1;
const PCP_RESPONSE_BIT = 0x80;
const PCP_MAP_SIZE = 60; // 24-byte common header + 36-byte MAP opcode data
const PCP_NONCE_SIZE = 12;
const IPPROTO_UDP = 17;
/** NAT-PMP result 1 and PCP result 1 both mean "unsupported version". */
const RESULT_UNSUPPORTED_VERSION = 1;

export interface PortMappingOptions {
  /** IPv4 address of the gateway (see defaultGatewayV4()). */
  gateway: string;
  /** Our UDP port the mapping should forward to. */
  internalPort: number;
  /** Default DEFAULT_MAPPING_LIFETIME_SEC. */
  lifetimeSec?: number;
  /** External port to ask for; default the internal port (servers may choose another). */
  suggestedExternalPort?: number;
  /** Whole-call budget, default DEFAULT_PORTMAP_TIMEOUT_MS. */
  timeoutMs?: number;
  /**
   * PCP: the nonce of a mapping this client already holds, to renew it (RFC 6887 §11.2: a PCP
   * server refuses a request for an existing mapping that carries another nonce). Default: new.
   */
  nonce?: Uint8Array;
  /** 'auto' (default): PCP, then NAT-PMP if the server does not speak PCP. */
  protocol?: 'auto' | 'pcp' | 'nat-pmp';
  /**
   * Supplies the udp4 socket to use (bound or not; it is connected to the gateway and closed
   * afterwards). Default: a new socket in this process's namespace. Tests use it to send from
   * another network namespace.
   */
  openSocket?: () => Socket | Promise<Socket>;
}

export interface ReleaseOptions {
  timeoutMs?: number;
  openSocket?: () => Socket | Promise<Socket>;
}

function checkPort(port: number, what: string, allowZero = false): void {
  if (!Number.isInteger(port) || port < (allowZero ? 0 : 1) || port > 65535) {
    throw new RangeError(`${what} must be an integer port${allowZero ? ' (0–65535)' : ' (1–65535)'}, got ${port}`);
  }
}

/** A udp4 socket connected to gateway:5351, or null when that is impossible (no route, bad socket). */
async function openGatewaySocket(gateway: string, openSocket?: () => Socket | Promise<Socket>): Promise<Socket | null> {
  let sock: Socket;
  try {
    sock = openSocket ? await openSocket() : createSocket('udp4');
  } catch {
    return null;
  }
  // ICMP errors surface as 'error' events on a connected socket; exchange() listens for them,
  // and this keeps a late one from crashing the process.
  sock.on('error', () => {});
  try {
    await new Promise<void>((resolve, reject) => {
      sock.once('error', reject);
      sock.connect(PORTMAP_SERVER_PORT, gateway, () => {
        sock.off('error', reject);
        resolve();
      });
    });
    return sock;
  } catch {
    closeQuietly(sock);
    return null;
  }
}

function closeQuietly(sock: Socket): void {
  try {
    sock.close();
  } catch {
    // already closed
  }
}

/**
 * Sends `request` with the RFC retransmission schedule until `parse` accepts an answer
 * (returns something other than undefined) or the deadline passes (null). An ICMP port
 * unreachable (ECONNREFUSED on the connected socket) also ends it: nobody listens.
 */
function exchange<T>(sock: Socket, request: Buffer, parse: (msg: Buffer) => T | undefined, deadline: number): Promise<T | null> {
  return new Promise((resolve) => {
    let delay = PORTMAP_FIRST_RETRY_MS;
    let timer: NodeJS.Timeout | undefined;
    let done = false;
    const finish = (v: T | null): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      sock.off('message', onMessage);
      sock.off('error', onError);
      resolve(v);
    };
    const onMessage = (msg: Buffer): void => {
      const r = parse(msg);
      if (r !== undefined) finish(r);
    };
    const onError = (e: NodeJS.ErrnoException): void => {
      if (e.code === 'ECONNREFUSED') finish(null);
    };
    const sendOnce = (): void => {
      const left = deadline - Date.now();
      if (left <= 0) return finish(null);
      try {
        sock.send(request, (err) => {
          if (err && (err as NodeJS.ErrnoException).code === 'ECONNREFUSED') finish(null);
        });
      } catch {
        return finish(null); // socket closed under us
      }
      timer = setTimeout(sendOnce, Math.min(delay, left));
      delay *= 2;
    };
    sock.on('message', onMessage);
    sock.on('error', onError);
    sendOnce();
  });
}

// ---------------------------------------------------------------- NAT-PMP (RFC 6886)

type NatPmpAddress = { ok: true; address: Uint8Array; epoch: number } | { ok: false; result: number };
type NatPmpMap = { ok: true; externalPort: number; lifetime: number; epoch: number } | { ok: false; result: number };

function natpmpAddressRequest(): Buffer {
  return Buffer.from([NATPMP_VERSION, NATPMP_OP_EXTERNAL_ADDRESS]);
}

function natpmpMapRequest(internalPort: number, suggestedPort: number, lifetime: number): Buffer {
  const b = Buffer.alloc(12);
  b[0] = NATPMP_VERSION;
  b[1] = NATPMP_OP_MAP_UDP;
  b.writeUInt16BE(internalPort, 4);
  b.writeUInt16BE(suggestedPort, 6);
  b.writeUInt32BE(lifetime, 8);
  return b;
}

function parseNatPmpAddress(msg: Buffer): NatPmpAddress | undefined {
  if (msg.length < 4 || msg[0] !== NATPMP_VERSION || msg[1] !== NATPMP_RESPONSE_BIT + NATPMP_OP_EXTERNAL_ADDRESS) return undefined;
  const result = msg.readUInt16BE(2);
  if (result !== 0) return { ok: false, result };
  if (msg.length < 12) return undefined;
  return { ok: true, epoch: msg.readUInt32BE(4), address: new Uint8Array(msg.subarray(8, 12)) };
}

function parseNatPmpMap(internalPort: number): (msg: Buffer) => NatPmpMap | undefined {
  return (msg) => {
    if (msg.length < 4 || msg[0] !== NATPMP_VERSION || msg[1] !== NATPMP_RESPONSE_BIT + NATPMP_OP_MAP_UDP) return undefined;
    const result = msg.readUInt16BE(2);
    if (result !== 0) return { ok: false, result };
    if (msg.length < 16 || msg.readUInt16BE(8) !== internalPort) return undefined;
    return { ok: true, epoch: msg.readUInt32BE(4), externalPort: msg.readUInt16BE(10), lifetime: msg.readUInt32BE(12) };
  };
}

async function natpmpMap(sock: Socket, gateway: string, internalPort: number, suggested: number, lifetime: number, deadline: number): Promise<PortMapping | null> {
  // Both questions at once: the answers differ by opcode.
  const [addr, map] = await Promise.all([
    exchange(sock, natpmpAddressRequest(), parseNatPmpAddress, deadline),
    exchange(sock, natpmpMapRequest(internalPort, suggested, lifetime), parseNatPmpMap(internalPort), deadline),
  ]);
  if (!addr?.ok || !map?.ok || map.lifetime === 0 || map.externalPort === 0) return null;
  return {
    protocol: 'nat-pmp', externalAddress: addr.address, externalPort: map.externalPort,
    lifetimeSec: map.lifetime, gateway, epochSec: map.epoch,
  };
}

// ---------------------------------------------------------------- PCP (RFC 6887)

type PcpAnswer =
  | { kind: 'mapped'; lifetime: number; epoch: number; externalPort: number; externalAddress: Uint8Array }
  | { kind: 'unsupported-version' }
  | { kind: 'error'; result: number };

function v4Mapped(addr: Uint8Array | null): Buffer {
  const b = Buffer.alloc(16);
  b[10] = 0xff;
  b[11] = 0xff;
  if (addr) b.set(addr, 12);
  return b;
}

function parseIPv4(text: string): Uint8Array | null {
  if (!isIPv4(text)) return null;
  return Uint8Array.from(text.split('.').map(Number));
}

/** A PCP MAP request for UDP (RFC 6887 §7.1 common header, §11.1 MAP opcode data). */
function pcpMapRequest(clientAddr: Uint8Array, nonce: Uint8Array, internalPort: number, suggestedPort: number, suggestedAddr: Uint8Array | null, lifetime: number): Buffer {
  const b = Buffer.alloc(PCP_MAP_SIZE);
  b[0] = PCP_VERSION;
  b[1] = PCP_OP_MAP; // R bit clear: a request
  b.writeUInt32BE(lifetime, 4);
  v4Mapped(clientAddr).copy(b, 8);
  b.set(nonce, 24);
  b[36] = IPPROTO_UDP;
  b.writeUInt16BE(internalPort, 40);
  b.writeUInt16BE(suggestedPort, 42);
  v4Mapped(suggestedAddr).copy(b, 44); // ::ffff:0.0.0.0 = "any IPv4 address"
  return b;
}

function parsePcpMap(nonce: Uint8Array, internalPort: number): (msg: Buffer) => PcpAnswer | undefined {
  return (msg) => {
    // A NAT-PMP-only server answers a version it does not know with its own version 0
    // "unsupported version" response (RFC 6886 §3.5, RFC 6887 §9).
    if (msg.length >= 4 && msg[0] === NATPMP_VERSION && msg[1]! >= NATPMP_RESPONSE_BIT) {
      return msg.readUInt16BE(2) === RESULT_UNSUPPORTED_VERSION ? { kind: 'unsupported-version' } : undefined;
    }
    if (msg.length < 24 || msg[1] !== (PCP_RESPONSE_BIT | PCP_OP_MAP)) return undefined;
    const result = msg[3]!;
    if (result === RESULT_UNSUPPORTED_VERSION) return { kind: 'unsupported-version' };
    if (msg[0] !== PCP_VERSION) return undefined;
    // Error responses may come without (or with a mangled) opcode data; successes must match ours.
    if (result !== 0) return { kind: 'error', result };
    if (msg.length < PCP_MAP_SIZE) return undefined;
    if (!msg.subarray(24, 36).equals(nonce) || msg[36] !== IPPROTO_UDP || msg.readUInt16BE(40) !== internalPort) return undefined;
    const ext = msg.subarray(44, 60);
    const isV4 = ext.subarray(0, 10).every((x) => x === 0) && ext[10] === 0xff && ext[11] === 0xff;
    if (!isV4) return { kind: 'error', result: -1 }; // an IPv6 external address is not a NAT for our udp4 socket
    return {
      kind: 'mapped', lifetime: msg.readUInt32BE(4), epoch: msg.readUInt32BE(8),
      externalPort: msg.readUInt16BE(42), externalAddress: new Uint8Array(ext.subarray(12, 16)),
    };
  };
}

/** Our address as the gateway sees it: the source address the kernel picked for the connected socket. */
function clientAddress(sock: Socket): Uint8Array | null {
  try {
    return parseIPv4(sock.address().address);
  } catch {
    return null;
  }
}

async function pcpMap(sock: Socket, gateway: string, internalPort: number, suggested: number, lifetime: number, deadline: number, reuse?: Uint8Array): Promise<PortMapping | 'unsupported-version' | null> {
  const client = clientAddress(sock);
  if (!client) return null;
  const nonce = reuse?.length === PCP_NONCE_SIZE ? Buffer.from(reuse) : randomBytes(PCP_NONCE_SIZE);
  const answer = await exchange(sock, pcpMapRequest(client, nonce, internalPort, suggested, null, lifetime), parsePcpMap(nonce, internalPort), deadline);
  if (!answer) return null;
  if (answer.kind === 'unsupported-version') return 'unsupported-version';
  if (answer.kind !== 'mapped' || answer.lifetime === 0 || answer.externalPort === 0) return null;
  return {
    protocol: 'pcp', externalAddress: answer.externalAddress, externalPort: answer.externalPort,
    lifetimeSec: answer.lifetime, gateway, nonce: new Uint8Array(nonce), epochSec: answer.epoch,
  };
}

// ---------------------------------------------------------------- API

/**
 * Asks the gateway for a UDP port mapping to `internalPort`. Null when no PCP/NAT-PMP server
 * answers in time, when it refuses, or when the gateway is not an IPv4 address. Never throws
 * for network conditions; throws RangeError for a bad port.
 */
export async function requestUdpMapping(opts: PortMappingOptions): Promise<PortMapping | null> {
  checkPort(opts.internalPort, 'internalPort');
  const suggested = opts.suggestedExternalPort ?? opts.internalPort;
  checkPort(suggested, 'suggestedExternalPort', true);
  const lifetime = opts.lifetimeSec ?? DEFAULT_MAPPING_LIFETIME_SEC;
  if (!Number.isInteger(lifetime) || lifetime < 1 || lifetime > 0xffffffff) throw new RangeError(`lifetimeSec must be a positive integer, got ${lifetime}`);
  if (!isIPv4(opts.gateway)) return null;
  const deadline = Date.now() + (opts.timeoutMs ?? DEFAULT_PORTMAP_TIMEOUT_MS);
  const protocol = opts.protocol ?? 'auto';
  const sock = await openGatewaySocket(opts.gateway, opts.openSocket);
  if (!sock) return null;
  try {
    if (protocol !== 'nat-pmp') {
      const r = await pcpMap(sock, opts.gateway, opts.internalPort, suggested, lifetime, deadline, opts.nonce);
      if (r !== 'unsupported-version') return r;
      if (protocol === 'pcp') return null;
    }
    return await natpmpMap(sock, opts.gateway, opts.internalPort, suggested, lifetime, deadline);
  } finally {
    closeQuietly(sock);
  }
}

/**
 * Deletes a mapping (a request with lifetime 0: RFC 6886 §3.4, RFC 6887 §15). Resolves when the
 * gateway confirms or the time is up; never throws for network conditions (the mapping then
 * simply expires at the end of its lifetime).
 */
export async function releaseUdpMapping(m: PortMapping, internalPort: number, opts: ReleaseOptions = {}): Promise<void> {
  checkPort(internalPort, 'internalPort');
  if (m.protocol === 'upnp') return releaseUpnpMapping(m, opts.timeoutMs);
  if (!isIPv4(m.gateway)) return;
  const deadline = Date.now() + (opts.timeoutMs ?? DEFAULT_PORTMAP_TIMEOUT_MS);
  const sock = await openGatewaySocket(m.gateway, opts.openSocket);
  if (!sock) return;
  try {
    if (m.protocol === 'nat-pmp') {
      // §3.4: lifetime 0 and suggested external port 0 delete the mapping for internalPort.
      await exchange(sock, natpmpMapRequest(internalPort, 0, 0), parseNatPmpMap(internalPort), deadline);
    } else {
      const client = clientAddress(sock);
      if (!client || !m.nonce || m.nonce.length !== PCP_NONCE_SIZE) return;
      const req = pcpMapRequest(client, m.nonce, internalPort, m.externalPort, m.externalAddress, 0);
      await exchange(sock, req, parsePcpMap(m.nonce, internalPort), deadline);
    }
  } finally {
    closeQuietly(sock);
  }
}

/** "203.0.113.1:41641" for a mapping. */
export function formatMappingEndpoint(m: PortMapping): string {
  return `${Array.from(m.externalAddress).join('.')}:${m.externalPort}`;
}
