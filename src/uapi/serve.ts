import { DeviceUapiTarget, type UapiHost } from './device-target.js';
import { UapiServer, type UapiLogger } from './server.js';

/** read-write: wg set works (static daemons, wg-userspace); read-only: wg show only (fleet daemons). */
export type UapiMode = 'read-write' | 'read-only' | 'off';

export interface ServeUapiOptions {
  iface: string;
  log: UapiLogger;
  host: UapiHost;
  mode: UapiMode;
  /** False while the device holds a placeholder key (wg-userspace before wg sets one). */
  keySet: boolean;
  /** wg-userspace: no socket, no start. `up`: without the socket the daemon still runs, with a warning. */
  required: boolean;
}

/** Starts a daemon's UAPI socket; null when off, or when it cannot be had and is not required. */
export async function serveUapi(o: ServeUapiOptions): Promise<UapiServer | null> {
  if (o.mode === 'off') return null;
  const server = new UapiServer({ iface: o.iface, log: o.log, target: new DeviceUapiTarget(o.host, o.keySet), readOnly: o.mode === 'read-only' });
  try {
    await server.start();
    return server;
  } catch (err) {
    if (o.required) throw err;
    o.log.warn({ err, path: server.path }, 'no UAPI socket: wg(8) cannot reach this daemon');
    return null;
  }
}
