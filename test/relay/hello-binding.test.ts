// A captured hello is bound to the relay it was sent to and to the address it came from
// (the relay's challenge, protocol.ts): replayed to another relay, or to the same relay from
// another address, it moves no session. Loopback: the member on 127.0.0.1, the attacker on
// 127.0.0.2, both relays in this process. Each test prints what the replayer got.
import { afterEach, describe, expect, it } from 'vitest';
import { randomBytes } from 'node:crypto';
import { Identity } from '../../src/identity/identity.js';
import { waitFor } from '../../src/lab/index.js';
import { CHALLENGE_BURST_PER_SOURCE, CHALLENGE_RATE_PER_SOURCE } from '../../src/relay/limits.js';
import {
  CHALLENGE_REQUEST_SIZE, FRAME_CHALLENGE, FRAME_HELLO, FRAME_HELLO_ACK, FRAME_NOTICE, FRAME_RECV, NOTICE_BAD_SIGNATURE, NOTICE_BAD_VERSION, NOTICE_NOT_ALLOWED,
  NOTICE_WRONG_RELAY, RELAY_VERSION, encodeChallengeRequest,
  encodeHello, encodeNotice, parseChallenge,
} from '../../src/relay/protocol.js';
import { RelayRig, UNNAMED, capturingLog, rawSocket, sleep, waitState } from './harness.js';

/** Packets the honest peer sends to the member after the replay. */
const PACKETS = 10;

