import { describe, it, expect } from 'vitest';
import { mkdtempSync, statSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Identity, verifySignature } from '../../src/identity/identity.js';
import { agentIdOf, publicKeyOfAgentId } from '../../src/identity/agent-id.js';
import { networkUlaPrefix, overlayIPv6 } from '../../src/identity/addresses.js';
import { publicKeyOf } from '../../src/crypto/x25519.js';
import { formatAddress, formatPrefix } from '../../src/ip/prefix.js';

describe('identity', () => {
  it('is created once (mode 0600) and reloaded unchanged', () => {
    const dir = mkdtempSync(join(tmpdir(), 'avid-'));
    const a = Identity.loadOrCreate(dir);
    const b = Identity.loadOrCreate(dir);
    expect(b.id).toBe(a.id);
    expect(statSync(join(dir, 'identity.key')).mode & 0o777).toBe(0o600);
    expect(readFileSync(join(dir, 'identity.key'), 'utf8').trim()).toHaveLength(44);
  });

  it('derives a WireGuard key pair consistent with X25519', () => {
    const id = Identity.generate();
    expect(Buffer.from(publicKeyOf(id.wgPrivateKey))).toEqual(Buffer.from(id.wgPublicKey));
    expect(Buffer.from(Identity.wgPublicKeyOf(id.publicKey))).toEqual(Buffer.from(id.wgPublicKey));
  });

  it('signs and verifies; a flipped bit or another key fails', () => {
    const id = Identity.generate();
    const msg = Buffer.from('hello');
    const sig = id.sign(msg);
    expect(verifySignature(id.publicKey, msg, sig)).toBe(true);
    expect(verifySignature(id.publicKey, Buffer.from('hellp'), sig)).toBe(false);
    expect(verifySignature(Identity.generate().publicKey, msg, sig)).toBe(false);
    expect(verifySignature(id.publicKey, msg, sig.subarray(1))).toBe(false);
  });

  it('agent IDs round-trip and reject anything else', () => {
    const id = Identity.generate();
    expect(id.id).toMatch(/^av[a-z2-7]{52}$/);
    expect(Buffer.from(publicKeyOfAgentId(id.id)!)).toEqual(Buffer.from(id.publicKey));
    expect(publicKeyOfAgentId(id.id.slice(0, -1))).toBeNull();
    expect(publicKeyOfAgentId(id.id.toUpperCase())).toBeNull();
    expect(publicKeyOfAgentId('av' + '1'.repeat(52))).toBeNull();
    expect(agentIdOf(new Uint8Array(32))).toBe('av' + 'a'.repeat(52));
  });

  it('derives permanent overlay IPv6 addresses inside the network ULA /48', () => {
    const id = Identity.generate();
    const p = networkUlaPrefix('prod');
    expect(formatPrefix(p)).toMatch(/^fd[0-9a-f]{2}:[0-9a-f]{1,4}:[0-9a-f]{1,4}::\/48$/);
    const addr = overlayIPv6('prod', id.publicKey);
    expect(Buffer.from(addr.subarray(0, 6))).toEqual(Buffer.from(p.addr.subarray(0, 6)));
    expect(formatAddress(overlayIPv6('prod', id.publicKey))).toBe(formatAddress(addr));
    expect(formatAddress(overlayIPv6('staging', id.publicKey))).not.toBe(formatAddress(addr));
  });
});
