// The library face of agentvpn: `import { discover } from 'agentvpn'`.
export { discover, resolve } from './api.js';
export type { PeerInfo, QueryOptions, DeviceStatus, PeerStatus } from './api.js';
export { AgentVpnError } from './errors.js';
