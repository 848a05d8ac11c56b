/**
 * The WireGuard cross-platform userspace API ("UAPI", https://www.wireguard.com/xplatform/) as
 * wg(8) and wireguard-go speak it on /var/run/wireguard/<iface>.sock: lines of `key=value\n`,
 * keys and PSKs in lowercase hex, a request and its answer each end with an empty line.
 *
 * | request          | then                                    | answer                                   |
 * | ---------------- | --------------------------------------- | ---------------------------------------- |
 * | `get=1\n`        | `\n`                                    | device keys, peer sections, `errno=0\n\n` |
 * | `set=1\n`        | device keys, peer sections, `\n`        | `errno=0\n\n` or `errno=-<errno>\n\n`     |
 *
 * | key                              | in     | value                                   | get | set |
 * | -------------------------------- | ------ | --------------------------------------- | --- | --- |
 * | private_key                      | device | 64 hex; all zeros clears it             | yes | yes |
 * | listen_port                      | device | 0..65535 (0: any free port)             | yes | yes |
 * | fwmark                           | device | 0..2^32-1 (0: none)                     | yes | yes |
 * | replace_peers                    | device | `true`: remove every peer first          |     | yes |
 * | public_key                       | peer   | 64 hex; starts a peer section           | yes | yes |
 * | remove                           | peer   | `true`: remove this peer                 |     | yes |
 * | update_only                      | peer   | `true`: do not create it                 |     | yes |
 * | preshared_key                    | peer   | 64 hex; all zeros: none                 | yes | yes |
 * | endpoint                         | peer   | `a.b.c.d:port` or `[v6]:port`            | yes | yes |
 * | persistent_keepalive_interval    | peer   | seconds 0..65535 (0: off)               | yes | yes |
 * | replace_allowed_ips              | peer   | `true`: drop its allowed IPs first       |     | yes |
 * | allowed_ip                       | peer   | prefix; a leading `-` removes it        | yes | yes |
 * | protocol_version                 | peer   | `1`                                     | yes | yes |
 * | last_handshake_time_sec / _nsec  | peer   | unix time of the last handshake (0: none)| yes |     |
 * | rx_bytes / tx_bytes              | peer   | counters                                | yes |     |
 *
 * Errors travel as negative errno values, as wireguard-go sends them (EINVAL for a bad value or
 * key, EPROTO for a line without `=`, EADDRINUSE when the port cannot be bound).
 * A set request is parsed and checked whole before anything is applied, so a bad line changes
 * nothing (wireguard-go applies the lines before it).
 */
import { AgentVpnError } from '../errors.js';
import { formatAddress, formatPrefix, parseAddress, parsePrefix, type Prefix } from '../ip/prefix.js';

export const ERRNO = {
  EPERM: 1,
  EIO: 5,
  EINVAL: 22,
  EPROTO: 71,
  EMSGSIZE: 90,
  EOPNOTSUPP: 95,
  EADDRINUSE: 98,
} as const;

/** A refused request: what goes back as `errno=-<errno>`, with the reason for the log. */
export class UapiError extends AgentVpnError {
  constructor(readonly errno: number, message: string) {
    super('UAPI_REFUSED', message, 'see https://www.wireguard.com/xplatform/ for the keys and values a set=1 request takes');
  }
}

/** Limits per set request: a config file is far below them; they bound what one request can make us hold. */
export const LIMITS = {
  /** Bytes of one request: ~16k peers with a few allowed IPs each fit (a wg-quick fleet config is KBs). */
  requestBytes: 4 * 1024 * 1024,
  /** The longest valid line is ~80 bytes (a key line); anything far longer is garbage. */
  lineBytes: 512,
  /** Peer sections per request. */
  peers: 16384,
  /** allowed_ip lines per request, all peers together. */
  allowedIps: 65536,
} as const;

export interface UapiEndpoint {
  address: Uint8Array; // 4 or 16 bytes
  port: number;
}

export type AllowedIpOp = { kind: 'replace' } | { kind: 'add'; prefix: Prefix } | { kind: 'remove'; prefix: Prefix };

