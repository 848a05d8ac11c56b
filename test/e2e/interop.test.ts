import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startAgentVpn, startWireguardGo, type AgentVpnProcess, type WireguardGo } from '../../src/lab/index.js';
import type { DeviceStatus } from '../../src/daemon/status-types.js';
import { expectFullConnectivity, labReady } from './checks.js';
import { makePair, wgGenPsk, type Pair } from './pair.js';

/**
 * agentvpn (side A) against the reference implementation wireguard-go (side B). Only the side
 * that is to initiate knows the other's endpoint, so the first packet decides who starts the
 * handshake; each case runs the whole traffic battery.
 */
const cases = [
  { initiator: 'agentvpn', psk: false },
  { initiator: 'agentvpn', psk: true },
  { initiator: 'wireguard-go', psk: false },
  { initiator: 'wireguard-go', psk: true },
] as const;

describe.runIf(labReady(['ip', 'curl', 'python3', 'wireguard-go', 'wg']))('interop with wireguard-go', () => {
  for (const c of cases) {
    describe(`${c.initiator} initiates, preshared key ${c.psk ? 'on' : 'off'}`, () => {
      let pair: Pair;
      let ours: AgentVpnProcess;
      let theirs: WireguardGo;

      beforeAll(async () => {
        pair = await makePair();
        const psk = c.psk ? await wgGenPsk() : undefined;
        const weInitiate = c.initiator === 'agentvpn';
        ours = await startAgentVpn(pair.lab, pair.endpoints.nsA, pair.configA({ withEndpoint: weInitiate, psk }), 'agentvpn0');
        theirs = await startWireguardGo(pair.lab, pair.endpoints.nsB, pair.configB({ withEndpoint: !weInitiate, psk }), 'wg0');
      });

      afterAll(async () => {
        await pair?.lab.cleanup();
      });

      it('completes the handshake and carries all traffic', async () => {
        const [first, dst] = c.initiator === 'agentvpn' ? [pair.endpoints.nsA, pair.endpoints.v4B] : [pair.endpoints.nsB, pair.endpoints.v4A];
        const r = await pair.lab.exec(first, ['ping', '-n', '-c', '1', '-W', '5', dst]);
        expect(r.code, r.stdout + r.stderr).toBe(0);
        await expectFullConnectivity(pair.lab, pair.endpoints, { transferMb: 50 });
      });

      it('both sides agree on the session', async () => {
        const s = JSON.parse((await ours.cli(['status', '--json'], { check: true })).stdout) as DeviceStatus;
        expect(s.peers[0].latestHandshake).not.toBeNull();
        expect(s.peers[0].endpoint).toBe(`${pair.underlayB}:51821`);
        const hs = await theirs.latestHandshakes();
        expect(hs.get(pair.keyA.publicKey)).toBeGreaterThan(0);
        expect(Object.values(s.peers[0].dropped).reduce((x, y) => x + y, 0)).toBe(0);
      });
    });
  }
});
