import { describe, expect, it } from 'vitest';
import { perRequestMicros, routeBench } from './route-bench.js';

describe('registry dispatch cost', () => {
  it('prints µs per request for reads and heartbeat bodies through the handler in process', async () => {
    const b = routeBench();
    const auth = { authorization: 'Bearer avt_bench' };
    const read = await b.request('GET', '/v1/agents/planner', { headers: auth });
    expect(read.status).toBe(200);
    const skewed = { timestamp: Date.now() + 3_600_000, signature: 'A'.repeat(86) + '==' };
    const beat = await b.request('POST', `/v1/agents/${b.member.id}/heartbeat`, { body: skewed });
    expect(beat.code).toBe('CLOCK_SKEW');
    const reads = await perRequestMicros(20_000, () => b.request('GET', '/v1/agents/planner', { headers: auth }));
    const beats = await perRequestMicros(20_000, () => b.request('POST', `/v1/agents/${b.member.id}/heartbeat`, { body: skewed }));
    console.log(`in process, 20,000 each: GET /v1/agents/NAME ${reads.toFixed(2)} µs/request; heartbeat body to its clock check ${beats.toFixed(2)} µs/request`);
  });
});