/** One peer section of a set request. */
export interface PeerChange {
  publicKey: Uint8Array;
  remove: boolean;
  updateOnly: boolean;
  /** All zeros: no PSK. */
  presharedKey?: Uint8Array;
  endpoint?: UapiEndpoint;
  persistentKeepalive?: number;
  /** In request order: `replace_allowed_ips` between additions matters. */
  allowedIps: AllowedIpOp[];
}

export interface SetRequest {
  /** null: the all-zero key, which clears it. */
  privateKey?: Uint8Array | null;
  listenPort?: number;
  fwmark?: number;
  replacePeers: boolean;
  peers: PeerChange[];
}

/** What get=1 reports of a peer. */
export interface UapiPeerState {
  publicKey: Uint8Array;
  presharedKey: Uint8Array | null;
  /** Null when unknown, or when it is not an IP address (a relayed path). */
  endpoint: UapiEndpoint | null;
  /** Unix ms; null: no handshake yet. */
  lastHandshakeMs: number | null;
  rxBytes: number;
  txBytes: number;
  persistentKeepalive: number;
  allowedIps: Prefix[];
}

export interface UapiDeviceState {
  privateKey: Uint8Array | null;
  listenPort: number;
  fwmark: number;
  peers: UapiPeerState[];
}

const KEY_HEX = /^[0-9a-fA-F]{64}$/;
const ZERO_KEY = new Uint8Array(32);

function invalid(message: string): UapiError {
  return new UapiError(ERRNO.EINVAL, message);
}

function parseKey(key: string, value: string): Uint8Array {
  if (!KEY_HEX.test(value)) throw invalid(`${key}: expected 64 hex digits`);
  return new Uint8Array(Buffer.from(value, 'hex'));
}

function isZero(key: Uint8Array): boolean {
  return key.every((b) => b === 0);
}

/** Decimal without sign, at most `max`, as Go's strconv.ParseUint. */
function parseUint(key: string, value: string, max: number): number {
  if (!/^\d{1,10}$/.test(value) || Number(value) > max) throw invalid(`${key}: expected an integer 0..${max}`);
  return Number(value);
}

function parseTrue(key: string, value: string): true {
  if (value !== 'true') throw invalid(`${key}: the only value is "true"`);
  return true;
}

/** "192.0.2.1:51820" or "[2001:db8::1]:51820"; no host names (wg resolves them), no zones. */
export function parseEndpoint(value: string): UapiEndpoint {
  const m = /^\[([0-9a-fA-F:.]+)\]:(\d{1,5})$/.exec(value) ?? /^([0-9.]+):(\d{1,5})$/.exec(value);
  const address = m ? parseAddress(m[1]) : null;
  const port = m ? Number(m[2]) : 0;
  if (!address || (value.startsWith('[') !== (address.length === 16)) || port < 1 || port > 65535) {
    throw invalid(`endpoint: expected IPv4:port or [IPv6]:port with a port 1..65535, got "${value}"`);
  }
  return { address, port };
}

export function formatUapiEndpoint(ep: UapiEndpoint): string {
  const host = formatAddress(ep.address);
  return ep.address.length === 4 ? `${host}:${ep.port}` : `[${host}]:${ep.port}`;
}

function parseAllowedIp(value: string): AllowedIpOp {
  const remove = value.startsWith('-');
  const text = remove ? value.slice(1) : value;
  const prefix = text.includes('/') ? parsePrefix(text) : null; // the prefix length is not optional here
  if (!prefix) throw invalid(`allowed_ip: expected an address/length prefix, got "${value}"`);
  return remove ? { kind: 'remove', prefix } : { kind: 'add', prefix };
}

function newPeer(publicKey: Uint8Array): PeerChange {
  return { publicKey, remove: false, updateOnly: false, allowedIps: [] };
}

/**
 * The lines of a set request after `set=1` and before the empty line, checked whole. Throws
 * UapiError (EPROTO for a line without `=`, EINVAL for a bad key or value, EMSGSIZE past LIMITS).
 */
