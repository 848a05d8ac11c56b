import { describe, it, expect, afterEach } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import { createSocket } from 'node:dgram';
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { dirname, join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { DnsServer } from '../../src/dns/server.js';

/**
 * Adversarial tests of the DNS responder's budgets (issue 7, class 5): a member that pipelines
 * DNS-over-TCP queries without reading the answers, hogs connections, or floods UDP must not
 * grow the agent's memory or take the answers away from everyone else.
 */

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const VITE_NODE = join(ROOT, 'node_modules', 'vite-node', 'vite-node.mjs');
const CHILD = join(ROOT, 'test', 'dns', 'dns-server-child.ts');
const A = 1;
/** Where the other, well-behaved clients come from: a second loopback address is a second source. */
const VICTIM = '127.0.0.2';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function query(id: number): Buffer {
  const name = [7, ...Buffer.from('planner'), 4, ...Buffer.from('prod'), 0];
  return Buffer.from([id >> 8, id & 0xff, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, ...name, 0, A, 0, 1]);
}
const framed = (m: Buffer) => Buffer.concat([Buffer.from([m.length >> 8, m.length & 0xff]), m]);

function rssMb(pid: number): number {
  const kb = Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1]);
  return kb / 1024;
}

interface ChildServer {
  proc: ChildProcess;
  port: number;
  /** Counters, and the heap and buffers still in use after a full garbage collection. */
  stats(): Promise<{ stats: Record<string, number>; shed: Record<string, number>; retainedMb: number }>;
}

const children: ChildProcess[] = [];
afterEach(() => {
  for (const c of children.splice(0)) if (c.exitCode === null) c.kill('SIGKILL');
});

async function startChild(limits?: object): Promise<ChildServer> {
  const proc = spawn(process.execPath, ['--expose-gc', VITE_NODE, CHILD], {
    cwd: ROOT, stdio: ['pipe', 'pipe', 'inherit'], env: { ...process.env, ...(limits ? { DNS_LIMITS: JSON.stringify(limits) } : {}) },
  });
  children.push(proc);
  const lines = createInterface({ input: proc.stdout! })[Symbol.asyncIterator]();
  const first = await Promise.race([lines.next(), sleep(30_000).then(() => null)]);
  if (!first || first.done) throw new Error('the DNS server child did not start');
  const { port } = JSON.parse(first.value) as { port: number };
  return {
    proc, port,
    stats: async () => {
      proc.stdin!.write('stats\n');
      return JSON.parse((await lines.next()).value as string);
    },
  };
}

/** One UDP query from `from`; true when an answer arrives within `ms` (2 s, as TCP: a stub resolver waits longer still before it retries). */
function udpAnswered(port: number, from: string, ms = 2000): Promise<boolean> {
  const s = createSocket('udp4');
  return new Promise((resolve) => {
    const done = (ok: boolean) => { clearTimeout(timer); s.close(); resolve(ok); };
    const timer = setTimeout(() => done(false), ms);
    s.on('message', () => done(true));
    s.bind(0, from, () => s.send(query(1), port, '127.0.0.1'));
  });
}

/** A fresh TCP connection from `from`, one query, true when its answer arrives within `ms`. */
function tcpAnswered(port: number, from: string, ms = 2000): Promise<boolean> {
  return new Promise((resolve) => {
    const c = connect({ host: '127.0.0.1', port, localAddress: from });
    let got = Buffer.alloc(0);
    const done = (ok: boolean) => { clearTimeout(timer); c.destroy(); resolve(ok); };
    const timer = setTimeout(() => done(false), ms);
    c.on('connect', () => c.write(framed(query(2))));
    c.on('data', (d) => {
      got = Buffer.concat([got, d]);
      if (got.length >= 2 && got.length >= 2 + got.readUInt16BE(0)) done(true);
    });
    c.on('error', () => done(false));
    c.on('close', () => done(false));
  });
}

