/** The network-namespace lab used by e2e tests, the benchmark and `agentvpn demo`. */
export * from './proc.js';
export * from './netns.js';
export * from './keys.js';
export * from './wg-config.js';
export * from './wireguard-go.js';
export * from './agentvpn.js';
export * from './nebula.js';
export * from './measure.js';
