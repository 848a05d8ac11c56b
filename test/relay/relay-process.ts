// A relay run inside a lab namespace by the relay flood tests (ip netns exec NS vite-node this-file):
// startRelay on AVX_LISTEN ("host:port", UDP and the TCP fallback), with the allow list AVX_ALLOW
// (comma-separated [NETWORK:]KEY, as `agentvpn relay --allow-key`; empty: open). Prints
// {"listening":port} once up, and its stats (with its RSS and CPU time) as one JSON line each time it
// gets SIGUSR2, and on SIGTERM before it exits.
import { createServer } from 'node:http';
import { parseAllowKeys } from '../../src/relay/allow-list.js';
import { parseHostPort } from '../../src/relay/protocol.js';
import { startRelay } from '../../src/relay/server.js';

const { host, port } = parseHostPort(process.env.AVX_LISTEN ?? '');
const allow = process.env.AVX_ALLOW ? parseAllowKeys(process.env.AVX_ALLOW.split(',')).hook : undefined;
const http = createServer((_req, res) => res.writeHead(404).end());
await new Promise<void>((resolve) => http.listen(port, host, () => resolve()));
const relay = await startRelay({ udp: { host, port }, tcpServer: http, allow });
console.log(JSON.stringify({ listening: relay.udpPort }));
/** Its counters, and what it costs the host: resident memory and CPU time so far. */
const report = () => {
  const cpu = process.cpuUsage();
  return JSON.stringify({ stats: relay.stats(), rssMb: Math.round(process.memoryUsage().rss / 2 ** 20), cpuMs: Math.round((cpu.user + cpu.system) / 1000) });
};
process.on('SIGUSR2', () => console.log(report()));
process.once('SIGTERM', () => {
  console.log(report());
  void relay.stop().then(() => process.exit(0));
});
