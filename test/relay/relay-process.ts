// A relay run inside a lab namespace by the relay flood tests (ip netns exec NS vite-node this-file):
// startRelay on AVX_LISTEN ("host:port", UDP and the TCP fallback), with the allow list AVX_ALLOW
// (comma-separated [NETWORK:]KEY, as `agentvpn relay --allow-key`; empty: open). Prints
// {"listening":port} once up, and its stats as one JSON line each time it gets SIGUSR2, and on SIGTERM
// before it exits.
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
process.on('SIGUSR2', () => console.log(JSON.stringify({ stats: relay.stats() })));
process.once('SIGTERM', () => {
  console.log(JSON.stringify({ stats: relay.stats() }));
  void relay.stop().then(() => process.exit(0));
});
