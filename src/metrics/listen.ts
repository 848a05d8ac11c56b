import { isIP } from 'node:net';
import { AgentVpnError } from '../errors.js';

/** Where a metrics endpoint listens, from `--metrics [HOST:]PORT`. */
export interface MetricsListen {
  host: string;
  port: number;
  /** False when the operator named a non-loopback address: the endpoint is reachable from the network. */
  loopback: boolean;
}

/** With a port alone the endpoint stays on this host: the metrics reveal the fleet's topology. */
export const DEFAULT_METRICS_HOST = '127.0.0.1';

const HINT = 'give --metrics PORT (loopback) or --metrics HOST:PORT with an IP address, e.g. 127.0.0.1:9586 or [::1]:9586';

function isLoopback(host: string): boolean {
  return isIP(host) === 4 ? host.startsWith('127.') : host === '::1';
}

/**
 * Parses `PORT`, `HOST:PORT` or `[IPV6]:PORT`. The host must be an IP literal (or localhost): what
 * gets bound is what the operator wrote, never what a name resolves to. A non-loopback host is
 * accepted only when written out; the caller warns that the fleet's topology is then exposed.
 */
export function parseMetricsListen(text: string): MetricsListen {
  const m = /^(?:(?:\[([0-9a-fA-F:.]+)\]|([^:[\]\s]+)):)?(\d{1,5})$/.exec(text.trim());
  const port = m ? Number(m[3]) : NaN;
  if (!m || port < 1 || port > 65535) throw new AgentVpnError('BAD_METRICS_LISTEN', `invalid --metrics address "${text}"`, HINT);
  let host = m[1] ?? m[2] ?? DEFAULT_METRICS_HOST;
  if (host === 'localhost') host = DEFAULT_METRICS_HOST;
  if (m[1] !== undefined ? isIP(host) !== 6 : isIP(host) === 0) {
    throw new AgentVpnError('BAD_METRICS_LISTEN', `--metrics needs an IP address, not "${host}"`, HINT);
  }
  return { host, port, loopback: isLoopback(host) };
}
