import { describe, expect, it } from 'vitest';
import { ROUND_WORK_BUDGET, RoundShares, maxMinQuota } from '../../src/relay/fair-share.js';

describe('fair shares of a full read round', () => {
  it('water-fills: light sources keep everything, the heaviest lose their excess first', () => {
    expect(maxMinQuota([1000, 3, 5], 512)).toBe(504);
    expect(maxMinQuota([600, 600], 512)).toBe(256);
    expect(maxMinQuota([10, 20], 512)).toBe(Infinity);
    expect(maxMinQuota([5000], 1)).toBe(1);
  });

  it('sheds only full rounds, and then by source across its runs', () => {
    const shares = new RoundShares();
    shares.begin(['flood', 'pair'], Int32Array.of(1000, 2), 2, false);
    expect([shares.take('flood', 1000), shares.take('pair', 2)]).toEqual([1000, 2]);
    // A full round: the flood's runs share one quota; the pair keeps its two frames.
    shares.begin(['flood', 'pair', 'flood'], Int32Array.of(600, 2, 422), 3, true);
    const flood = shares.take('flood', 600) + shares.take('flood', 422);
    expect(shares.take('pair', 2)).toBe(2);
    expect(flood).toBe(ROUND_WORK_BUDGET - 2);
  });
});
