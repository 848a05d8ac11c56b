// The DNS responder in a process of its own (vite-node this-file), so a test can measure the
// server's memory apart from the client's. Prints {"port": N} once listening; each line on stdin
// ("stats") is answered with one JSON line: the server's counters and the memory still in use
// after a full garbage collection (run with node --expose-gc). Exits on SIGTERM.
import { createInterface } from 'node:readline';
import { DnsServer } from '../../src/dns/server.js';

const limits = process.env.DNS_LIMITS ? JSON.parse(process.env.DNS_LIMITS) : undefined;
const server = new DnsServer({
  bind: ['127.0.0.1'],
  port: 0,
  zone: 'prod',
  lookup: (name) => (name === 'planner' ? { ipv4: '100.64.0.7', ipv6: 'fd12:3456:789a::7' } : null),
  limits,
  loopbackSourcesApart: true, // the tests' 127/8 addresses stand in for members
});
await server.start();
process.stdout.write(`${JSON.stringify({ port: server.port })}\n`);
createInterface({ input: process.stdin }).on('line', () => {
  (globalThis as { gc?: () => void }).gc?.();
  const { heapUsed, arrayBuffers } = process.memoryUsage();
  const retainedMb = (heapUsed + arrayBuffers) / 2 ** 20;
  process.stdout.write(`${JSON.stringify({ stats: server.stats, shed: server.shed, retainedMb })}\n`);
});
process.once('SIGTERM', () => void server.stop().then(() => process.exit(0)));
