import type { Registry } from 'prom-client';
import type { ConnectionStats } from '../net/connection-guard.js';
import { scrapedCounter, scrapedGauge } from './collect.js';

/**
 * A connection guard's figures (src/net/connection-guard.ts), as the registry and the standalone
 * relay's TCP fallback both have one: the connections open now, and those closed at once past a
 * cap or evicted (idle) to make room, by why. `read` returns null while there is no guard.
 */
export function registerConnectionMetrics(registry: Registry, names: { open: string; closed: string; what: string }, read: () => ConnectionStats | null): void {
  scrapedGauge(registry, {
    name: names.open, help: `${names.what}: TCP connections open now`,
    fill: (emit) => {
      const s = read();
      if (s) emit({}, s.open);
    },
  });
  scrapedCounter(registry, {
    name: names.closed, help: `${names.what}: TCP connections closed at once past a cap, or evicted (idle) to make room`, labelNames: ['why'],
    fill: (emit) => {
      const s = read();
      if (!s) return;
      emit({ why: 'per-address' }, s.refusedPerAddress);
      emit({ why: 'total' }, s.refusedTotal);
      emit({ why: 'evicted' }, s.evicted);
      emit({ why: 'evicted-per-address' }, s.evictedPerAddress);
    },
  });
}
