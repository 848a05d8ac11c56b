import { isIPv4, isIPv6 } from 'node:net';
import { AgentVpnError } from '../errors.js';
import { readRootFile } from './root-file.js';
import { decodeKey, encodeKey } from '../crypto/keys.js';
import { publicKeyOf } from '../crypto/x25519.js';
import { networkOf, parsePrefix, type Prefix } from '../ip/prefix.js';
import { DEFAULT_MTU, type DeviceConfig, type PeerConfig } from './types.js';

// Canonical spellings, used in messages; keys match case-insensitively like wg-quick.
const INTERFACE_KEYS = ['PrivateKey', 'Address', 'ListenPort', 'MTU', 'DNS', 'Table',
  'PreUp', 'PostUp', 'PreDown', 'PostDown', 'SaveConfig', 'FwMark'];
const PEER_KEYS = ['PublicKey', 'PresharedKey', 'AllowedIPs', 'Endpoint', 'PersistentKeepalive'];
// wg-quick lets these repeat (values accumulate); any other key given twice is a mistake.
const REPEATABLE = new Set(['Address', 'AllowedIPs', 'DNS', 'PreUp', 'PostUp', 'PreDown', 'PostDown']);

const HINT = {
  key: 'a key is 44 characters of base64 (32 bytes), as printed by `agentvpn genkey`, `agentvpn pubkey` or `wg genpsk`',
  address: 'use comma-separated addresses with a prefix length, e.g. `Address = 10.0.0.1/24, fd00::1/64`',
  allowedIps: 'use comma-separated networks, e.g. `AllowedIPs = 10.0.0.2/32, fd00::2/128`',
  listenPort: 'use a UDP port number 0..65535 (0 or no ListenPort picks a random port)',
  mtu: 'use a number 576..65535 (at least 1280 when an IPv6 address is set); 1420 suits most links',
  endpoint: 'use host:port or [IPv6]:port, e.g. `Endpoint = 192.0.2.1:51820` or `Endpoint = [2001:db8::1]:51820`',
  keepalive: 'use seconds 1..65535 (25 keeps NAT mappings open), or 0 / off to disable',
  keys: `[Interface] takes ${INTERFACE_KEYS.join(', ')}; [Peer] takes ${PEER_KEYS.join(', ')}`,
};

interface PeerDraft extends Partial<PeerConfig> {
  line: number; // the [Peer] header
  keyLine: number; // the PublicKey line
  allowedIps: Prefix[];
  persistentKeepalive: number;
}

