import { Counter, Gauge, type Registry } from 'prom-client';

/** Adds one sample; called by a fill function once per label set. */
export type Emit<L extends string> = (labels: Partial<Record<L, string>>, value: number) => void;

interface Spec<L extends string> {
  name: string;
  help: string;
  labelNames?: readonly L[];
  /** Emits the current values, read from the objects' own counters at scrape time. */
  fill: (emit: Emit<L>) => void;
}

/**
 * A counter whose values are read at scrape time from counters the code already keeps: nothing is
 * incremented on the packet path. Every scrape starts from nothing, so the series of a peer that
 * went away disappear with it, and a metric whose fill emits nothing has no sample at all.
 */
export function scrapedCounter<L extends string>(registry: Registry, spec: Spec<L>): Counter<L> {
  return new Counter<L>({
    name: spec.name, help: spec.help, labelNames: spec.labelNames ?? [], registers: [registry],
    collect() {
      fillFresh(this, spec, (labels, value) => this.inc(labels, value));
    },
  });
}

/** A gauge read at scrape time, like scrapedCounter. */
export function scrapedGauge<L extends string>(registry: Registry, spec: Spec<L>): Gauge<L> {
  return new Gauge<L>({
    name: spec.name, help: spec.help, labelNames: spec.labelNames ?? [], registers: [registry],
    collect() {
      fillFresh(this, spec, (labels, value) => this.set(labels, value));
    },
  });
}

/** reset() leaves an unlabelled metric one 0 sample: it is removed unless the fill emitted one. */
function fillFresh<L extends string>(metric: Counter<L> | Gauge<L>, spec: Spec<L>, add: Emit<L>): void {
  metric.reset();
  let emitted = false;
  spec.fill((labels, value) => {
    emitted = true;
    add(labels, value);
  });
  if (!emitted && (spec.labelNames ?? []).length === 0) metric.remove();
}

/** Longer than one scrape's collection, far shorter than any scrape interval. */
export const SNAPSHOT_TTL_MS = 100;

/**
 * One reading of a source shared by every metric of a scrape (each metric's collect runs on its
 * own, one after another, within a few milliseconds): `read` runs at most once per `ttlMs`.
 */
export function sharedReading<T>(read: () => T, ttlMs = SNAPSHOT_TTL_MS): () => T {
  let at = -Infinity;
  let value: T;
  return () => {
    const now = performance.now();
    if (now - at >= ttlMs) {
      value = read();
      at = now;
    }
    return value;
  };
}