describe('relay hello bound to its relay and its source', () => {
  const rig = new RelayRig();
  afterEach(() => rig.stop());

  it('a hello captured on the way to one relay, replayed to a second relay from another address, is refused and the session there stays', async () => {
    const r1 = await rig.relay();
    const r2 = await rig.relay();
    const m2 = await rig.agent({ udp: r2.udp }); // the member's session at the second relay, opened first
    const peer = await rig.agent({ udp: r2.udp });
    for (const a of [m2, peer]) await waitState(a, 'udp');
    // Then the member says hello to the first relay: that hello is newer than its last one at the second.
    let captured: Buffer | null = null;
    const m1 = await rig.agent({ udp: r1.udp }, { identity: m2.identity, tap: (buf) => ((buf[0] === FRAME_HELLO && (captured = buf)), true) });
    await waitState(m1, 'udp');
    expect(captured).not.toBeNull();

    const attacker = await rawSocket('127.0.0.2');
    rig.closers.push(attacker.close);
    attacker.send(captured!, r2.relay.udpPort);
    await sleep(200);
    for (let i = 0; i < PACKETS; i++) peer.client.send(m1.wgKey, Buffer.from(`to member ${i}`));
    await waitFor(() => m2.received.length + attacker.inbox.filter((f) => f[0] === FRAME_RECV).length >= PACKETS, { timeoutMs: 3000, intervalMs: 10 }).catch(() => {});
    const acks = attacker.inbox.filter((f) => f[0] === FRAME_HELLO_ACK).length;
    const stolen = attacker.inbox.filter((f) => f[0] === FRAME_RECV).length;
    console.log(`hello replayed to another relay: ${acks} acks to the replayer, ${stolen}/${PACKETS} of the member's packets went to the replayer, ${m2.received.length}/${PACKETS} to the member`);
    expect(acks).toBe(0);
    expect(stolen).toBe(0);
    expect(m2.received.length).toBe(PACKETS);
    expect(r2.relay.stats().dropped['bad-challenge']).toBe(1);
    expect(r2.relay.stats().helloVerifications).toBe(2); // the member's and its peer's own hellos: the replay cost none
  });

  it('a hello held back on the path and replayed to the same relay from another address is refused', async () => {
    const r1 = await rig.relay();
    let held: Buffer | null = null;
    let holding = true;
    // The on-path attacker keeps the member's hellos from the relay and sends the first one itself.
    const m = await rig.agent({ udp: r1.udp }, { tap: (buf) => !(buf[0] === FRAME_HELLO && holding && ((held ??= buf), true)) });
    const peer = await rig.agent({ udp: r1.udp });
    await waitState(peer, 'udp');
    await waitFor(() => held !== null, { timeoutMs: 5000, intervalMs: 10, what: 'a hello of the member' });

    const attacker = await rawSocket('127.0.0.2');
    rig.closers.push(attacker.close);
    attacker.send(held!, r1.relay.udpPort);
    await sleep(200);
    for (let i = 0; i < PACKETS; i++) peer.client.send(m.wgKey, Buffer.from(`to member ${i}`));
    await sleep(300);
    const acks = attacker.inbox.filter((f) => f[0] === FRAME_HELLO_ACK).length;
    const stolen = attacker.inbox.filter((f) => f[0] === FRAME_RECV).length;
    console.log(`hello replayed to the same relay from another address: ${acks} acks to the replayer, ${stolen}/${PACKETS} of the member's packets went to it`);
    expect(acks).toBe(0);
    expect(stolen).toBe(0);
    expect(r1.relay.stats().dropped['bad-challenge']).toBe(1);

    // Let the member's own hellos through: it connects from its own address.
    holding = false;
    await waitState(m, 'udp');
    peer.client.send(m.wgKey, Buffer.from('now'));
    await waitFor(() => m.received.length === 1, { intervalMs: 10 });
  });

  it('a hello on a TCP connection, replayed on another connection, is refused; the first connection keeps the session', async () => {
    const { relay: r, tcpPort } = await rig.relayWithTcp();
    const me = Identity.generate();
    const first = await rig.rawTcp(tcpPort);
    first.send(encodeChallengeRequest());
    await waitFor(() => first.inbox.length === 1, { intervalMs: 10, what: 'a challenge over TCP' });
    const hello = encodeHello(me, Date.now(), 0, UNNAMED, parseChallenge(first.inbox[0])!);
    // The hello is captured (and held back); the attacker's own connection says it first.
    const second = await rig.rawTcp(tcpPort);
    second.send(hello);
    await waitFor(() => second.inbox.length === 1, { intervalMs: 10 });
    const answer = second.inbox[0][0];
    first.send(hello);
    await waitFor(() => first.inbox.length === 2, { intervalMs: 10 });
    console.log(`hello replayed on another TCP connection: answered with ${answer === FRAME_HELLO_ACK ? 'an ack' : answer === FRAME_CHALLENGE ? 'a challenge' : answer}; the member's own connection: ${first.inbox[1][0] === FRAME_HELLO_ACK ? 'acked' : 'refused'}`);
    expect(answer).toBe(FRAME_CHALLENGE);
    expect(first.inbox[1][0]).toBe(FRAME_HELLO_ACK);
    expect(r.stats()).toMatchObject({ clients: 1, tcpClients: 1, helloVerifications: 1, dropped: { 'bad-challenge': 1 } });
  });

  it('refuses a hello of protocol version 2 (no relay name) with NOTICE BAD_VERSION and a log line, and the agent says who must upgrade', async () => {
    const relayLog = capturingLog();
    const r = await rig.relay({ log: relayLog });
    const raw = await rawSocket();
    rig.closers.push(raw.close);
    // A version 2 hello (127 bytes: b0 02 flags key(32) timestamp(8) challenge(20) signature(64), no relay name), as the agents before this one sent.
    const v2 = Buffer.concat([Buffer.from([FRAME_HELLO, 2, 0]), Buffer.from(Identity.generate().publicKey), Buffer.alloc(8), await raw.challenge(r.relay.udpPort), randomBytes(64)]);
    v2.writeBigUInt64BE(BigInt(Date.now()), 35);
    raw.send(v2, r.relay.udpPort);
    raw.send(Buffer.from([FRAME_HELLO, 2]), r.relay.udpPort); // too short to be answered: a notice would be larger
    await waitFor(() => (r.relay.stats().dropped['bad-version'] ?? 0) === 2, { intervalMs: 10 });
    await sleep(50);
    expect(raw.inbox.length).toBe(1);
    expect([raw.inbox[0][0], raw.inbox[0][1], raw.inbox[0][2]]).toEqual([FRAME_NOTICE, NOTICE_BAD_VERSION, RELAY_VERSION]);
    const line = relayLog.lines.find((l) => (l.obj as { event?: string }).event === 'relay-bad-version');
    console.log(`relay log: ${line?.msg}`);
    expect(line?.msg).toMatch(/version 2 .*speaks version 3: upgrade that agent/);

    // The agent's side: a relay of a later version answers our challenge request with BAD_VERSION.
    const newer = await rawSocket();
    rig.closers.push(newer.close);
    const agentLog = capturingLog();
    const a = await rig.agent({ udp: `127.0.0.1:${newer.port}` }, { log: agentLog });
    await waitFor(() => newer.inbox.length > 0, { intervalMs: 10 });
    expect(newer.inbox[0].length).toBe(CHALLENGE_REQUEST_SIZE);
    newer.socket.send(encodeNotice(NOTICE_BAD_VERSION, Uint8Array.of(4)), a.socket.address().port, '127.0.0.1');
    await waitFor(() => agentLog.lines.some((l) => (l.obj as { event?: string }).event === 'relay-refused'), { intervalMs: 10 });
    const refused = agentLog.lines.find((l) => (l.obj as { event?: string }).event === 'relay-refused')!;
    console.log(`agent log: ${refused.msg}`);
    expect(refused.msg).toMatch(/speaks relay protocol version 4, this agent 3: upgrade the older one/);
  });

  it('answers a flood of 10,000 challenge requests from one source within its budget, no answer larger than its request; another source still connects', async () => {
    const r = await rig.relay();
    const flooder = await rawSocket('127.0.0.1');
    rig.closers.push(flooder.close);
    const FLOOD = 10_000;
    const request = encodeChallengeRequest();
    const rss0 = process.memoryUsage().rss;
    const cpu0 = process.cpuUsage();
    const t0 = performance.now();
    for (let i = 0; i < FLOOD; i++) {
      flooder.send(request, r.relay.udpPort);
      if (i % 500 === 499) await sleep(5); // stay within the socket buffers: every request reaches the relay
    }
    const handled = () => r.relay.stats().challengesAnswered + (r.relay.stats().dropped['challenge-source-rate'] ?? 0);
    await waitFor(() => handled() >= FLOOD * 0.95, { intervalMs: 20, what: `requests handled (${handled()})` });
    const seconds = (performance.now() - t0) / 1000;
    const cpu = process.cpuUsage(cpu0);
    const rssMb = (process.memoryUsage().rss - rss0) / 2 ** 20;
    await sleep(100);
    const answers = flooder.inbox.filter((f) => f[0] === FRAME_CHALLENGE);
    const answeredBytes = flooder.inbox.reduce((n, f) => n + f.length, 0);
    const stats = r.relay.stats();
    console.log(`challenge flood from one source: ${FLOOD} requests (${FLOOD * request.length} bytes) in ${seconds.toFixed(2)} s, ${stats.challengesAnswered} answered ` +
      `(${answers.length} received, ${answeredBytes} bytes), ${stats.dropped['challenge-source-rate'] ?? 0} shed by the source budget; process (relay and sender) CPU ` +
      `${((cpu.user + cpu.system) / 1000).toFixed(0)} ms = ${((cpu.user + cpu.system) / FLOOD).toFixed(1)} µs a request, RSS ${rssMb >= 0 ? '+' : ''}${rssMb.toFixed(1)} MB; ` +
      `signatures checked: ${stats.helloVerifications}`);
    // The relay's count: the flooder's socket buffer may lose some of what was sent.
    expect(answers.length).toBeLessThanOrEqual(stats.challengesAnswered);
    expect(answers.length).toBeGreaterThan(0);
    expect(stats.challengesAnswered).toBeLessThanOrEqual(CHALLENGE_BURST_PER_SOURCE + CHALLENGE_RATE_PER_SOURCE * seconds + 50);
    expect(flooder.inbox.every((f) => f.length <= request.length)).toBe(true);
    expect(stats.helloVerifications).toBe(0);
    const other = await rig.agent({ udp: `127.0.0.1:${r.relay.udpPort}` }, { host: '127.0.0.2' });
    await waitState(other, 'udp', 5000);

    // The same flood of hellos (random keys and signatures over a real challenge: each passes the
    // challenge and meets the signature budget), from a third source, for the ratio in this run.
    const hellos = await rawSocket('127.0.0.3');
    rig.closers.push(hellos.close);
    const template = encodeHello(Identity.generate(), Date.now(), 0, UNNAMED, await hellos.challenge(r.relay.udpPort));
    const frames = Array.from({ length: 64 }, () => Buffer.concat([template.subarray(0, 3), randomBytes(32), template.subarray(35)]));
    const before = r.relay.stats();
    const shedBefore = before.dropped['hello-source-rate'] ?? 0;
    const hcpu0 = process.cpuUsage();
    for (let i = 0; i < FLOOD; i++) {
      hellos.send(frames[i % frames.length], r.relay.udpPort);
      if (i % 500 === 499) await sleep(5);
    }
    const helloHandled = () => r.relay.stats().helloVerifications - before.helloVerifications + (r.relay.stats().dropped['hello-source-rate'] ?? 0) - shedBefore;
    await waitFor(() => helloHandled() >= FLOOD * 0.95, { intervalMs: 20, what: `hellos handled (${helloHandled()})` });
    const hcpu = process.cpuUsage(hcpu0);
    const perChallenge = (cpu.user + cpu.system) / FLOOD;
    const perHello = (hcpu.user + hcpu.system) / FLOOD;
    console.log(`hello flood from one source, same run: ${FLOOD} hellos, ${r.relay.stats().helloVerifications - before.helloVerifications} signatures checked, ` +
      `CPU ${perHello.toFixed(1)} µs a hello; challenge request / hello: ${(perChallenge / perHello).toFixed(2)}`);
  });

  it('a challenge flood from a member\'s IP address (its NAT\'s, or spoofed) does not keep the member from getting a challenge on its own session', async () => {
    const r = await rig.relay();
    const port = r.relay.udpPort;
    const member = await rawSocket('127.0.0.1');
    const flooder = await rawSocket('127.0.0.1'); // the same source for the budgets (the IPv4 address)
    rig.closers.push(member.close, flooder.close);
    const me = Identity.generate();
    member.send(encodeHello(me, Date.now(), 0, UNNAMED, await member.challenge(port)), port);
    await waitFor(() => member.inbox.some((f) => f[0] === FRAME_HELLO_ACK), { intervalMs: 10 });
    member.inbox.length = 0;

    let flooding = true;
    let sent = 0;
    const flood = (async () => {
      const request = encodeChallengeRequest();
      while (flooding) {
        for (let i = 0; i < 200; i++) flooder.send(request, port);
        sent += 200;
        await sleep(5);
      }
    })();
    await sleep(300); // the source's burst is spent
    const ASKS = 5;
    for (let i = 0; i < ASKS; i++) {
      member.send(encodeChallengeRequest(), port);
      await sleep(100);
    }
    flooding = false;
    await flood;
    await sleep(100);
    const got = member.inbox.filter((f) => f[0] === FRAME_CHALLENGE).length;
    console.log(`challenge flood from the member's address: ${sent} requests, ${r.relay.stats().dropped['challenge-source-rate'] ?? 0} shed; the member got ${got} of ${ASKS} challenges it asked for`);
    expect(got).toBe(ASKS);
  });

  it('refusal notices forged from the relay\'s address over UDP (100/s) do not keep an agent off the relay', async () => {
    const r = await rig.relay();
    const agentLog = capturingLog();
    const a = await rig.agent({ udp: r.udp }, { log: agentLog });
    // What an off-path spoofer's datagrams look like once they pass the source check: from the relay's address.
    const forged = [NOTICE_NOT_ALLOWED, NOTICE_BAD_SIGNATURE, NOTICE_WRONG_RELAY].map((code) => encodeNotice(code));
    let sent = 0;
    const forge = () => {
      const n = forged[sent++ % forged.length];
      a.client.handleDatagram(n, 0, n.length);
    };
    forge(); // while its first attempt waits for the relay's challenge
    const flood = setInterval(forge, 10);
    try {
      await waitState(a, 'udp', 5_000);
      await sleep(1_000);
      const refusals = agentLog.lines.filter((l) => (l.obj as { event?: string }).event === 'relay-refused').length;
      const retries = agentLog.lines.filter((l) => (l.obj as { event?: string }).event === 'relay-retry').length;
      console.log(`${sent} forged refusals: the agent is ${a.client.state}, ${r.relay.stats().clients} session(s) at the relay, ${refusals} refusal log line(s), ${retries} back-off(s)`);
      expect(a.client.state).toBe('udp');
      expect(retries).toBe(0); // no attempt was given up for a notice
      expect(r.relay.stats().clients).toBe(1);
      expect(refusals).toBeLessThanOrEqual(2); // once per attempt, not once per notice
    } finally {
      clearInterval(flood);
    }
  });
});
