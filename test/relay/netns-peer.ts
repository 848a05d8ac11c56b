// An agent's relay side, run inside a lab namespace by netns.test.ts (ip netns exec NS vite-node
// this-file). Configured by environment: AVR_SEED (hex identity seed), AVR_UDP and AVR_TCP (the
// relay), AVR_ROLE: "echo" answers every packet with "pong <it>" and prints each state
// change as {state, ms since start}; "ping" sends "ping N" to
// AVR_PEER (base64 WireGuard key) until AVR_COUNT distinct pongs came back, prints one JSON line
// {state, pongs} and exits. Pings are padded to AVR_SIZE bytes (default 1452, a full-size
// WireGuard datagram), so relayed frames need IP fragmentation on a 1500-byte link.
// AVR_ROLE "probe" waits until connected, sends AVR_COUNT pings to AVR_PEER every AVR_INTERVAL ms
// (default 10), waits a second for late pongs and prints {state, sent, pongs, lossPct, rttP50Ms, rttMaxMs}.
import dgram from 'node:dgram';
import { Identity } from '../../src/identity/identity.js';
import { formatAddress, parseAddress } from '../../src/ip/prefix.js';
import { RelayClient } from '../../src/relay/client.js';
import { endpointAddress, endpointPort, makeEndpoint, sameEndpoint } from '../../src/net/endpoint.js';

const env = (k: string): string => process.env[k] ?? '';
const identity = new Identity(Buffer.from(env('AVR_SEED'), 'hex'));
const socket = dgram.createSocket('udp4');
await new Promise<void>((resolve) => socket.bind(0, '0.0.0.0', () => resolve()));
socket.on('error', () => {}); // EPERM from the namespace's iptables DROP is expected

const pongs = new Set<string>();
const sentAt = new Map<string, number>();
const rtts: number[] = [];
const client: RelayClient = new RelayClient({
  relay: { udp: env('AVR_UDP'), tcp: env('AVR_TCP') },
  identity,
  sendUdp: (buf, ep) => socket.send(buf, endpointPort(ep), formatAddress(endpointAddress(ep)), () => {}),
  onPacket: (from, packet) => {
    const text = packet.toString();
    if (text.startsWith('ping ')) client.send(from, Buffer.from(`pong ${text.slice(5)}`));
    else if (text.startsWith('pong ')) {
      const id = text.split(' ')[1];
      const at = sentAt.get(id);
      if (at !== undefined && !pongs.has(id)) rtts.push(performance.now() - at);
      pongs.add(id);
    }
  },
});
socket.on('message', (msg, rinfo) => {
  if (sameEndpoint(makeEndpoint(parseAddress(rinfo.address)!, rinfo.port), 0, client.endpoint, 0)) client.handleDatagram(msg, 0, msg.length);
});
const startedAt = performance.now();
client.start();

if (env('AVR_ROLE') === 'echo') {
  let last = '';
  setInterval(() => {
    if (client.state !== last) console.log(JSON.stringify({ state: (last = client.state), ms: Math.round(performance.now() - startedAt) }));
  }, 50);
} else if (env('AVR_ROLE') === 'probe') {
  const peer = Buffer.from(env('AVR_PEER'), 'base64');
  const count = Number(env('AVR_COUNT') || 200);
  const interval = Number(env('AVR_INTERVAL') || 10);
  const size = Number(env('AVR_SIZE') || 128);
  const deadline = Date.now() + 30_000;
  while (client.state !== 'udp' && client.state !== 'tcp' && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  for (let n = 0; n < count; n++) {
    sentAt.set(String(n), performance.now());
    client.send(peer, Buffer.from(`ping ${n} `.padEnd(size, '.')));
    await new Promise((r) => setTimeout(r, interval));
  }
  await new Promise((r) => setTimeout(r, 1000));
  rtts.sort((a, b) => a - b);
  const ms = (v: number | undefined) => (v === undefined ? null : Number(v.toFixed(2)));
  console.log(JSON.stringify({ state: client.state, sent: count, pongs: pongs.size, lossPct: Number((100 * (1 - pongs.size / count)).toFixed(1)),
    rttP50Ms: ms(rtts[Math.floor(rtts.length / 2)]), rttMaxMs: ms(rtts[rtts.length - 1]) }));
  client.stop();
  process.exit(0);
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
