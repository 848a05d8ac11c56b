import { readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fetchTrixieBinaries, startAgentVpn, startWireguardGo, type AgentVpnProcess, type WireguardGo } from '../../src/lab/index.js';
import type { DeviceStatus } from '../../src/daemon/status-types.js';
import { expectFullConnectivity, labReady } from './checks.js';
import { makePair, wgGenPsk, type Pair } from './pair.js';

/**
 * agentvpn (side A) against the reference implementation wireguard-go (side B): bookworm's
 * 0.0.20220316 and trixie's 0.0.20231211 (which uses TUN TSO/GRO and UDP GSO/GRO itself). Only the
 * side that is to initiate knows the other's endpoint, so the first packet decides who starts the
 * handshake; each case runs the whole traffic battery. agentvpn runs with its offloads on (the
 * default), and once more for each initiator with them off (AGENTVPN_NO_*_OFFLOAD=1).
 */
type WgVersion = 'bookworm' | 'trixie';
const cases: { wg: WgVersion; initiator: 'agentvpn' | 'wireguard-go'; psk: boolean; offload: boolean }[] = [];
for (const wg of ['bookworm', 'trixie'] as const) {
  for (const initiator of ['agentvpn', 'wireguard-go'] as const) {
    for (const psk of [false, true]) cases.push({ wg, initiator, psk, offload: true });
    cases.push({ wg, initiator, psk: false, offload: false });
  }
}
const OFFLOADS_OFF = { AGENTVPN_NO_TUN_OFFLOAD: '1', AGENTVPN_NO_UDP_OFFLOAD: '1' };

// The battery downloads to A; an upload from A makes its kernel hand our TUN TSO super-packets.
const SINK = `import socket,hashlib,sys
s=socket.create_server((sys.argv[1],int(sys.argv[2])),family=socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET)
c,_=s.accept();h=hashlib.sha256();n=0
while True:
  d=c.recv(1<<16)
  if not d: break
  h.update(d);n+=len(d)
print(n,h.hexdigest())`;
const SOURCE = `import socket,hashlib,sys,time,random
data=random.Random(7).randbytes(int(sys.argv[3])<<20)
for _ in range(100):
  try: c=socket.create_connection((sys.argv[1],int(sys.argv[2])),timeout=10); break
  except OSError: time.sleep(0.05)
c.sendall(data);c.close();print(len(data),hashlib.sha256(data).hexdigest())`;

/** Sends mb MiB from nsFrom to a sink at dst:9000 in nsTo; returns [sent, received] as "bytes sha256". */
async function upload(lab: Pair['lab'], nsFrom: string, nsTo: string, dst: string, mb: number): Promise<[string, string]> {
  const sink = lab.spawn(nsTo, ['python3', '-c', SINK, dst, '9000'], { name: 'sink' });
  const sent = await lab.run(nsFrom, ['timeout', '30', 'python3', '-c', SOURCE, dst, '9000', String(mb)]);
  await sink.exited;
  return [sent.stdout.trim(), readFileSync(sink.logFile, 'utf8').trim()];
}

describe.runIf(labReady(['ip', 'curl', 'python3', 'wireguard-go', 'wg']))('interop with wireguard-go', () => {
  for (const c of cases) {
    describe(`wireguard-go ${c.wg}, ${c.initiator} initiates, preshared key ${c.psk ? 'on' : 'off'}, offloads ${c.offload ? 'on' : 'off'}`, () => {
      let pair: Pair;
      let ours: AgentVpnProcess;
      let theirs: WireguardGo;

      beforeAll(async () => {
        pair = await makePair();
        const psk = c.psk ? await wgGenPsk() : undefined;
        const weInitiate = c.initiator === 'agentvpn';
        const binary = c.wg === 'trixie' ? (await fetchTrixieBinaries()).wireguardGo : undefined;
        ours = await startAgentVpn(pair.lab, pair.endpoints.nsA, pair.configA({ withEndpoint: weInitiate, psk }), 'agentvpn0', { env: c.offload ? {} : OFFLOADS_OFF });
        theirs = await startWireguardGo(pair.lab, pair.endpoints.nsB, pair.configB({ withEndpoint: !weInitiate, psk }), 'wg0', { binary });
      });

      afterAll(async () => {
        await pair?.lab.cleanup();
      });

      it('completes the handshake and carries all traffic', async () => {
        const [first, dst] = c.initiator === 'agentvpn' ? [pair.endpoints.nsA, pair.endpoints.v4B] : [pair.endpoints.nsB, pair.endpoints.v4A];
        const r = await pair.lab.exec(first, ['ping', '-n', '-c', '1', '-W', '5', dst]);
        expect(r.code, r.stdout + r.stderr).toBe(0);
        await expectFullConnectivity(pair.lab, pair.endpoints, { transferMb: 50 });
        for (const dst of [pair.endpoints.v4B, pair.endpoints.v6B]) {
          const [sent, received] = await upload(pair.lab, pair.endpoints.nsA, pair.endpoints.nsB, dst, 20);
          expect(received, `upload to ${dst}`).toBe(sent);
        }
      });

      it('both sides agree on the session', async () => {
        const s = JSON.parse((await ours.cli(['status', '--json'], { check: true })).stdout) as DeviceStatus;
        expect(s.peers[0].latestHandshake).not.toBeNull();
        expect(s.peers[0].endpoint).toBe(`${pair.underlayB}:51821`);
        const hs = await theirs.latestHandshakes();
        expect(hs.get(pair.keyA.publicKey)).toBeGreaterThan(0);
        expect(Object.values(s.peers[0].dropped).reduce((x, y) => x + y, 0)).toBe(0);
        // The transfer went through the offloads (or, switched off, not at all).
        const { tun, udp } = s.offloads!;
        console.log(`offloads: TUN reads split ${tun.superReads} -> ${tun.segmentsSplit} segments, writes coalesced ${tun.coalescedWrites} (${tun.segmentsMerged} segments), bad reads ${tun.badReads}; UDP GSO sends ${udp.gsoSends}, GRO reads ${udp.groReads}`);
        expect(tun.tunVnet).toBe(c.offload);
        expect(udp.udpGso).toBe(c.offload);
        expect(tun.badReads).toBe(0);
        if (c.offload) {
          expect(tun.superReads).toBeGreaterThan(0);
          expect(tun.coalescedWrites).toBeGreaterThan(0);
          expect(udp.gsoSends).toBeGreaterThan(0);
        } else {
          expect(tun.superReads).toBe(0);
          expect(tun.coalescedWrites).toBe(0);
        }
      });
    });
  }
});
