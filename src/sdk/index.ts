// The agent SDK: a typed client of the local daemon. `import { connect } from 'agentvpn'`.
export { AgentVpn, connect } from './client.js';
export { EventStream, type EventsOptions } from './events.js';
export type * from './types.js';
