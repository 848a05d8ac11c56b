// An agent's relay side, run inside a lab namespace by netns.test.ts (ip netns exec NS vite-node
// this-file). Configured by environment: AVR_SEED (hex identity seed), AVR_UDP and AVR_TCP (the
// relay), AVR_ROLE: "echo" answers every packet with "pong <it>"; "ping" sends "ping N" to
// AVR_PEER (base64 WireGuard key) until AVR_COUNT distinct pongs came back, prints one JSON line
// {state, pongs} and exits. Pings are padded to AVR_SIZE bytes (default 1452, a full-size
// WireGuard datagram), so relayed frames need IP fragmentation on a 1500-byte link.
import dgram from 'node:dgram';
import { Identity } from '../../src/identity/identity.js';
import { formatAddress, parseAddress } from '../../src/ip/prefix.js';
import { RelayClient } from '../../src/paths/relay-client.js';
import { endpointAddress, endpointPort, makeEndpoint, sameEndpoint } from '../../src/wireguard/endpoint.js';

const env = (k: string): string => process.env[k] ?? '';
const identity = new Identity(Buffer.from(env('AVR_SEED'), 'hex'));
const socket = dgram.createSocket('udp4');
await new Promise<void>((resolve) => socket.bind(0, '0.0.0.0', () => resolve()));
socket.on('error', () => {}); // EPERM from the namespace's iptables DROP is expected

const pongs = new Set<string>();
const client: RelayClient = new RelayClient({
  relay: { udp: env('AVR_UDP'), tcp: env('AVR_TCP') },
  identity,
  sendUdp: (buf, ep) => socket.send(buf, endpointPort(ep), formatAddress(endpointAddress(ep)), () => {}),
  onPacket: (from, packet) => {
    const text = packet.toString();
    if (text.startsWith('ping ')) client.send(from, Buffer.from(`pong ${text.slice(5)}`));
    else if (text.startsWith('pong ')) pongs.add(text.split(' ')[1]);
  },
});
socket.on('message', (msg, rinfo) => {
  if (sameEndpoint(makeEndpoint(parseAddress(rinfo.address)!, rinfo.port), 0, client.endpoint, 0)) client.handleDatagram(msg, 0, msg.length);
});
client.start();

if (env('AVR_ROLE') === 'echo') {
  let last = '';
  setInterval(() => {
    if (client.state !== last) console.log(JSON.stringify({ state: (last = client.state) }));
  }, 50);
} else {
  const peer = Buffer.from(env('AVR_PEER'), 'base64');
  const count = Number(env('AVR_COUNT') || 20);
  const size = Number(env('AVR_SIZE') || 1452);
  const deadline = Date.now() + 60_000;
  let n = 0;
  while (pongs.size < count && Date.now() < deadline) {
    const text = `ping ${n++ % count} `;
    client.send(peer, Buffer.from(text.padEnd(size, '.')));
    await new Promise((r) => setTimeout(r, 50));
  }
  console.log(JSON.stringify({ state: client.state, pongs: pongs.size }));
  client.stop();
  process.exit(0);
}