/**
 * Writes pipelined queries on one connection for `ms` and never reads an answer. It respects
 * its own socket's backpressure, so what grows (if anything) is the server, not this client.
 * The connection is left open (the caller measures, then closes it).
 */
async function pipelineWithoutReading(port: number, ms: number): Promise<{ sent: number; socket: Socket }> {
  const c = connect({ host: '127.0.0.1', port });
  c.on('error', () => {});
  await once(c, 'connect');
  c.pause();
  const batch = Buffer.concat(Array.from({ length: 256 }, (_, i) => framed(query(i))));
  let sent = 0;
  const end = Date.now() + ms;
  while (Date.now() < end && !c.destroyed) {
    sent += 256;
    if (!c.write(batch)) {
      const left = end - Date.now();
      if (left <= 0 || (await Promise.race([once(c, 'drain').then(() => true), sleep(left).then(() => false)])) === false) break;
    }
  }
  return { sent, socket: c };
}

/** Runs the pipelining attack against a child server; samples its RSS and a victim's answers meanwhile. */
async function pipelineAttack(server: ChildServer, connections: number, ms: number) {
  const pid = server.proc.pid!;
  await sleep(500); // let the freshly started process settle
  const retainedBefore = (await server.stats()).retainedMb;
  const before = rssMb(pid);
  let peak = before;
  let asked = 0, answered = 0;
  const attack = Promise.all(Array.from({ length: connections }, () => pipelineWithoutReading(server.port, ms)));
  let running = true;
  void attack.finally(() => (running = false));
  while (running) {
    await sleep(250);
    peak = Math.max(peak, rssMb(pid));
    const [u, t] = await Promise.all([udpAnswered(server.port, VICTIM), tcpAnswered(server.port, VICTIM)]);
    asked += 2;
    answered += Number(u) + Number(t);
  }
  const attackers = await attack;
  peak = Math.max(peak, rssMb(pid));
  const { shed, retainedMb } = await server.stats(); // the attackers are still connected
  for (const a of attackers) a.socket.destroy();
  const sent = attackers.reduce((n, a) => n + a.sent, 0);
  return { before, peak, growth: peak - before, retained: retainedMb - retainedBefore, shed, sent, asked, answered };
}

