import { DiscoCodec } from '../../src/paths/disco.js';
import { MagicSock, type UdpPort } from '../../src/paths/magicsock.js';
import type { RelayLink } from '../../src/paths/relay-links.js';
import { Device } from '../../src/wireguard/device.js';
import { ENDPOINT_SIZE, makeEndpoint, sameEndpoint } from '../../src/net/endpoint.js';
import { generatePrivateKey, publicKeyOf } from '../../src/crypto/x25519.js';
import { parsePrefix } from '../../src/ip/prefix.js';
import { PACKET_HEADER_SIZE } from '../../src/relay/protocol.js';
import { memoryTun } from '../wireguard/memory-link.js';

const silent = { info() {}, warn() {}, debug() {} };

/**
 * Two agents whose "network" is in memory: direct datagrams pass unless `directBlocked`, and
 * a relay always carries packets between them. Checks the path layer's decisions.
 */
export function world() {
  const keys = [generatePrivateKey(), generatePrivateKey()];
  const eps = [makeEndpoint(Uint8Array.of(198, 51, 100, 1), 51820), makeEndpoint(Uint8Array.of(198, 51, 100, 2), 51820)];
  const state = { directBlocked: false, relayFrames: 0 };
  const socks: MagicSock[] = [];
  const devices: Device[] = [];
  const tunOut: Buffer[][] = [[], []];
  const relayEp = makeEndpoint(Uint8Array.of(203, 0, 113, 10), 7443);
  for (const i of [0, 1]) {
    const other = 1 - i;
    const udp: UdpPort = {
      send(slab, offsets, lens, addrs, count) {
        for (let k = 0; k < count; k++) {
          if (sameEndpoint(addrs, k * ENDPOINT_SIZE, relayEp, 0)) {
            // A SEND frame over the relay's UDP link: the relay hands the packet to the other agent.
            const packet = Buffer.from(slab.subarray(offsets[k] + PACKET_HEADER_SIZE, offsets[k] + lens[k]));
            state.relayFrames++;
            queueMicrotask(() => socks[other].onRelayedPacket(Buffer.from(publicKeyOf(keys[i])), packet));
            continue;
          }
          if (state.directBlocked || !sameEndpoint(addrs, k * ENDPOINT_SIZE, eps[other], 0)) continue;
          const msg = Buffer.from(slab.subarray(offsets[k], offsets[k] + lens[k]));
          queueMicrotask(() => socks[other].receive(msg, msg.length, Int32Array.of(msg.length), eps[i], 1));
        }
        return count;
      },
    };
    const relay: RelayLink = {
      endpoint: relayEp, name: '203.0.113.10:7443', state: 'udp',
      handleDatagram: () => false,
      send(_dst, packet) {
        const copy = Buffer.from(packet);
        queueMicrotask(() => socks[other].onRelayedPacket(Buffer.from(publicKeyOf(keys[i])), copy));
        return true;
      },
    };
    const sock = new MagicSock(udp, silent);
    const device = new Device({ privateKey: keys[i], mtu: 1420, batchSize: 8, bind: sock, tun: memoryTun(() => tunOut[i]) });
    sock.attach(device);
    sock.enablePaths(new DiscoCodec(keys[i], publicKeyOf(keys[i])), relay);
    sock.setLocalCandidates([eps[i]]);
    socks.push(sock);
    devices.push(device);
  }
  for (const i of [0, 1]) {
    const other = 1 - i;
    const wg = Buffer.from(publicKeyOf(keys[other]));
    const endpoint = socks[i].upsertPeer(wg, [eps[other]]);
    devices[i].addPeer({ publicKey: wg, endpoint, allowedIps: [parsePrefix(`100.64.0.${other + 1}/32`)!] });
  }
  return { socks, devices, keys, eps, state, tunOut, stop: () => socks.forEach((s) => s.stop()) };
}

