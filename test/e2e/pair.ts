/** A two-namespace lab joined by a veth, with keys and wg-quick configs for a pair of peers. */
import { Lab, wgKeyPair, wgGenPsk, type WgInterfaceConfig, type WgKeyPair } from '../../src/lab/index.js';
import type { Endpoints } from './checks.js';

export interface Pair {
  lab: Lab;
  endpoints: Endpoints;
  keyA: WgKeyPair;
  keyB: WgKeyPair;
  underlayA: string;
  underlayB: string;
  /** Config for side A; `withEndpoint` decides whether A knows where B is (and so can initiate). */
  configA(o: { withEndpoint: boolean; psk?: string; keepalive?: number }): WgInterfaceConfig;
  configB(o: { withEndpoint: boolean; psk?: string; keepalive?: number }): WgInterfaceConfig;
}

export const OVERLAY = { v4A: '100.64.0.1', v4B: '100.64.0.2', v6A: 'fd00:a::1', v6B: 'fd00:a::2' };

export async function makePair(): Promise<Pair> {
  const lab = new Lab();
  const nsA = await lab.addNamespace('a');
  const nsB = await lab.addNamespace('b');
  const underlayA = '192.0.2.1';
  const underlayB = '192.0.2.2';
  await lab.connect(nsA, nsB, { a: `${underlayA}/24`, b: `${underlayB}/24`, ifA: 'eth0', ifB: 'eth0' });
  const keyA = await wgKeyPair();
  const keyB = await wgKeyPair();
  const side = (me: WgKeyPair, them: WgKeyPair, v4: string, v6: string, peerV4: string, peerV6: string, port: number, peerEndpoint: string) =>
    (o: { withEndpoint: boolean; psk?: string; keepalive?: number }): WgInterfaceConfig => ({
      privateKey: me.privateKey,
      listenPort: port,
      addresses: [`${v4}/24`, `${v6}/64`],
      peers: [{
        publicKey: them.publicKey,
        presharedKey: o.psk,
        allowedIps: [`${peerV4}/32`, `${peerV6}/128`],
        endpoint: o.withEndpoint ? peerEndpoint : undefined,
        persistentKeepalive: o.keepalive,
      }],
    });
  return {
    lab, keyA, keyB, underlayA, underlayB,
    endpoints: { nsA, nsB, ...OVERLAY },
    configA: side(keyA, keyB, OVERLAY.v4A, OVERLAY.v6A, OVERLAY.v4B, OVERLAY.v6B, 51820, `${underlayB}:51821`),
    configB: side(keyB, keyA, OVERLAY.v4B, OVERLAY.v6B, OVERLAY.v4A, OVERLAY.v6A, 51821, `${underlayA}:51820`),
  };
}

export { wgGenPsk };
