import { describe, expect, it } from 'vitest';
import { generatePrivateKey, publicKeyOf } from '../../src/crypto/x25519.js';
import { formatPrefix, parsePrefix } from '../../src/ip/prefix.js';
import { applySet } from '../../src/uapi/apply.js';
import { DeviceUapiTarget, type UapiHost } from '../../src/uapi/device-target.js';
import { parseSetRequest, serializeGet } from '../../src/uapi/protocol.js';
import { deliver, ipv4Packet, makeSide, sendFromTun, type Side } from '../wireguard/memory-link.js';

const hex = (k: Uint8Array) => Buffer.from(k).toString('hex');

function pump(a: Side, b: Side): void {
  for (let i = 0; i < 20 && deliver(a, b) + deliver(b, a) > 0; i++);
}

/** Side A is configured only through the UAPI, on its real Device; side B directly. */
function setup(opts: { keySet?: boolean } = {}) {
  const aKey = generatePrivateKey();
  const bKey = generatePrivateKey();
  const psk = generatePrivateKey();
  const sides: Side[] = [];
  const a = makeSide(generatePrivateKey(), [192, 0, 2, 1], 51820, () => [sides[1].inbox]);
  const b = makeSide(bKey, [192, 0, 2, 2], 51821, () => [sides[0].inbox]);
  sides.push(a, b);
  b.device.addPeer({ publicKey: publicKeyOf(aKey), presharedKey: psk, allowedIps: [parsePrefix('100.64.0.1/32')!] });
  const rebinds: number[] = [];
  const host: UapiHost = {
    device: a.device,
    listenPort: () => rebinds.at(-1) ?? 51820,
    rebind: async (port) => { rebinds.push(port); },
    removePeer: (k) => a.device.removePeer(k),
  };
  const target = new DeviceUapiTarget(host, opts.keySet ?? false);
  const set = (lines: string[]) => applySet(target, parseSetRequest(lines));
  return { a, b, aKey, bKey, psk, target, set, rebinds };
}

