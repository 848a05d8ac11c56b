// What idle peers cost (issue 10: "10k idle peers cost no CPU", "RSS with 1000 static peers below
// 80 MB"): agentvpn and trixie's wireguard-go in static mode with N peers, after a settling time:
// resident memory and CPU seconds per minute of the daemon's process tree. Two kinds of peers:
//   quiet    no endpoint, no keepalive: nothing to do, so what is measured is the timers' own cost
//   offline  an endpoint nobody answers and a 25 s persistent keepalive: each peer keeps trying
//            to handshake (every 5 s for 90 s, then again at its next keepalive), as for peers
//            that are down
// usage: node scripts/bench-idle.mjs [--peers 1000,10000] [--seconds 20] [--kind quiet,offline]
import { generateKeyPairSync } from 'node:crypto';
import { readFileSync, readdirSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { Lab, fetchTrixieBinaries, labUnavailableReasons, startAgentVpn, startWireguardGo } from '../dist/lab/index.js';

const { values: args } = parseArgs({ options: { peers: { type: 'string', default: '1000,10000' }, seconds: { type: 'string', default: '20' }, kind: { type: 'string', default: 'quiet,offline' } } });
const KINDS = args.kind.split(',');
const COUNTS = args.peers.split(',').map(Number);
const SECONDS = Number(args.seconds);
const reasons = labUnavailableReasons(['ip', 'wg', 'nsenter', 'unshare']);
if (reasons.length) {
  console.error(`bench-idle: cannot run:\n  ${reasons.join('\n  ')}`);
  process.exit(1);
}
const progress = (msg) => process.stderr.write(`bench-idle: ${msg}\n`);

function keyPair() {
  const { publicKey, privateKey } = generateKeyPairSync('x25519');
  const raw = (k, type) => k.export({ format: 'der', type }).subarray(-32).toString('base64');
  return { privateKey: raw(privateKey, 'pkcs8'), publicKey: raw(publicKey, 'spki') };
}

/** A process and all its descendants (wireguard-go runs under an unshare wrapper). */
function tree(pid) {
  const out = [pid];
  for (const task of readdirSync(`/proc/${pid}/task`)) {
    const kids = readFileSync(`/proc/${pid}/task/${task}/children`, 'utf8').trim();
    for (const k of kids ? kids.split(' ').map(Number) : []) out.push(...tree(k));
  }
  return out;
}

const rssMb = (pids) => pids.reduce((sum, p) => sum + Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${p}/status`, 'utf8'))?.[1] ?? 0), 0) / 1024;
const cpuSeconds = (pids) => pids.reduce((sum, p) => {
  const f = readFileSync(`/proc/${p}/stat`, 'utf8').split(') ')[1].split(' ');
  return sum + (Number(f[11]) + Number(f[12])) / 100; // utime, stime (fields 14, 15) in USER_HZ
}, 0);

const trixie = await fetchTrixieBinaries();
const rows = [];
const lab = new Lab();
try {
  const ns = await lab.addNamespace('idle');
  const peerNs = await lab.addNamespace('idle-peers');
  await lab.connect(ns, peerNs, { a: '192.0.2.1/24', b: '192.0.2.2/24' });
  for (const kind of KINDS) for (const count of COUNTS) {
    const self = keyPair();
    const peers = Array.from({ length: count }, (_, i) => ({
      publicKey: keyPair().publicKey,
      allowedIps: [`100.${64 + (i >> 16)}.${(i >> 8) & 255}.${i & 255}/32`],
      ...(kind === 'offline' ? { endpoint: `192.0.2.2:${20000 + (i % 40000)}`, persistentKeepalive: 25 } : {}),
    }));
    const cfg = { privateKey: self.privateKey, listenPort: 51820, addresses: ['100.127.255.254/10'], peers };
    for (const system of ['agentvpn', 'wireguard-go-trixie']) {
      progress(`${system}: ${count} peers`);
      const running = system === 'agentvpn' ? await startAgentVpn(lab, ns, cfg, 'idle0', { timeoutMs: 120_000 })
        : await startWireguardGo(lab, ns, cfg, 'idle0', { binary: trixie.wireguardGo });
      try {
        await new Promise((r) => setTimeout(r, 10_000)); // past start-up work and the first keepalives
        const pids = tree(running.pid);
        const cpu0 = cpuSeconds(pids);
        await new Promise((r) => setTimeout(r, SECONDS * 1000));
        const perMinute = ((cpuSeconds(tree(running.pid)) - cpu0) / SECONDS) * 60;
        rows.push({ system, kind, peers: count, rssMb: rssMb(tree(running.pid)), cpuSecPerMin: perMinute });
      } finally {
        await running.stop();
      }
    }
  }
} finally {
  await lab.cleanup();
}
console.log(`\nidle peers, measured over ${SECONDS} s after 10 s settling (quiet: nothing to do; offline: unanswered handshakes and keepalives)`);
console.log(['system'.padEnd(22), 'kind'.padEnd(8), 'peers'.padStart(6), 'RSS MB'.padStart(8), 'CPU s/min'.padStart(10)].join(' '));
for (const r of rows) console.log([r.system.padEnd(22), r.kind.padEnd(8), String(r.peers).padStart(6), r.rssMb.toFixed(1).padStart(8), r.cpuSecPerMin.toFixed(2).padStart(10)].join(' '));
