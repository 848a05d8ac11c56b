import { describe, it, expect } from 'vitest';
import { Identity } from '../../src/identity/identity.js';
import { overlayIPv6 } from '../../src/identity/addresses.js';
import { formatAddress } from '../../src/ip/prefix.js';
import { canonicalRecord, canonicalRecordBytes, signRecord, verifyRecord, type AgentRecord } from '../../src/registry/record.js';
import { parseCapability, formatCapability, capabilityMatches, anyCapabilityMatches } from '../../src/net/capabilities.js';

function recordFor(id: Identity, over: Partial<AgentRecord> = {}): AgentRecord {
  const now = Date.now();
  return {
    v: 1, network: 'lab', id: id.id, name: 'planner', wgPublicKey: Buffer.from(id.wgPublicKey).toString('base64'),
    ipv4: '100.64.0.5', ipv6: formatAddress(overlayIPv6('lab', id.publicKey)), endpoints: ['192.0.2.1:51820', '[fd00::1]:51820'],
    capabilities: ['llm.plan', 'llm.inference@1;model=llama3'], seq: 1, issuedAt: now, expiresAt: now + 60_000, ...over,
  };
}

describe('signed agent records', () => {
  it('verify when signed by the key in the ID', () => {
    const id = Identity.generate();
    expect(verifyRecord(signRecord(id, recordFor(id)), { network: 'lab' })).toEqual({ ok: true });
  });

  it('take the derived ipv6 in any valid spelling, and refuse one that differs in a single bit', () => {
    const id = Identity.generate();
    const addr = overlayIPv6('lab', id.publicKey);
    const groups = Array.from({ length: 8 }, (_, i) => ((addr[2 * i] << 8) | addr[2 * i + 1]).toString(16).padStart(4, '0'));
    for (const spelling of [groups.join(':'), groups.join(':').toUpperCase()]) {
      expect(verifyRecord(signRecord(id, recordFor(id, { ipv6: spelling })))).toEqual({ ok: true });
    }
    for (const bit of [0, 47, 48, 127]) {
      const wrong = Uint8Array.from(addr);
      wrong[bit >> 3] ^= 0x80 >> (bit & 7);
      expect(verifyRecord(signRecord(id, recordFor(id, { ipv6: formatAddress(wrong) }))).problem).toBe('KEY_MISMATCH');
    }
  });

  it('refuse tampering, foreign signatures, mismatched keys, expiry and bad shapes', () => {
    const id = Identity.generate();
    const other = Identity.generate();
    const signed = signRecord(id, recordFor(id));
    expect(verifyRecord({ ...signed, record: { ...signed.record, name: 'thief' } }).problem).toBe('BAD_SIGNATURE');
    expect(verifyRecord(signRecord(other, recordFor(id))).problem).toBe('BAD_SIGNATURE');
    const wrongWg = recordFor(id, { wgPublicKey: Buffer.from(other.wgPublicKey).toString('base64') });
    expect(verifyRecord(signRecord(id, wrongWg)).problem).toBe('KEY_MISMATCH');
    const wrongV6 = recordFor(id, { ipv6: formatAddress(overlayIPv6('lab', other.publicKey)) });
    expect(verifyRecord(signRecord(id, wrongV6)).problem).toBe('KEY_MISMATCH');
    expect(verifyRecord(signRecord(id, recordFor(id, { expiresAt: Date.now() - 1 }))).problem).toBe('EXPIRED_RECORD');
    expect(verifyRecord(signed, { network: 'prod' }).problem).toBe('WRONG_NETWORK');
    expect(verifyRecord(signRecord(id, recordFor(id, { name: 'Bad Name' }))).problem).toBe('MALFORMED_RECORD');
    expect(verifyRecord(signRecord(id, recordFor(id, { endpoints: ['nope'] }))).problem).toBe('MALFORMED_RECORD');
    expect(verifyRecord(signRecord(id, recordFor(id, { capabilities: ['llm;b=1;a=2'] }))).problem).toBe('MALFORMED_RECORD');
    expect(verifyRecord({ record: null, signature: 'x' } as never).problem).toBe('MALFORMED_RECORD');
    expect(verifyRecord(null as never).problem).toBe('MALFORMED_RECORD');
  });
});