describe('DNS responder budgets (adversarial)', () => {
  it('a client pipelining TCP queries for 5 s without reading answers grows the server by only a few MB; others still get answers', async () => {
    const server = await startChild();
    const r = await pipelineAttack(server, 4, 5000);
    console.log(`DNS over TCP, 4 connections pipelining without reading for 5 s: ${r.sent} queries written, server RSS ` +
      `${r.before.toFixed(0)} -> ${r.peak.toFixed(0)} MB (+${r.growth.toFixed(1)} MB), retained after GC +${r.retained.toFixed(1)} MB; ` +
      `victim answered ${r.answered}/${r.asked}; shed ${JSON.stringify(r.shed)}`);
    expect(r.growth).toBeLessThan(25);
    expect(r.retained).toBeLessThan(10);
    expect(r.answered).toBe(r.asked);
    expect(r.asked).toBeGreaterThanOrEqual(8);
  });

  // Without the budget the server answers as fast as the kernel takes answers (loopback socket
  // buffers hold megabytes), so its heap churns and RSS rises with V8's headroom; what must stay
  // small is the memory it still holds for the unread answers, measured after a full GC.
  it('with the query budget lifted, backpressure alone keeps what the server holds small', async () => {
    const server = await startChild({ queriesPerSecondPerSource: 1e9, queryBurstPerSource: 1e9, queriesPerSecond: 1e9, queryBurst: 1e9 });
    const r = await pipelineAttack(server, 4, 5000);
    console.log(`DNS over TCP, no query budget, 4 connections pipelining without reading for 5 s: ${r.sent} queries written, server RSS ` +
      `${r.before.toFixed(0)} -> ${r.peak.toFixed(0)} MB (+${r.growth.toFixed(1)} MB), retained after GC +${r.retained.toFixed(1)} MB; ` +
      `victim answered ${r.answered}/${r.asked}; shed ${JSON.stringify(r.shed)}`);
    expect(r.retained).toBeLessThan(10);
    expect(r.answered).toBe(r.asked);
    expect(r.shed.tcpPaused).toBeGreaterThan(0);
  });

  it('caps TCP connections per source address and in total; other sources still connect', async () => {
    const server = await startChild();
    const open = async (from: string, n: number): Promise<Socket[]> => {
      const socks = Array.from({ length: n }, () => connect({ host: '127.0.0.1', port: server.port, localAddress: from }).on('error', () => {}));
      await Promise.all(socks.map((s) => once(s, 'connect').catch(() => {})));
      await sleep(300); // refused ones are closed by the server at once
      return socks;
    };
    const alive = (socks: Socket[]) => socks.filter((s) => !s.destroyed && !s.readableEnded).length;
    const one = await open('127.0.0.1', 20);
    const fromOne = alive(one);
    expect(await tcpAnswered(server.port, VICTIM)).toBe(true);
    // 21 more sources with 8 each: 168 would exceed the total.
    const many = (await Promise.all(Array.from({ length: 21 }, (_, i) => open(`127.0.1.${i + 1}`, 8)))).flat();
    const total = fromOne + alive(many);
    const { shed } = await server.stats();
    console.log(`TCP connections: 20 from one source -> ${fromOne} kept; ${one.length + many.length} from 22 sources -> ${total} kept; shed ${JSON.stringify(shed)}`);
    for (const s of [...one, ...many]) s.destroy();
    expect(fromOne).toBeLessThanOrEqual(8);
    expect(fromOne).toBeGreaterThan(0);
    expect(total).toBeLessThanOrEqual(64);
    expect(shed.tcpRefusedPerSource).toBeGreaterThanOrEqual(12);
    expect(shed.tcpRefusedTotal).toBeGreaterThan(0);
  });

  describe('in process', () => {
    let server: DnsServer | null = null;
    afterEach(async () => { await server?.stop(); server = null; });

    it('closes idle TCP connections and ends busy ones after their lifetime', async () => {
      server = new DnsServer({ bind: ['127.0.0.1'], port: 0, zone: 'prod', lookup: () => ({ ipv4: '100.64.0.7' }), limits: { tcpIdleMs: 300, tcpLifetimeMs: 1500 }, loopbackSourcesApart: true });
      await server.start();
      const port = server.port;
      const closedAfter = (c: Socket) => { const t0 = Date.now(); return new Promise<number>((r) => c.on('close', () => r(Date.now() - t0))); };
      const idle = connect({ host: '127.0.0.1', port }).on('error', () => {});
      const idleClosed = closedAfter(idle);
      const busy = connect({ host: '127.0.0.1', port }).on('error', () => {});
      const busyClosed = closedAfter(busy);
      let answers = 0;
      busy.on('data', () => answers++);
      const ticker = setInterval(() => busy.writable && busy.write(framed(query(3))), 100);
      const [idleMs, busyMs] = await Promise.race([Promise.all([idleClosed, busyClosed]), sleep(6000).then(() => [-1, -1])]);
      clearInterval(ticker);
      idle.destroy(); busy.destroy();
      console.log(`idle connection closed after ${idleMs} ms (idle limit 300), busy one after ${busyMs} ms (lifetime 1500) with ${answers} answers`);
      expect(idleMs).toBeGreaterThan(0);
      expect(idleMs).toBeLessThan(1400);
      expect(busyMs).toBeGreaterThan(1000);
      expect(answers).toBeGreaterThan(3);
      expect(server.shed.tcpIdleClosed).toBeGreaterThanOrEqual(1);
      expect(server.shed.tcpLifetimeClosed).toBeGreaterThanOrEqual(1);
    });

    it('answers one UDP source only within its budget, and other sources meanwhile', async () => {
      server = new DnsServer({ bind: ['127.0.0.1'], port: 0, zone: 'prod', lookup: () => ({ ipv4: '100.64.0.7' }), loopbackSourcesApart: true });
      await server.start();
      const port = server.port;
      const attacker = createSocket('udp4');
      let answers = 0;
      attacker.on('message', () => answers++);
      await new Promise<void>((r) => attacker.bind(0, '127.0.0.1', () => r()));
      const msg = query(4);
      const t0 = Date.now();
      let sent = 0, victimOk = 0;
      for (let tick = 0; tick < 200; tick++) { // 2 s at ~3,000 queries/s
        for (let i = 0; i < 30; i++, sent++) attacker.send(msg, port, '127.0.0.1');
        if (tick % 20 === 0) victimOk += Number(await udpAnswered(port, VICTIM));
        await sleep(10);
      }
      await sleep(300);
      const seconds = (Date.now() - t0) / 1000;
      attacker.close();
      const budget = server.limits.queryBurstPerSource + server.limits.queriesPerSecondPerSource * seconds;
      console.log(`UDP flood from one source: ${sent} queries in ${seconds.toFixed(1)} s, ${answers} answered (budget ${budget.toFixed(0)}), ` +
        `${server.shed.udpOverBudget} shed; victim answered ${victimOk}/10`);
      expect(answers).toBeLessThanOrEqual(budget * 1.1);
      expect(answers).toBeGreaterThan(server.limits.queriesPerSecondPerSource);
      expect(server.shed.udpOverBudget).toBeGreaterThan(sent - budget * 1.5);
      expect(victimOk).toBe(10);
    });

    it('counts every loopback address as one source: a local user sending from 64 of them gets one source\'s budget, and one TCP source\'s slots', async () => {
      server = new DnsServer({ bind: ['127.0.0.1'], port: 0, zone: 'prod', lookup: () => ({ ipv4: '100.64.0.7' }) });
      await server.start();
      const port = server.port;
      const sockets = await Promise.all(Array.from({ length: 64 }, async (_, i) => {
        const s = createSocket('udp4');
        await new Promise<void>((r) => s.bind(0, `127.0.${2 + (i >> 6)}.${1 + (i & 63)}`, () => r()));
        return s;
      }));
      let answers = 0;
      for (const s of sockets) s.on('message', () => answers++);
      const msg = query(5);
      const t0 = Date.now();
      let sent = 0;
      for (let tick = 0; tick < 50; tick++) { // ~0.5 s
        for (const s of sockets) for (let i = 0; i < 2; i++, sent++) s.send(msg, port, '127.0.0.1');
        await sleep(10);
      }
      await sleep(300);
      const seconds = (Date.now() - t0) / 1000;
      for (const s of sockets) s.close();
      const oneSource = server.limits.queryBurstPerSource + server.limits.queriesPerSecondPerSource * seconds;
      // TCP: connections from 16 loopback addresses share one source's slots.
      const conns = Array.from({ length: 16 }, (_, i) => connect({ host: '127.0.0.1', port, localAddress: `127.0.3.${i + 1}` }).on('error', () => {}));
      await Promise.all(conns.map((c) => once(c, 'connect').catch(() => {})));
      await sleep(300);
      const kept = conns.filter((c) => !c.destroyed && !c.readableEnded).length;
      for (const c of conns) c.destroy();
      console.log(`UDP from 64 loopback addresses: ${sent} queries, ${answers} answered (one source's budget: ${oneSource.toFixed(0)}); TCP from 16: ${kept} kept`);
      expect(answers).toBeLessThanOrEqual(oneSource * 1.1);
      expect(answers).toBeGreaterThan(0);
      expect(kept).toBeLessThanOrEqual(server.limits.tcpConnectionsPerSource);
    });
  });
});