export function parseSetRequest(lines: readonly string[]): SetRequest {
  const req: SetRequest = { replacePeers: false, peers: [] };
  let peer: PeerChange | null = null;
  let allowedIps = 0;
  for (const line of lines) {
    const eq = line.indexOf('=');
    if (eq < 0) throw new UapiError(ERRNO.EPROTO, `line without "=": ${JSON.stringify(line.slice(0, 80))}`);
    const key = line.slice(0, eq);
    const value = line.slice(eq + 1);
    if (key === 'public_key') {
      if (req.peers.length >= LIMITS.peers) throw new UapiError(ERRNO.EMSGSIZE, `more than ${LIMITS.peers} peers in one request`);
      const publicKey = parseKey(key, value);
      if (isZero(publicKey)) throw invalid('public_key: the all-zero key is not a peer');
      peer = newPeer(publicKey);
      req.peers.push(peer);
      continue;
    }
    if (peer === null) {
      switch (key) {
        case 'private_key': {
          const k = parseKey(key, value);
          req.privateKey = isZero(k) ? null : k;
          break;
        }
        case 'listen_port': req.listenPort = parseUint(key, value, 0xffff); break;
        case 'fwmark': req.fwmark = parseUint(key, value, 0xffff_ffff); break;
        case 'replace_peers': req.replacePeers = parseTrue(key, value); break;
        default: throw invalid(`unknown device key "${key.slice(0, 40)}"`);
      }
      continue;
    }
    switch (key) {
      case 'remove': peer.remove = parseTrue(key, value); break;
      case 'update_only': peer.updateOnly = parseTrue(key, value); break;
      case 'preshared_key': peer.presharedKey = parseKey(key, value); break;
      case 'endpoint': peer.endpoint = parseEndpoint(value); break;
      case 'persistent_keepalive_interval': peer.persistentKeepalive = parseUint(key, value, 0xffff); break;
      case 'replace_allowed_ips': parseTrue(key, value); peer.allowedIps.push({ kind: 'replace' }); break;
      case 'allowed_ip':
        if (++allowedIps > LIMITS.allowedIps) throw new UapiError(ERRNO.EMSGSIZE, `more than ${LIMITS.allowedIps} allowed IPs in one request`);
        peer.allowedIps.push(parseAllowedIp(value));
        break;
      case 'protocol_version':
        if (value !== '1') throw invalid(`protocol_version: only 1 is known, got "${value.slice(0, 20)}"`);
        break;
      default: throw invalid(`unknown peer key "${key.slice(0, 40)}"`);
    }
  }
  return req;
}

function hex(key: Uint8Array | null): string {
  return Buffer.from(key ?? ZERO_KEY).toString('hex');
}

/** The answer to get=1, without the final `errno=0` (the server adds it). */
export function serializeGet(state: UapiDeviceState): string {
  const out: string[] = [];
  if (state.privateKey) out.push(`private_key=${hex(state.privateKey)}`);
  if (state.listenPort !== 0) out.push(`listen_port=${state.listenPort}`);
  if (state.fwmark !== 0) out.push(`fwmark=${state.fwmark}`);
  for (const p of state.peers) {
    out.push(`public_key=${hex(p.publicKey)}`, `preshared_key=${hex(p.presharedKey)}`, 'protocol_version=1');
    if (p.endpoint) out.push(`endpoint=${formatUapiEndpoint(p.endpoint)}`);
    const ms = p.lastHandshakeMs ?? 0;
    out.push(
      `last_handshake_time_sec=${Math.floor(ms / 1000)}`,
      `last_handshake_time_nsec=${(ms % 1000) * 1_000_000}`,
      `tx_bytes=${p.txBytes}`,
      `rx_bytes=${p.rxBytes}`,
      `persistent_keepalive_interval=${p.persistentKeepalive}`,
    );
    for (const prefix of p.allowedIps) out.push(`allowed_ip=${formatPrefix(prefix)}`);
  }
  return out.length ? out.join('\n') + '\n' : '';
}