describe('records signed by a rotated key', () => {
  const b64 = (b: Uint8Array): string => Buffer.from(b).toString('base64');
  /** The record of `current` (rotated from `first`): wgPublicKey from the current key, IPv6 from the ID key. */
  const rotatedRecord = (first: Identity, current: Identity, over: Partial<AgentRecord> = {}): AgentRecord =>
    recordFor(first, { wgPublicKey: b64(current.wgPublicKey), ...over });

  it('verify with the chain from the ID to record.key; the unrotated form keeps its bytes', () => {
    const first = Identity.generate();
    const rotated = first.rotate().rotate();
    const signed = signRecord(rotated, rotatedRecord(first, rotated));
    expect(signed.record.key).toBe(b64(rotated.publicKey));
    expect(verifyRecord({ ...signed, chain: [...rotated.chain] }, { network: 'lab' })).toEqual({ ok: true });
    expect(verifyRecord({ ...signed, chain: JSON.parse(JSON.stringify(rotated.chain)) as unknown[] })).toEqual({ ok: true });
    expect(canonicalRecord(signed.record).key).toBe(signed.record.key);
    // An unrotated record: no key field, the same signed bytes as before rotation existed; a chain of one may come along.
    const plain = recordFor(first);
    const fields = ['v', 'network', 'id', 'name', 'wgPublicKey', 'ipv4', 'ipv6', 'endpoints', 'capabilities', 'seq', 'issuedAt', 'expiresAt'] as const;
    expect(canonicalRecordBytes(plain).toString()).toBe('agentvpn record v1\n' + JSON.stringify(fields.map((f) => plain[f])));
    expect(verifyRecord({ ...signRecord(first, plain), chain: [...first.chain] })).toEqual({ ok: true });
    expect('key' in canonicalRecord(plain)).toBe(false);
  });

  it('refuse a rotated key without its chain, with a chain to another key, or a broken chain', () => {
    const first = Identity.generate();
    const rotated = first.rotate();
    const signed = signRecord(rotated, rotatedRecord(first, rotated));
    expect(verifyRecord(signed).problem).toBe('BAD_CHAIN');
    // A stranger's own key, named as the current key, with the agent's real chain.
    const stranger = Identity.generate();
    const claim = signRecord(stranger, rotatedRecord(first, stranger, { key: b64(stranger.publicKey) }));
    const claimed = { ...claim, record: { ...claim.record, key: b64(stranger.publicKey) } };
    expect(verifyRecord({ ...claimed, chain: [...rotated.chain] }).problem).toBe('STALE_KEY');
    expect(verifyRecord({ ...signed, chain: [...rotated.chain].reverse() }).problem).toBe('BAD_CHAIN');
    expect(verifyRecord({ ...signed, chain: [...stranger.rotate().chain] }).problem).toBe('BAD_CHAIN');
    expect(verifyRecord({ ...signed, chain: 'nope' as never }).problem).toBe('BAD_CHAIN');
    // "key" naming the ID key itself is a second encoding of the unrotated form: refused.
    const idKeyNamed = signRecord(first, recordFor(first));
    const twice = { ...idKeyNamed.record, key: b64(first.idKey) };
    expect(verifyRecord({ record: twice, signature: b64(first.sign(canonicalRecordBytes(twice))) }).problem).toBe('MALFORMED_RECORD');
  });

  it('refuse a record signed by a rotated-out key once the chain moved on (a stolen or replayed old key)', () => {
    // Before this check, a record signed by the ID key verified whatever chain came with it.
    const first = Identity.generate();
    const rotated = first.rotate();
    const old = signRecord(first, recordFor(first, { seq: 99 }));
    expect(verifyRecord(old).ok).toBe(true); // without a chain nothing shows the key moved: peers' pins and the registry's chain do
    expect(verifyRecord({ ...old, chain: [...rotated.chain] }).problem).toBe('STALE_KEY');
    const middle = rotated.rotate();
    const mid = signRecord(rotated, rotatedRecord(first, rotated));
    expect(verifyRecord({ ...mid, chain: [...middle.chain] }).problem).toBe('STALE_KEY');
  });

  it('derive the WireGuard key from the signing key and the IPv6 from the ID key', () => {
    const first = Identity.generate();
    const rotated = first.rotate();
    const chain = [...rotated.chain];
    expect(verifyRecord({ ...signRecord(rotated, recordFor(first)), chain }).problem).toBe('KEY_MISMATCH');
    const v6OfCurrent = rotatedRecord(first, rotated, { ipv6: formatAddress(overlayIPv6('lab', rotated.publicKey)) });
    expect(verifyRecord({ ...signRecord(rotated, v6OfCurrent), chain }).problem).toBe('KEY_MISMATCH');
  });
});

describe('capabilities', () => {
  it('parse into canonical form', () => {
    expect(formatCapability(parseCapability('llm.inference@1;model=llama3;ctx=8k'))).toBe('llm.inference@1;ctx=8k;model=llama3');
    expect(() => parseCapability('LLM')).toThrow(/invalid capability/);
    expect(() => parseCapability('a@1@2')).toThrow();
    expect(() => parseCapability('a;x')).toThrow();
    expect(() => parseCapability('a;x=1;x=2')).toThrow();
  });

  it('match exactly, never by substring', () => {
    const cap = parseCapability('llm.inference@1;model=llama3');
    expect(capabilityMatches(parseCapability('llm.inference'), cap)).toBe(true);
    expect(capabilityMatches(parseCapability('llm.inference@1'), cap)).toBe(true);
    expect(capabilityMatches(parseCapability('llm.inference@2'), cap)).toBe(false);
    expect(capabilityMatches(parseCapability('llm.inference;model=llama3'), cap)).toBe(true);
    expect(capabilityMatches(parseCapability('llm.inference;model=llama'), cap)).toBe(false);
    expect(capabilityMatches(parseCapability('llm'), cap)).toBe(false);
    expect(capabilityMatches(parseCapability('llm.infer'), cap)).toBe(false);
    expect(anyCapabilityMatches(parseCapability('llm.plan'), ['llm.inference@1;model=llama3', 'llm.plan'])).toBe(true);
  });
});
