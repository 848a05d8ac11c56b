import { createHash, randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { networkUlaPrefix, overlayIPv6 } from '../../src/identity/addresses.js';
import { formatAddress } from '../../src/ip/prefix.js';

/** The derivation written out: fd + 40 bits of the name's hash, then 80 bits of the key's. */
function reference(network: string, key: Uint8Array): Buffer {
  const ula = createHash('sha256').update(`agentvpn network ${network}`).digest();
  const host = createHash('sha256').update(Buffer.concat([Buffer.from('agentvpn address '), key])).digest();
  return Buffer.concat([Buffer.from([0xfd]), ula.subarray(0, 5), host.subarray(0, 10)]);
}

describe('overlay addresses', () => {
  it('derive the ULA /48 from the network name and the host part from the key, for many names (past the cache size)', () => {
    for (let i = 0; i < 200; i++) {
      const network = `net-${i % 70}`;
      const key = randomBytes(32);
      expect(Buffer.from(overlayIPv6(network, key))).toEqual(reference(network, key));
      const p = networkUlaPrefix(network);
      expect(p.bits).toBe(48);
      expect(Buffer.from(p.addr)).toEqual(Buffer.concat([reference(network, key).subarray(0, 6), Buffer.alloc(10)]));
    }
  });

  it('keeps a known answer', () => {
    expect(formatAddress(overlayIPv6('prod', new Uint8Array(32)))).toBe(formatAddress(reference('prod', new Uint8Array(32))));
    expect(formatAddress(networkUlaPrefix('prod').addr)).toMatch(/^fd[0-9a-f]{2}:[0-9a-f]{1,4}:[0-9a-f]{1,4}::$/);
  });

  it('hands out copies: a caller that changes an address or a prefix cannot change the next derivation', () => {
    const key = randomBytes(32);
    const first = overlayIPv6('prod', key);
    first.fill(0);
    networkUlaPrefix('prod').addr.fill(0xff);
    expect(Buffer.from(overlayIPv6('prod', key))).toEqual(reference('prod', key));
    expect(networkUlaPrefix('prod').addr[0]).toBe(0xfd);
  });
});
