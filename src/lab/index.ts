/**
 * The network-namespace lab used by e2e tests, the benchmark and `agentvpn demo`.
 *
 *   const lab = new Lab();                                  // prefix avl<pid>-<n>-, temp dir lab.dir
 *   afterAll(() => lab.cleanup());                          // also runs on exit / SIGINT / SIGTERM
 *   const a = await lab.addNamespace('a'), b = await lab.addNamespace('b');
 *   await lab.connect(a, b, { a: '192.0.2.1/24', b: '192.0.2.2/24' });
 *   const ka = await wgKeyPair(), kb = await wgKeyPair();
 *   const peerA = await startWireguardGo(lab, a, cfgA, 'wg0');   // real WireGuard peer
 *   const peerB = await startAgentVpn(lab, b, cfgB, 'agentvpn0'); // our daemon, same config shape
 *   await waitForPing(lab, a, '100.64.0.2');
 *   const { stdout } = await lab.run(b, ['curl', '-s', 'http://100.64.0.1:8080/']);
 *
 * Floods (flood.ts): `await runFlood(lab, ns, { kind: 'handshake', target, key, rate: 30_000, durationMs: 5_000 })`.
 *
 * Tests first check `labUnavailableReasons([...tools])`: fail with it in CI, skip outside CI.
 */
export * from './proc.js';
export * from './netns.js';
export * from './keys.js';
export * from './wg-config.js';
export * from './wireguard-go.js';
export * from './agentvpn.js';
export * from './nebula.js';
export * from './measure.js';
export * from './nat.js';
export * from './miniupnpd.js';
export * from './fleet.js';
export * from './flood.js';
export * from './trixie.js';
export * from './ping-stats.js';
