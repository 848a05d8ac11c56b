import { describe, expect, it } from 'vitest';
import { CHALLENGE_ROTATION_MS, CHALLENGE_SIZE, ChallengeMinter } from '../../src/relay/challenge.js';
import { makeEndpoint } from '../../src/net/endpoint.js';

const member = makeEndpoint(Uint8Array.of(192, 0, 2, 10), 40000);
const attacker = makeEndpoint(Uint8Array.of(203, 0, 113, 7), 40000);
const samePortOther = makeEndpoint(Uint8Array.of(192, 0, 2, 10), 40001);

function minterAt(start: number): { minter: ChallengeMinter; advance(ms: number): void } {
  let now = start;
  return { minter: new ChallengeMinter(() => now), advance: (ms) => void (now += ms) };
}

function mint(m: ChallengeMinter, ep: Buffer, transport: 'udp' | 'tcp' = 'udp'): Buffer {
  const out = Buffer.alloc(CHALLENGE_SIZE);
  m.mint(out, 0, ep, 0, transport);
  return out;
}

describe('relay challenges', () => {
  it('are accepted only by the relay that made them, for the address, port and transport they were made for', () => {
    const { minter } = minterAt(0);
    const other = minterAt(0).minter;
    const c = mint(minter, member);
    expect(minter.check(c, member, 0, 'udp')).toBe(true);
    expect(other.check(c, member, 0, 'udp')).toBe(false); // another relay: another secret
    expect(minter.check(c, attacker, 0, 'udp')).toBe(false);
    expect(minter.check(c, samePortOther, 0, 'udp')).toBe(false);
    expect(minter.check(c, member, 0, 'tcp')).toBe(false);
    const flipped = Buffer.from(c);
    flipped[CHALLENGE_SIZE - 1] ^= 1;
    expect(minter.check(flipped, member, 0, 'udp')).toBe(false);
    expect(minter.check(c.subarray(0, CHALLENGE_SIZE - 1), member, 0, 'udp')).toBe(false);
  });

  it('live through the next rotation and not the one after: 2 to 4 minutes', () => {
    const { minter, advance } = minterAt(5 * CHALLENGE_ROTATION_MS + CHALLENGE_ROTATION_MS - 1); // minted just before a rotation
    const late = mint(minter, member);
    advance(1); // rotated
    expect(minter.check(late, member, 0, 'udp')).toBe(true);
    const early = mint(minter, member); // minted just after it
    advance(CHALLENGE_ROTATION_MS - 1);
    expect(minter.check(late, member, 0, 'udp')).toBe(true);
    advance(1); // two rotations after `late`
    expect(minter.check(late, member, 0, 'udp')).toBe(false);
    expect(minter.check(early, member, 0, 'udp')).toBe(true);
    advance(CHALLENGE_ROTATION_MS - 1);
    expect(minter.check(early, member, 0, 'udp')).toBe(true); // ~4 minutes old
    advance(1);
    expect(minter.check(early, member, 0, 'udp')).toBe(false);
    // A long pause replaces both secrets: nothing made before it passes, even with an epoch that looks right.
    const before = mint(minter, member);
    advance(10 * CHALLENGE_ROTATION_MS);
    expect(minter.check(before, member, 0, 'udp')).toBe(false);
    expect(minter.check(mint(minter, member), member, 0, 'udp')).toBe(true);
  });

  it('refuse a challenge from the future and count one MAC per check', () => {
    const { minter } = minterAt(0);
    const c = mint(minter, member);
    const future = Buffer.from(c);
    future.writeUInt32BE((future.readUInt32BE(0) + 1) >>> 0, 0);
    expect(minter.check(future, member, 0, 'udp')).toBe(false);
    expect(minter.checked).toBe(0); // refused on its epoch, before any MAC
    expect(minter.check(c, member, 0, 'udp')).toBe(true);
    expect([minter.minted, minter.checked]).toEqual([1, 1]);
  });
});
