// An agent that finds `llm.inference` workers in its network and calls each over HTTP, straight
// to its overlay address (direct or relayed: the daemon decides, the program does not care).
//   node examples/dist/find-inference.js "your prompt"
import { connect } from 'agentvpn';

const prompt = process.argv[2] ?? 'hello';
const vpn = await connect();
const workers = (await vpn.discover({ cap: 'llm.inference' })).filter((w) => w.online);
if (workers.length === 0) {
  console.error('no llm.inference worker is online');
  process.exit(1);
}
for (const w of workers) {
  // The worker says where it listens in its capability (`llm.inference@1;model=echo;port=8080`).
  const cap = w.capabilities.find((c) => c.startsWith('llm.inference')) ?? '';
  const port = /;port=(\d+)/.exec(cap)?.[1] ?? '8080';
  const res = await fetch(`http://${w.ipv4}:${port}/v1/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ prompt }),
    signal: AbortSignal.timeout(10_000),
  });
  console.log(`${w.name} (${w.ipv4}): ${res.status} ${await res.text()}`);
}
