import { describe, it, expect } from 'vitest';
import { Identity } from '../../src/identity/identity.js';
import { overlayIPv6 } from '../../src/identity/addresses.js';
import { formatAddress } from '../../src/ip/prefix.js';
import { signRecord, verifyRecord, type AgentRecord } from '../../src/registry/record.js';
import { parseCapability, formatCapability, capabilityMatches, anyCapabilityMatches } from '../../src/registry/capabilities.js';

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
