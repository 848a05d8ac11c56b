import { describe, expect, it } from 'vitest';
import { parseMetricsListen } from '../../src/metrics/listen.js';

describe('--metrics [HOST:]PORT', () => {
  it('a port alone stays on loopback', () => {
    expect(parseMetricsListen('9586')).toEqual({ host: '127.0.0.1', port: 9586, loopback: true });
    expect(parseMetricsListen('localhost:9586')).toEqual({ host: '127.0.0.1', port: 9586, loopback: true });
    expect(parseMetricsListen('[::1]:9586')).toEqual({ host: '::1', port: 9586, loopback: true });
    expect(parseMetricsListen('127.0.0.2:1')).toMatchObject({ loopback: true });
  });

  it('a non-loopback address only when written out, and marked as such', () => {
    expect(parseMetricsListen('192.0.2.5:9586')).toEqual({ host: '192.0.2.5', port: 9586, loopback: false });
    expect(parseMetricsListen('0.0.0.0:9586')).toMatchObject({ loopback: false });
    expect(parseMetricsListen('[2001:db8::1]:9586')).toMatchObject({ host: '2001:db8::1', loopback: false });
  });

  it('refuses names (what is bound must be what was written), bad ports and junk', () => {
    for (const bad of ['metrics.example:9586', 'example', '0', '65536', '1.2.3.4:', '[1.2.3.4]:80', '::1:80', '', '1.2.3.4:80:80']) {
      expect(() => parseMetricsListen(bad), bad).toThrow(expect.objectContaining({ code: 'BAD_METRICS_LISTEN' }));
    }
  });
});
