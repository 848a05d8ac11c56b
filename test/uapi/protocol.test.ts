import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { ERRNO, LIMITS, UapiError, parseEndpoint, parseSetRequest, serializeGet } from '../../src/uapi/protocol.js';
import { applySet } from '../../src/uapi/apply.js';
import { formatPrefix, parsePrefix } from '../../src/ip/prefix.js';
import { generatePrivateKey, publicKeyOf } from '../../src/crypto/x25519.js';
import { MemoryTarget } from './memory-target.js';

const hex = (k: Uint8Array) => Buffer.from(k).toString('hex');
const KEY_A = hex(publicKeyOf(generatePrivateKey()));
const KEY_B = hex(publicKeyOf(generatePrivateKey()));

function errnoOf(lines: string[]): number {
  try {
    parseSetRequest(lines);
  } catch (e) {
    expect(e).toBeInstanceOf(UapiError);
    return (e as UapiError).errno;
  }
  return 0;
}

async function set(t: MemoryTarget, lines: string[]): Promise<void> {
  await applySet(t, parseSetRequest(lines));
}

describe('UAPI set parsing', () => {
  it('reads every key wg(8) sends', () => {
    const priv = hex(generatePrivateKey());
    const req = parseSetRequest([
      `private_key=${priv}`, 'listen_port=51820', 'fwmark=0', 'replace_peers=true',
      `public_key=${KEY_A}`, `preshared_key=${'ab'.repeat(32)}`, 'endpoint=[2001:db8::1]:51820', 'persistent_keepalive_interval=25',
      'replace_allowed_ips=true', 'allowed_ip=100.64.0.2/32', 'allowed_ip=-fd00::/64', 'protocol_version=1',
      `public_key=${KEY_B}`, 'update_only=true', 'endpoint=192.0.2.7:1', `public_key=${KEY_A}`, 'remove=true',
    ]);
    expect(hex(req.privateKey!)).toBe(priv);
    expect(req).toMatchObject({ listenPort: 51820, fwmark: 0, replacePeers: true });
    expect(req.peers).toHaveLength(3);
    const [a, b, a2] = req.peers;
    expect(a.persistentKeepalive).toBe(25);
    expect(a.endpoint!.port).toBe(51820);
    expect(a.allowedIps.map((op) => (op.kind === 'replace' ? 'replace' : `${op.kind} ${formatPrefix(op.prefix)}`)))
      .toEqual(['replace', 'add 100.64.0.2/32', 'remove fd00::/64']);
    expect(b.updateOnly).toBe(true);
    expect(a2.remove).toBe(true);
  });

  it('an all-zero private key clears it', () => {
    expect(parseSetRequest([`private_key=${'0'.repeat(64)}`]).privateKey).toBeNull();
  });

  it('refuses bad lines with the errno wireguard-go sends', () => {
    expect(errnoOf(['no equals sign'])).toBe(ERRNO.EPROTO);
    expect(errnoOf(['private_key=xyz'])).toBe(ERRNO.EINVAL);
    expect(errnoOf([`private_key=${'a'.repeat(63)}`])).toBe(ERRNO.EINVAL);
    expect(errnoOf(['listen_port=65536'])).toBe(ERRNO.EINVAL);
    expect(errnoOf(['listen_port=-1'])).toBe(ERRNO.EINVAL);
    expect(errnoOf(['listen_port=+5'])).toBe(ERRNO.EINVAL);
    expect(errnoOf(['fwmark=4294967296'])).toBe(ERRNO.EINVAL);
    expect(errnoOf(['replace_peers=false'])).toBe(ERRNO.EINVAL);
    expect(errnoOf(['endpoint=192.0.2.1:1'])).toBe(ERRNO.EINVAL); // a peer key before any public_key
    expect(errnoOf([`public_key=${'0'.repeat(64)}`])).toBe(ERRNO.EINVAL);
    expect(errnoOf([`public_key=${KEY_A}`, 'protocol_version=2'])).toBe(ERRNO.EINVAL);
    expect(errnoOf([`public_key=${KEY_A}`, 'private_key=00'])).toBe(ERRNO.EINVAL); // device key inside a peer section
    expect(errnoOf([`public_key=${KEY_A}`, 'allowed_ip=10.0.0.1'])).toBe(ERRNO.EINVAL);
    expect(errnoOf([`public_key=${KEY_A}`, 'allowed_ip=10.0.0.0/33'])).toBe(ERRNO.EINVAL);
    expect(errnoOf([`public_key=${KEY_A}`, 'persistent_keepalive_interval=70000'])).toBe(ERRNO.EINVAL);
  });

  it('parses endpoints as wg(8) writes them, nothing else', () => {
    expect(parseEndpoint('192.0.2.1:51820')).toEqual({ address: Uint8Array.of(192, 0, 2, 1), port: 51820 });
    expect(parseEndpoint('[fd00::1]:7').address).toHaveLength(16);
    for (const bad of ['192.0.2.1', '192.0.2.1:0', '192.0.2.1:65536', 'fd00::1:5', '[192.0.2.1]:5', 'example.com:5', '[fe80::1%eth0]:5', '']) {
      expect(() => parseEndpoint(bad), bad).toThrow(UapiError);
    }
  });

  it('bounds peers and allowed IPs per request', () => {
    const peers = Array.from({ length: LIMITS.peers + 1 }, (_, i) => `public_key=${(i + 1).toString(16).padStart(64, '0')}`);
    expect(errnoOf(peers)).toBe(ERRNO.EMSGSIZE);
    const ips = [`public_key=${KEY_A}`, ...Array.from({ length: LIMITS.allowedIps + 1 }, () => 'allowed_ip=10.0.0.0/8')];
    expect(errnoOf(ips)).toBe(ERRNO.EMSGSIZE);
    console.log(`limits: ${LIMITS.peers} peers, ${LIMITS.allowedIps} allowed IPs, ${LIMITS.requestBytes} bytes per request: one more is EMSGSIZE`);
  });

  it('never throws anything but UapiError on random lines', () => {
    fc.assert(fc.property(fc.array(fc.string({ maxLength: 80 }), { maxLength: 20 }), (lines) => {
      try {
        parseSetRequest(lines);
      } catch (e) {
        if (!(e instanceof UapiError)) throw e;
      }
    }), { numRuns: 2000 });
  });
});

