#!/usr/bin/env node
// Quick A/B of the data-path offloads, one run: iperf3 single stream and 4 streams between two
// namespaces for trixie's wireguard-go (TUN TSO/GRO, UDP GSO/GRO) and agentvpn with offloads on,
// TUN offloads only, and none (AGENTVPN_NO_TUN_OFFLOAD / AGENTVPN_NO_UDP_OFFLOAD). Ratios are
// against trixie's wireguard-go in the same run. Run it under the bench lock:
//   flock /tmp/agentvpn-bench.lock node scripts/bench-offload.mjs [--duration 5]
import { parseArgs } from 'node:util';
import { Lab, fetchTrixieBinaries, iperf3, startAgentVpn, startWireguardGo, waitForPing, wgKeyPair } from '../dist/lab/index.js';

const { values } = parseArgs({ options: { duration: { type: 'string', default: '5' }, only: { type: 'string' } } });
const duration = Number(values.duration);
const UNDERLAY_A = '192.0.2.1';
const UNDERLAY_B = '192.0.2.2';
const PORT = 51820;
const log = (m) => process.stderr.write(`${m}\n`);

const lab = new Lab();
const rows = [];
try {
  const a = await lab.addNamespace('offl-a');
  const b = await lab.addNamespace('offl-b');
  await lab.connect(a, b, { a: `${UNDERLAY_A}/24`, b: `${UNDERLAY_B}/24` });
  const [ka, kb] = await Promise.all([wgKeyPair(), wgKeyPair()]);
  const cfg = (k, peer, self, other, otherUnderlay) => ({
    privateKey: k.privateKey, listenPort: PORT, addresses: [`100.64.0.${self}/24`],
    peers: [{ publicKey: peer.publicKey, allowedIps: [`100.64.0.${other}/32`], endpoint: `${otherUnderlay}:${PORT}` }],
  });
  const cfgA = cfg(ka, kb, 1, 2, UNDERLAY_B);
  const cfgB = cfg(kb, ka, 2, 1, UNDERLAY_A);
  const trixie = await fetchTrixieBinaries();
  const pair = async (start) => {
    const pa = await start(a, cfgA);
    try {
      const pb = await start(b, cfgB);
      return async () => { await pa.stop(); await pb.stop(); };
    } catch (e) { await pa.stop(); throw e; }
  };
  const ours = (env) => () => pair((ns, c) => startAgentVpn(lab, ns, c, 'agentvpn0', { env }));
  const systems = {
    'wireguard-go-trixie': () => pair((ns, c) => startWireguardGo(lab, ns, c, 'wg0', { binary: trixie.wireguardGo })),
    'agentvpn offloads on': ours({}),
    'agentvpn TUN offloads only': ours({ AGENTVPN_NO_UDP_OFFLOAD: '1' }),
    'agentvpn offloads off': ours({ AGENTVPN_NO_TUN_OFFLOAD: '1', AGENTVPN_NO_UDP_OFFLOAD: '1' }),
  };
  for (const [name, start] of Object.entries(systems)) {
    if (values.only && !name.includes(values.only)) continue;
    const stop = await start();
    try {
      await waitForPing(lab, a, '100.64.0.2', 20_000);
      const one = await iperf3(lab, b, a, '100.64.0.2', { durationSec: duration });
      const four = await iperf3(lab, b, a, '100.64.0.2', { durationSec: duration, clientArgs: ['-P', '4'] });
      rows.push({ name, mbps: one.bitsPerSecond / 1e6, mbps4: four.bitsPerSecond / 1e6, retransmits: one.retransmits ?? null });
      log(`${name}: ${(one.bitsPerSecond / 1e6).toFixed(0)} Mbit/s, -P 4 ${(four.bitsPerSecond / 1e6).toFixed(0)}`);
    } finally {
      await stop();
    }
  }
} finally {
  await lab.cleanup();
}
const ref = rows.find((r) => r.name === 'wireguard-go-trixie');
console.log(`iperf3 ${duration} s, one run (${new Date().toISOString()})`);
console.log('system                       single  ratio    -P 4  ratio  retransmits');
for (const r of rows) {
  const ratio = (x, y) => (y ? (x / y).toFixed(2) : '-');
  console.log(`${r.name.padEnd(28)} ${r.mbps.toFixed(0).padStart(6)}  ${ratio(r.mbps, ref?.mbps).padStart(5)}  ${r.mbps4.toFixed(0).padStart(6)}  ${ratio(r.mbps4, ref?.mbps4).padStart(5)}  ${r.retransmits ?? '-'}`);
}
