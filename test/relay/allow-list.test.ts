import { describe, expect, it } from 'vitest';
import { agentIdOf } from '../../src/identity/agent-id.js';
import { Identity } from '../../src/identity/identity.js';
import { DEFAULT_ALLOW_NETWORK, edKeysOfWgKey, parseAllowKeys } from '../../src/relay/allow-list.js';

describe("the standalone relay's allow list", () => {
  const [a, b, c, d] = [Identity.generate(), Identity.generate(), Identity.generate(), Identity.generate()];
  const b64 = (k: Uint8Array) => Buffer.from(k).toString('base64');

  it('maps agent IDs, Ed25519 and WireGuard keys to their networks, "default" without one', () => {
    const list = parseAllowKeys([`red:${agentIdOf(a.publicKey)}`, `blue:${b64(b.wgPublicKey)}`, b64(c.publicKey), `blue:${agentIdOf(a.publicKey)}`]);
    expect(list.hook(a.publicKey)).toEqual(['red', 'blue']);
    expect(list.hook(b.publicKey)).toEqual(['blue']);
    expect(list.hook(c.publicKey)).toEqual([DEFAULT_ALLOW_NETWORK]);
    expect(list.hook(d.publicKey)).toBeNull();
    expect(list).toMatchObject({ keys: 3, networks: ['blue', 'default', 'red'] });
  });

  it('finds the Ed25519 keys of a WireGuard key (either sign), so the lookup needs no key conversion per hello', () => {
    for (const id of [a, b, c, d]) expect(edKeysOfWgKey(id.wgPublicKey).map(b64)).toContain(b64(id.publicKey));
    expect(edKeysOfWgKey(Buffer.alloc(32, 0xff))).toEqual([]);
  });

  it('refuses malformed entries with a hint', () => {
    expect(() => parseAllowKeys(['Red:' + agentIdOf(a.publicKey)])).toThrow(/invalid network/);
    expect(() => parseAllowKeys(['red:nope'])).toThrow(expect.objectContaining({ code: 'BAD_KEY', hint: expect.stringContaining('[NETWORK:]KEY') }));
  });
});