describe('UAPI set semantics (wireguard-go)', () => {
  it('a bad line anywhere changes nothing', async () => {
    const t = new MemoryTarget();
    await expect(set(t, ['listen_port=1234', `public_key=${KEY_A}`, 'allowed_ip=10.0.0.0/8', 'bogus=1'])).rejects.toThrow(UapiError);
    expect(t.listenPort).toBe(0);
    expect(t.peers.size).toBe(0);
  });

  it('update_only does not create, remove removes, replace_peers clears', async () => {
    const t = new MemoryTarget();
    await set(t, [`public_key=${KEY_A}`, 'update_only=true', 'allowed_ip=10.0.0.0/8']);
    expect(t.peers.size).toBe(0);
    await set(t, [`public_key=${KEY_A}`, 'allowed_ip=10.0.0.0/8', `public_key=${KEY_B}`]);
    expect(t.peers.size).toBe(2);
    await set(t, [`public_key=${KEY_A}`, 'update_only=true', 'endpoint=192.0.2.1:5']);
    expect(t.peers.get(KEY_A)!.endpoint!.port).toBe(5);
    await set(t, [`public_key=${KEY_A}`, 'remove=true']);
    expect([...t.peers.keys()]).toEqual([KEY_B]);
    await set(t, ['replace_peers=true', `public_key=${KEY_A}`]);
    expect([...t.peers.keys()]).toEqual([KEY_A]);
  });

  it('replace_allowed_ips acts where it stands; "-" removes one', async () => {
    const t = new MemoryTarget();
    await set(t, [`public_key=${KEY_A}`, 'allowed_ip=10.0.0.0/8', 'replace_allowed_ips=true', 'allowed_ip=10.1.0.0/16', 'allowed_ip=fd00::/64']);
    expect(t.peers.get(KEY_A)!.allowedIps.map(formatPrefix)).toEqual(['10.1.0.0/16', 'fd00::/64']);
    await set(t, [`public_key=${KEY_A}`, 'allowed_ip=-fd00::/64']);
    expect(t.peers.get(KEY_A)!.allowedIps.map(formatPrefix)).toEqual(['10.1.0.0/16']);
  });

  it('ignores a peer section naming ourselves; keepalive turned on is sent at once', async () => {
    const t = new MemoryTarget();
    const priv = generatePrivateKey();
    await set(t, [`private_key=${hex(priv)}`, `public_key=${hex(publicKeyOf(priv))}`, `public_key=${KEY_A}`, 'persistent_keepalive_interval=25']);
    expect([...t.peers.keys()]).toEqual([KEY_A]);
    expect(t.keepalivesSent).toEqual([KEY_A]);
    await set(t, [`public_key=${KEY_A}`, 'persistent_keepalive_interval=30']);
    expect(t.keepalivesSent).toEqual([KEY_A]); // already on: no extra keepalive
  });

  it('a taken port fails first, before anything else changed', async () => {
    const t = new MemoryTarget();
    t.takenPorts.add(4000);
    const err = await set(t, [`private_key=${hex(generatePrivateKey())}`, 'listen_port=4000', `public_key=${KEY_A}`]).catch((e) => e);
    expect((err as UapiError).errno).toBe(ERRNO.EADDRINUSE);
    expect(t.privateKey).toBeNull();
    expect(t.peers.size).toBe(0);
  });
});

describe('UAPI get', () => {
  it('writes the fields in wireguard-go\'s order', async () => {
    const t = new MemoryTarget();
    const priv = generatePrivateKey();
    await set(t, [`private_key=${hex(priv)}`, 'listen_port=51820', `public_key=${KEY_A}`, 'endpoint=192.0.2.1:51820', 'allowed_ip=100.64.0.2/32', 'allowed_ip=fd00::2/128']);
    t.peers.get(KEY_A)!.lastHandshakeMs = 1_700_000_000_123;
    expect(serializeGet(t.state())).toBe([
      `private_key=${hex(priv)}`, 'listen_port=51820',
      `public_key=${KEY_A}`, `preshared_key=${'0'.repeat(64)}`, 'protocol_version=1', 'endpoint=192.0.2.1:51820',
      'last_handshake_time_sec=1700000000', 'last_handshake_time_nsec=123000000', 'tx_bytes=0', 'rx_bytes=0',
      'persistent_keepalive_interval=0', 'allowed_ip=100.64.0.2/32', 'allowed_ip=fd00::2/128', '',
    ].join('\n'));
    expect(serializeGet(new MemoryTarget().state())).toBe('');
  });

  it('prefixes come out canonical', () => {
    expect(formatPrefix(parsePrefix('fd00:0:0::1/128')!)).toBe('fd00::1/128');
  });
});