describe('DeviceUapiTarget on a real Device', () => {
  it('a device configured only by set=1 handshakes (with the PSK) and carries traffic; get=1 reports it', async () => {
    const { a, b, aKey, bKey, psk, target, set } = setup();
    expect(serializeGet(target.state())).not.toContain('private_key=');
    await set([`private_key=${hex(aKey)}`, 'listen_port=51820', `public_key=${hex(publicKeyOf(bKey))}`, `preshared_key=${hex(psk)}`,
      'endpoint=192.0.2.2:51821', 'replace_allowed_ips=true', 'allowed_ip=100.64.0.2/32', 'allowed_ip=fd00::2/128']);
    sendFromTun(a, [ipv4Packet([100, 64, 0, 1], [100, 64, 0, 2], Buffer.from('hello'))]);
    pump(a, b);
    expect(b.tunOut.map((p) => p.subarray(28).toString())).toEqual(['hello']);
    const get = serializeGet(target.state());
    expect(get).toContain(`private_key=${hex(aKey)}\nlisten_port=51820\npublic_key=${hex(publicKeyOf(bKey))}\npreshared_key=${hex(psk)}\nprotocol_version=1\nendpoint=192.0.2.2:51821\n`);
    expect(get).toMatch(/last_handshake_time_sec=[1-9]\d+\n/);
    expect(get).toMatch(/tx_bytes=[1-9]\d*\n/);
    expect(get).toContain('allowed_ip=100.64.0.2/32\nallowed_ip=fd00::2/128\n');
  });

  it('a PSK change keeps the session; keepalive turned on sends one at once', async () => {
    const { a, b, aKey, bKey, psk, set } = setup();
    const peer = hex(publicKeyOf(bKey));
    await set([`private_key=${hex(aKey)}`, `public_key=${peer}`, `preshared_key=${hex(psk)}`, 'endpoint=192.0.2.2:51821', 'allowed_ip=100.64.0.2/32']);
    sendFromTun(a, [ipv4Packet([100, 64, 0, 1], [100, 64, 0, 2], Buffer.from('one'))]);
    pump(a, b);
    await set([`public_key=${peer}`, `preshared_key=${'77'.repeat(32)}`]);
    expect(hex(a.device.allPeers()[0].handshake.presharedKey)).toBe('77'.repeat(32));
    sendFromTun(a, [ipv4Packet([100, 64, 0, 1], [100, 64, 0, 2], Buffer.from('two'))]);
    pump(a, b);
    expect(b.tunOut.map((p) => p.subarray(28).toString())).toEqual(['one', 'two']);
    expect(b.inbox).toHaveLength(0);
    await set([`public_key=${peer}`, 'persistent_keepalive_interval=25']);
    expect(b.inbox.map((m) => m.length)).toEqual([32]); // a keepalive: a transport message with no payload
  });

  it('allowed IPs: replace, add, remove one; a prefix moves between peers; remove and replace_peers', async () => {
    const { a, target, set } = setup({ keySet: true });
    const [p1, p2] = [publicKeyOf(generatePrivateKey()), publicKeyOf(generatePrivateKey())];
    await set([`public_key=${hex(p1)}`, 'allowed_ip=10.1.0.0/16', 'allowed_ip=10.2.0.0/16', `public_key=${hex(p2)}`, 'allowed_ip=10.3.0.0/16']);
    await set([`public_key=${hex(p1)}`, 'allowed_ip=-10.1.0.0/16', `public_key=${hex(p2)}`, 'allowed_ip=10.2.0.0/16']);
    const ips = (k: Uint8Array) => a.device.allowedIps.prefixesOf(a.device.getPeer(k)!).map(formatPrefix);
    expect(ips(p1)).toEqual([]);
    expect(ips(p2)).toEqual(['10.2.0.0/16', '10.3.0.0/16']);
    await set([`public_key=${hex(p2)}`, 'replace_allowed_ips=true', 'allowed_ip=10.4.0.0/16']);
    expect(ips(p2)).toEqual(['10.4.0.0/16']);
    expect(a.device.allowedIps.lookup(Uint8Array.of(10, 3, 0, 1))).toBeUndefined();
    await set([`public_key=${hex(p1)}`, 'remove=true']);
    expect(target.hasPeer(p1)).toBe(false);
    await set(['replace_peers=true']);
    expect(a.device.allPeers()).toHaveLength(0);
  });

  it('the own key: its peer section is ignored, and setting a key drops the peer that has it', async () => {
    const { a, target, set } = setup({ keySet: true });
    const k = generatePrivateKey();
    await set([`public_key=${hex(publicKeyOf(k))}`]);
    expect(a.device.allPeers()).toHaveLength(1);
    await set([`private_key=${hex(k)}`, `public_key=${hex(publicKeyOf(k))}`]);
    expect(a.device.allPeers()).toHaveLength(0);
    await set([`private_key=${'0'.repeat(64)}`]);
    expect(target.publicKey()).toBeNull();
    expect(serializeGet(target.state())).not.toContain('private_key=');
  });

  it('listen port: rebinds only on a change; fwmark other than 0 is refused', async () => {
    const { set, rebinds } = setup();
    await set(['listen_port=51820']);
    expect(rebinds).toEqual([]);
    await set(['listen_port=51999']);
    expect(rebinds).toEqual([51999]);
    await expect(set(['fwmark=0'])).resolves.toBeUndefined();
    await expect(set(['fwmark=51820'])).rejects.toMatchObject({ errno: 95 });
  });
});

describe('a large set request', () => {
  it('yields to the event loop between batches of peers instead of holding the packet path', async () => {
    const { target, a } = setup({ keySet: true });
    const lines: string[] = [];
    for (let i = 0; i < 2048; i++) lines.push(`public_key=${hex(publicKeyOf(generatePrivateKey()))}`, `allowed_ip=10.${i >> 8}.${i & 255}.0/24`);
    const req = parseSetRequest(lines);
    let turns = 0;
    let running = true;
    const spin = () => { turns++; if (running) setImmediate(spin); };
    setImmediate(spin);
    const t0 = performance.now();
    await applySet(target, req);
    running = false;
    console.log(`2048 new peers applied in ${(performance.now() - t0).toFixed(0)} ms; the event loop ran ${turns} times meanwhile`);
    expect(a.device.allPeers()).toHaveLength(2048);
    expect(turns).toBeGreaterThanOrEqual(2048 / 128 - 1);
  });
});
