// The library face of agentvpn: `import { connect } from 'agentvpn'` (src/sdk/, docs/sdk.md).
export { AgentVpn, connect, EventStream, discover, resolve, whois } from './api.js';
export type { QueryOptions } from './api.js';
export type * from './sdk/types.js';
export type { EventsOptions } from './sdk/events.js';
export { AgentVpnError } from './errors.js';
