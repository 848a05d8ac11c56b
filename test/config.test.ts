import { chmod, mkdtemp, writeFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { loadConfig, parseWgQuick } from '../src/config/wgquick.js';
import { encodeKey } from '../src/crypto/keys.js';
import { formatPrefix } from '../src/ip/prefix.js';
import { AgentVpnError } from '../src/errors.js';

// Keys made with `wg genkey` / `wg pubkey` / `wg genpsk`.
const PRIV = 'mMzB2kvD8zSMKzeCqTR+v24jn/sGt13n7XoYbl0USlc=';
const PUB = 'XCzwZQJkH432/K+7s/etkninGPMI7T92AqwtORtEtjM=';
const PEER1 = 'lC47ofDiEcdwuQq6n7ZSJRDm6IUF1rPpOcoVk++n0Rw=';
const PEER2 = 'ZAG0cSiBN3udIIPGfY4aSbB/z5C7MJSIaVLAmL4MowU=';
const PSK = 'ffx1FawWjvGmMgeLYVEvqqM2q8W7LnPvNWT7sP25dQ4=';

// What a real /etc/wireguard/wg0.conf looks like, wg-quick extras included.
const REAL = `# road warrior
[Interface]
PrivateKey = ${PRIV}
Address = 10.8.0.1/24, fd00:8::1/64
ListenPort = 51820
DNS = 1.1.1.1, example.internal
Table = auto
SaveConfig = false
FwMark = 0x1234
PreUp = sysctl -w net.ipv4.ip_forward=1
PostUp = iptables -A FORWARD -i %i -j ACCEPT; iptables -t nat -A POSTROUTING -o eth0 -j MASQUERADE
PostUp = echo second hook
PreDown = true
PostDown = iptables -D FORWARD -i %i -j ACCEPT

[Peer]
# laptop
PublicKey = ${PEER1}
PresharedKey = ${PSK}
AllowedIPs = 10.8.0.2/32, fd00:8::2/128
allowedips = 192.168.50.7/24
Endpoint = 192.0.2.10:51820
PersistentKeepalive = 25

[peer]
publickey=${PEER2}
AllowedIPs = 10.8.0.3
Endpoint = [2001:db8::5]:4500
PersistentKeepalive = off
`;

function errorOf(text: string): AgentVpnError {
  try {
    parseWgQuick(text, 'wg0.conf');
  } catch (e) {
    expect(e).toBeInstanceOf(AgentVpnError);
    expect((e as AgentVpnError).code).toBe('CONFIG_INVALID');
    expect((e as AgentVpnError).hint).not.toBe('');
    return e as AgentVpnError;
  }
  throw new Error('expected CONFIG_INVALID');
}

const iface = (extra = '') => `[Interface]\nPrivateKey = ${PRIV}\n${extra}`;
const peer = (extra = '', key = PEER1) => `\n[Peer]\nPublicKey = ${key}\n${extra}`;

describe('parseWgQuick', () => {
  it('parses a real wg-quick file, ignoring keys it does not use', () => {
    const c = parseWgQuick(REAL, 'wg0.conf');
    expect(encodeKey(c.privateKey)).toBe(PRIV);
    expect(c.addresses.map(formatPrefix)).toEqual(['10.8.0.1/24', 'fd00:8::1/64']);
    expect(c.listenPort).toBe(51820);
    expect(c.mtu).toBe(1420);
    expect(c.peers).toHaveLength(2);
    const [a, b] = c.peers;
    expect(encodeKey(a.publicKey)).toBe(PEER1);
    expect(encodeKey(a.presharedKey!)).toBe(PSK);
    // Repeated AllowedIPs lines accumulate; host bits are cleared like WireGuard does.
    expect(a.allowedIps.map(formatPrefix)).toEqual(['10.8.0.2/32', 'fd00:8::2/128', '192.168.50.0/24']);
    expect(a.endpoint).toEqual({ host: '192.0.2.10', port: 51820 });
    expect(a.persistentKeepalive).toBe(25);
    expect(encodeKey(b.publicKey)).toBe(PEER2);
    expect(b.presharedKey).toBeUndefined();
    expect(b.allowedIps.map(formatPrefix)).toEqual(['10.8.0.3/32']);
    expect(b.endpoint).toEqual({ host: '2001:db8::5', port: 4500 });
    expect(b.persistentKeepalive).toBe(0);
  });

  it('defaults: random port, MTU 1420, no peers; accepts CRLF and host-name endpoints', () => {
    const c = parseWgQuick(`[Interface]\r\nPrivateKey = ${PRIV}\r\n`, 'x');
    expect(c).toMatchObject({ listenPort: 0, mtu: 1420, addresses: [], peers: [] });
    const d = parseWgQuick(iface('MTU = 1280\nAddress = fd00::1/64') + peer('Endpoint = vpn.example.com:51820\nAllowedIPs ='), 'x');
    expect(d.mtu).toBe(1280);
    expect(d.peers[0].endpoint).toEqual({ host: 'vpn.example.com', port: 51820 });
    expect(d.peers[0].allowedIps).toEqual([]);
  });

  it.each([
    ['unknown key', iface('Foo = bar'), 3, 'Foo', /unknown key/],
    ['peer key in [Interface]', iface('Endpoint = 192.0.2.1:1'), 3, 'Endpoint', /belongs in \[Peer\]/],
    ['key outside a section', `PrivateKey = ${PRIV}\n[Interface]`, 1, 'PrivateKey', /outside a section/],
    ['line without =', iface('ListenPort 51820'), 3, 'ListenPort', /Key = Value/],
    ['value without key', iface('= 10.0.0.1/24'), 3, '= 10.0.0.1/24', /missing key name/],
    ['unknown section', iface() + '\n[Peers]\n', 4, '[Peers]', /unknown section/],
    ['second [Interface]', iface() + '\n[Interface]\n', 4, '[Interface]', /second/],
    ['bad private key', `[Interface]\nPrivateKey = notakey`, 2, 'PrivateKey', /not a valid key/],
    ['bad public key', iface() + '\n[Peer]\nPublicKey = abc=', 5, 'PublicKey', /not a valid key/],
    ['bad preshared key', iface() + peer('PresharedKey = ' + PSK.slice(1)), 6, 'PresharedKey', /not a valid key/],
    ['bad address', iface('Address = 10.0.0.300/24'), 3, 'Address', /"10\.0\.0\.300\/24"/],
    ['bad prefix length', iface('Address = 10.0.0.1/33'), 3, 'Address', /10\.0\.0\.1\/33/],
    ['bad allowed ip', iface() + peer('AllowedIPs = 10.0.0.0/8, fd00::/129'), 6, 'AllowedIPs', /fd00::\/129/],
    ['listen port out of range', iface('ListenPort = 65536'), 3, 'ListenPort', /0\.\.65535/],
    ['listen port not a number', iface('ListenPort = http'), 3, 'ListenPort', /"http"/],
    ['MTU too small', iface('MTU = 500'), 3, 'MTU', /576/],
    ['MTU too large', iface('MTU = 70000'), 3, 'MTU', /65535/],
    ['MTU too small for IPv6', iface('MTU = 1200\nAddress = 10.0.0.1/24, fd00::1/64'), 3, 'MTU', /1280.*IPv6/],
    ['endpoint without port', iface() + peer('Endpoint = 192.0.2.1'), 6, 'Endpoint', /host:port/],
    ['endpoint port 0', iface() + peer('Endpoint = 192.0.2.1:0'), 6, 'Endpoint', /out of range/],
    ['endpoint port too big', iface() + peer('Endpoint = 192.0.2.1:70000'), 6, 'Endpoint', /out of range/],
    ['IPv6 endpoint without brackets', iface() + peer('Endpoint = 2001:db8::1:51820'), 6, 'Endpoint', /brackets/],
    ['bracketed non-IPv6', iface() + peer('Endpoint = [192.0.2.1]:1'), 6, 'Endpoint', /not an IPv6/],
    ['bad endpoint host', iface() + peer('Endpoint = 10.0.0.300:1'), 6, 'Endpoint', /not an IP address or host name/],
    ['bad keepalive', iface() + peer('PersistentKeepalive = sometimes'), 6, 'PersistentKeepalive', /"sometimes"/],
    ['keepalive too big', iface() + peer('PersistentKeepalive = 65536'), 6, 'PersistentKeepalive', /0\.\.65535/],
    ['duplicate single-valued key', iface('ListenPort = 1\nlistenport = 2'), 4, 'ListenPort', /twice.*line 3/],
    ['duplicate peer', iface() + peer() + peer('', PEER1), 8, 'PublicKey', /duplicate peer.*line 5/],
    ['peer with our own key', iface() + peer('', PUB), 5, 'PublicKey', /own public key/],
    ['peer without a key', iface() + '\n[Peer]\nAllowedIPs = 10.0.0.2/32\n', 4, 'PublicKey', /missing/],
  ])('%s', (_name, text, line, field, what) => {
    const e = errorOf(text);
    expect(e.message.startsWith(`wg0.conf:${line}: ${field}: `)).toBe(true);
    expect(e.message).toMatch(what);
  });

  it('names the [Interface] line when PrivateKey is missing', () => {
    const e = errorOf('# hello\n\n[Interface]\nAddress = 10.0.0.1/24\n');
    expect(e.message).toBe('wg0.conf:3: PrivateKey: missing in [Interface]');
  });

  it('reports a file without [Interface]', () => {
    expect(errorOf('# empty\n').message).toMatch(/^wg0\.conf:1: \[Interface\]: missing section/);
  });

  it('never echoes a private key in an error', () => {
    const bad = PRIV.slice(0, 40);
    expect(errorOf(`[Interface]\nPrivateKey = ${bad}`).message).not.toContain(bad);
  });
});

describe('loadConfig', () => {
  const dirs: string[] = [];
  afterAll(async () => {
    for (const d of dirs) await rm(d, { recursive: true, force: true });
  });

  it('reads and parses a file', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'agentvpn-config-'));
    dirs.push(dir);
    const file = join(dir, 'wg0.conf');
    await writeFile(file, REAL, { mode: 0o600 });
    const c = await loadConfig(file);
    expect(c.peers).toHaveLength(2);
    await writeFile(file, iface('MTU = 1'));
    await expect(loadConfig(file)).rejects.toMatchObject({ code: 'CONFIG_INVALID', message: `${file}:3: MTU: 1 is below 576, the minimum for IPv4` });
  });

  it('a config other users may read (it holds the private key) or change is refused', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'agentvpn-config-'));
    dirs.push(dir);
    const file = join(dir, 'wg0.conf');
    await writeFile(file, REAL);
    for (const mode of [0o644, 0o620]) {
      await chmod(file, mode);
      const err = await loadConfig(file).catch((e: unknown) => e);
      expect(err).toMatchObject({ code: 'CONFIG_INSECURE' });
      expect((err as AgentVpnError).hint).toContain('chmod 600');
    }
  });

  it('a missing file is CONFIG_NOT_FOUND with a hint', async () => {
    const err = await loadConfig('/nonexistent/wg9.conf').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(AgentVpnError);
    expect(err).toMatchObject({ code: 'CONFIG_NOT_FOUND', message: 'cannot read config /nonexistent/wg9.conf: no such file' });
    expect((err as AgentVpnError).hint).toMatch(/\/etc\/wireguard/);
    await expect(loadConfig(tmpdir())).rejects.toMatchObject({ code: 'CONFIG_NOT_FOUND' });
  });
});
