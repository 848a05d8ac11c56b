// An `llm.inference` worker: a tiny HTTP server on this agent's overlay address that names each
// caller with whois() (the address was authenticated by WireGuard: no API keys needed).
// Run it on an agent started with `--cap 'llm.inference@1;model=echo;port=8080'`:
//   node examples/dist/inference-worker.js [port]
import { createServer } from 'node:http';
import { connect } from 'agentvpn';

const vpn = await connect();
const me = await vpn.whoami();
const port = Number(process.argv[2] ?? 8080);

createServer((req, res) => {
  let body = '';
  req.setEncoding('utf8');
  req.on('data', (chunk: string) => {
    body += chunk;
    if (body.length > 64 * 1024) req.destroy(); // a prompt, not an upload
  });
  req.on('end', async () => {
    try {
      const caller = await vpn.whois(`${req.socket.remoteAddress}:${req.socket.remotePort}`);
      const { prompt } = JSON.parse(body || '{}') as { prompt?: string };
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ model: 'echo', servedBy: me.name, caller: caller.name, completion: `echo: ${prompt ?? ''}` }));
    } catch (e) {
      // Not an agent of our network (or a bad request): refuse.
      res.writeHead(403, { 'content-type': 'application/json' }).end(JSON.stringify({ error: (e as Error).message }));
    }
  });
}).listen(port, me.ipv4, () => console.log(`${me.name}: llm.inference on http://${me.ipv4}:${port}/v1/completions`));