/** Parse the text of a wg-quick config; every problem is one CONFIG_INVALID error naming file:line: Field. */
export function parseWgQuick(text: string, file: string): DeviceConfig {
  const fail = (line: number, field: string, what: string, hint: string): never => {
    throw new AgentVpnError('CONFIG_INVALID', `${file}:${line}: ${field}: ${what}`, hint);
  };

  let section: 'Interface' | 'Peer' | null = null;
  let interfaceLine = 0;
  let privateKey: Uint8Array | undefined;
  const addresses: Prefix[] = [];
  let listenPort = 0;
  let mtu = DEFAULT_MTU;
  let mtuLine = 0;
  const peers: PeerDraft[] = [];
  const peerKeys = new Map<string, number>(); // base64 public key -> its line
  let seen = new Map<string, number>(); // keys given in the current section -> line

  const lines = text.split(/\r?\n/);
  for (let i = 0; i < lines.length; i++) {
    const n = i + 1;
    const s = lines[i].replace(/#.*/, '').trim(); // wg-quick strips from the first '#'
    if (!s) continue;

    if (s.startsWith('[')) {
      const name = /^\[\s*(\w+)\s*\]$/.exec(s)?.[1].toLowerCase();
      seen = new Map();
      if (name === 'interface') {
        if (interfaceLine) fail(n, '[Interface]', `second [Interface] section (the first is on line ${interfaceLine})`, 'a config has exactly one [Interface] section');
        section = 'Interface';
        interfaceLine = n;
      } else if (name === 'peer') {
        section = 'Peer';
        peers.push({ line: n, keyLine: 0, allowedIps: [], persistentKeepalive: 0 });
      } else {
        fail(n, s, 'unknown section', 'sections are [Interface] (exactly one) and [Peer] (one per peer)');
      }
      continue;
    }

    const eq = s.indexOf('=');
    if (eq < 0) fail(n, s.split(/\s/)[0], 'expected `Key = Value`', HINT.keys);
    const rawKey = s.slice(0, eq).trim();
    const value = s.slice(eq + 1).trim();
    if (!rawKey) fail(n, s, 'missing key name before "="', HINT.keys);
    if (!section) fail(n, rawKey, 'key outside a section', 'put keys under an [Interface] or [Peer] header');
    const own = section === 'Interface' ? INTERFACE_KEYS : PEER_KEYS;
    const other = section === 'Interface' ? PEER_KEYS : INTERFACE_KEYS;
    const field = own.find((k) => k.toLowerCase() === rawKey.toLowerCase());
    if (!field) {
      const elsewhere = other.some((k) => k.toLowerCase() === rawKey.toLowerCase());
      fail(n, rawKey, elsewhere ? `belongs in [${section === 'Interface' ? 'Peer' : 'Interface'}], not [${section}]` : `unknown key in [${section}]`, HINT.keys);
    }
    const key = field!;
    if (!REPEATABLE.has(key) && seen.has(key)) fail(n, key, `given twice in this section (first on line ${seen.get(key)})`, 'keep only one of the lines');
    seen.set(key, n);

    const parseKey = (): Uint8Array => {
      try {
        return decodeKey(value);
      } catch {
        // Never echo the value: it may be a private key.
        return fail(n, key, 'not a valid key (expected 44 characters of base64 encoding 32 bytes)', HINT.key);
      }
    };
    const parsePrefixes = (hint: string): Prefix[] =>
      value.split(',').map((p) => p.trim()).filter(Boolean).map((p) =>
        parsePrefix(p) ?? fail(n, key, `"${p}" is not an IP address with an optional /prefix-length`, hint));
    const parseUint = (max: number, hint: string): number => {
      if (!/^\d+$/.test(value) || Number(value) > max) fail(n, key, `"${value}" is not a number 0..${max}`, hint);
      return Number(value);
    };

    const peer = peers[peers.length - 1];
    switch (key) {
      case 'PrivateKey':
        privateKey = parseKey();
        break;
      case 'Address':
        addresses.push(...parsePrefixes(HINT.address));
        break;
      case 'ListenPort':
        listenPort = parseUint(65535, HINT.listenPort);
        break;
      case 'MTU':
        mtu = parseUint(65535, HINT.mtu);
        mtuLine = n;
        if (mtu < 576) fail(n, key, `${mtu} is below 576, the minimum for IPv4`, HINT.mtu);
        break;
      case 'PublicKey': {
        peer.publicKey = parseKey();
        peer.keyLine = n;
        const b64 = encodeKey(peer.publicKey);
        const first = peerKeys.get(b64);
        if (first) fail(n, key, `duplicate peer (the same public key is on line ${first})`, 'merge the two [Peer] sections into one');
        peerKeys.set(b64, n);
        break;
      }
      case 'PresharedKey':
        peer.presharedKey = parseKey();
        break;
      case 'AllowedIPs':
        // WireGuard stores networks, so 10.0.0.7/24 means 10.0.0.0/24.
        peer.allowedIps.push(...parsePrefixes(HINT.allowedIps).map(networkOf));
        break;
      case 'Endpoint': {
        const ep = parseEndpoint(value);
        if (typeof ep === 'string') fail(n, key, ep, HINT.endpoint);
        else peer.endpoint = ep;
        break;
      }
      case 'PersistentKeepalive':
        peer.persistentKeepalive = value.toLowerCase() === 'off' ? 0 : parseUint(65535, HINT.keepalive);
        break;
      default:
        break; // wg-quick keys (DNS, Table, hooks, SaveConfig, FwMark) a userspace daemon does not act on
    }
  }

  if (!interfaceLine) fail(1, '[Interface]', 'missing section', 'a config needs an [Interface] section with at least PrivateKey');
  if (!privateKey) return fail(interfaceLine, 'PrivateKey', 'missing in [Interface]', `add \`PrivateKey = …\`; ${HINT.key}`);
  if (mtu < 1280 && addresses.some((a) => a.family === 6)) {
    fail(mtuLine, 'MTU', `${mtu} is below 1280, the minimum for IPv6 (an IPv6 Address is set)`, HINT.mtu);
  }
  const ownPublic = encodeKey(publicKeyOf(privateKey));
  const done: PeerConfig[] = peers.map((p) => {
    if (!p.publicKey) return fail(p.line, 'PublicKey', 'missing in [Peer]', `add \`PublicKey = …\` with the peer's public key; ${HINT.key}`);
    if (encodeKey(p.publicKey) === ownPublic) {
      fail(p.keyLine, 'PublicKey', "is this interface's own public key", "a peer's PublicKey is the other side's key: run `agentvpn pubkey` with the peer's private key");
    }
    const { line: _l, keyLine: _k, ...cfg } = p;
    return { ...cfg, publicKey: p.publicKey };
  });
  return { privateKey, addresses, listenPort, mtu, peers: done };
}

/** host:port or [v6]:port; returns the endpoint or a description of what is wrong. */
function parseEndpoint(value: string): { host: string; port: number } | string {
  const m = /^\[([^\]]*)\]:(\d+)$/.exec(value) ?? /^([^:[\]]*):(\d+)$/.exec(value);
  if (!m) {
    return value.split(':').length > 2 && !value.startsWith('[')
      ? `"${value}": an IPv6 address needs brackets, as in [2001:db8::1]:51820`
      : `"${value}" is not host:port`;
  }
  const [, host, portText] = m;
  const port = Number(portText);
  if (port < 1 || port > 65535) return `port ${portText} is out of range 1..65535`;
  if (value.startsWith('[')) return isIPv6(host) ? { host, port } : `"${host}" is not an IPv6 address`;
  const hostname = /^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$/;
  // Dotted numbers that are not an IPv4 address (10.0.0.300) are typos, not hostnames.
  const ok = isIPv4(host) || (hostname.test(host) && !/^[\d.]+$/.test(host));
  return ok ? { host, port } : `"${host}" is not an IP address or host name`;
}

/** Read and parse a wg-quick file; an unreadable file is CONFIG_NOT_FOUND. */
export async function loadConfig(file: string): Promise<DeviceConfig> {
  let text: string;
  try {
    text = readRootFile(file, (t) => (/^\s*PrivateKey\s*=/im.test(t) ? 'a private key' : null)).text;
  } catch (e) {
    if (e instanceof AgentVpnError) throw e;
    const code = (e as NodeJS.ErrnoException).code;
    const [why, hint] =
      code === 'ENOENT' ? ['no such file', 'check the path; wg-quick configs usually live in /etc/wireguard/NAME.conf']
      : code === 'EACCES' ? ['permission denied', 'configs hold a private key and are readable by root only: run with sudo']
      : code === 'EISDIR' ? ['it is a directory', 'pass the config file itself, e.g. /etc/wireguard/wg0.conf']
      : [(e as Error).message, 'check that the file exists and is readable'];
    throw new AgentVpnError('CONFIG_NOT_FOUND', `cannot read config ${file}: ${why}`, hint, { cause: e });
  }
  return parseWgQuick(text, file);
}
