// Relay protocol 3: a hello is bound to the name of the relay the agent meant to dial. A malicious
// relay M, dialled by an agent, fetches a challenge from another relay R for its own address,
// hands it to the agent and replays the agent's signed hello to R: protocol 2's challenge does not
// stop that (it is R's, for M's address), the name does (the agent signed "m", R is "r").
// Loopback: agents on 127.0.0.1, M on 127.0.0.2, both relays' servers in this process.
import { afterEach, describe, expect, it } from 'vitest';
import dgram, { type RemoteInfo } from 'node:dgram';
import { Identity } from '../../src/identity/identity.js';
import { waitFor } from '../../src/lab/index.js';
import { FRAME_CHALLENGE, FRAME_HELLO_ACK, FRAME_NOTICE, FRAME_RECV, NOTICE_WRONG_RELAY, encodeChallengeRequest, encodeHello, parseChallenge } from '../../src/relay/protocol.js';
import { relayNameHash } from '../../src/relay/relay-name.js';
import { RelayRig, UNNAMED, capturingLog, rawSocket, sleep, waitState } from './harness.js';

/** Packets an honest peer at R sends to the agent once M has replayed the agent's hello there. */
const PACKETS = 10;

/**
 * A malicious relay on 127.0.0.2: everything an agent sends it goes on to R from M's own socket,
 * and R's answers go back to the agent, except packets for the agent (RECV): M keeps those.
 */
async function maliciousRelay(rPort: number): Promise<{ port: number; acksFromR: number; stolen: Buffer[]; close(): void }> {
  const socket = dgram.createSocket('udp4');
  await new Promise<void>((resolve) => socket.bind(0, '127.0.0.2', () => resolve()));
  const m = { port: socket.address().port, acksFromR: 0, stolen: [] as Buffer[], close: () => socket.close() };
  let agent: RemoteInfo | null = null;
  socket.on('message', (msg, rinfo) => {
    if (rinfo.port !== rPort) {
      agent = rinfo;
      socket.send(msg, rPort, '127.0.0.1');
    } else if (msg[0] === FRAME_RECV) {
      m.stolen.push(msg);
    } else {
      if (msg[0] === FRAME_HELLO_ACK) m.acksFromR++;
      if (agent) socket.send(msg, agent.port, agent.address);
    }
  });
  return m;
}

describe('relay hello bound to the relay name the agent dialled', () => {
  const rig = new RelayRig();
  afterEach(() => rig.stop());

  it('a malicious relay that relays R\'s challenge to the agent and replays its hello to R does not take the agent\'s session at R', async () => {
    const { relay: r, udp } = await rig.relay({ names: ['r'] });
    const rInfo = { udp, name: 'r' };
    const member = Identity.generate();
    const atR = await rig.agent(rInfo, { identity: member }); // the member's own session at R (its home relay)
    const peer = await rig.agent(rInfo);
    for (const a of [atR, peer]) await waitState(a, 'udp');

    // Then the member dials M (a relay the registry advertises as "m", the peer's home, say).
    const m = await maliciousRelay(r.udpPort);
    rig.closers.push(m.close);
    const atM = await rig.agent({ udp: `127.0.0.2:${m.port}`, name: 'm' }, { identity: member });
    await waitFor(() => atM.client.state !== 'connecting' || m.acksFromR > 0, { timeoutMs: 4000, intervalMs: 20 }).catch(() => {});
    await sleep(200);
    for (let i = 0; i < PACKETS; i++) peer.client.send(atR.wgKey, Buffer.from(`to member ${i}`));
    await waitFor(() => atR.received.length + m.stolen.length >= PACKETS, { timeoutMs: 3000, intervalMs: 10 }).catch(() => {});
    const stats = r.stats();
    console.log(`hello for relay "m" replayed to relay "r" by m: ${m.acksFromR} acks from r, ${m.stolen.length}/${PACKETS} of the member's packets went to m, ` +
      `${atR.received.length}/${PACKETS} to the member; r refused ${stats.dropped['wrong-relay'] ?? 0} hello(s) for another relay, ${stats.helloVerifications} signatures checked`);
    expect(m.acksFromR).toBe(0);
    expect(m.stolen.length).toBe(0);
    expect(atR.received.length).toBe(PACKETS);
    expect(stats.dropped['wrong-relay'] ?? 0).toBeGreaterThanOrEqual(1);
    expect(stats.helloVerifications).toBe(2); // the member's and the peer's own hellos: the replays cost none
  });

  it('an honest agent reaches a named relay by its name over UDP, and over TCP when UDP is blocked; a relay with two names takes either', async () => {
    const r = await rig.relayWithTcp({ names: ['eu1', 'eu1-old'] });
    const overUdp = await rig.agent({ udp: r.udp, tcp: r.tcp, name: 'eu1' });
    const overTcp = await rig.agent({ udp: r.udp, tcp: r.tcp, name: 'eu1-old' }, { blockUdp: true, udpTimeoutMs: 300 });
    await waitState(overUdp, 'udp');
    await waitState(overTcp, 'tcp');
    overUdp.client.send(overTcp.wgKey, Buffer.from('udp to tcp'));
    overTcp.client.send(overUdp.wgKey, Buffer.from('tcp to udp'));
    await waitFor(() => overUdp.received.length === 1 && overTcp.received.length === 1, { intervalMs: 10, what: 'a packet each way' });
    const stats = r.relay.stats();
    console.log(`named relay: ${stats.udpClients} UDP and ${stats.tcpClients} TCP session(s), ${stats.forwardedPackets} packets forwarded, ${stats.dropped['wrong-relay'] ?? 0} hellos for another name`);
    expect(stats).toMatchObject({ udpClients: 1, tcpClients: 1, forwardedPackets: 2 });
    expect(stats.dropped['wrong-relay']).toBeUndefined();
  });

  it('refuses hellos for another name, and a named relay the empty name, without a signature check; a refusal is answered only where the challenge went', async () => {
    const FLOOD = 1000;
    const r = await rig.relayWithTcp({ names: ['r'] });
    const raw = await rawSocket();
    rig.closers.push(raw.close);
    const challenge = await raw.challenge(r.relay.udpPort);
    // Real signatures over a real challenge for this source: only the name is wrong ("m", or none).
    const hellos = [relayNameHash('m'), UNNAMED].map((name) => encodeHello(Identity.generate(), Date.now(), 0, name, challenge));
    for (let i = 0; i < FLOOD; i++) {
      raw.send(hellos[i % 2], r.relay.udpPort);
      if (i % 200 === 199) await sleep(5);
    }
    // The same from a source the challenge was not made for (another address's): refused, not answered.
    const other = await rawSocket('127.0.0.2');
    rig.closers.push(other.close);
    for (let i = 0; i < 100; i++) other.send(hellos[0], r.relay.udpPort);
    await waitFor(() => (r.relay.stats().dropped['wrong-relay'] ?? 0) >= FLOOD + 95, { intervalMs: 20, what: `refused hellos (${r.relay.stats().dropped['wrong-relay'] ?? 0})` });
    // Over TCP: the same (a refusal there is answered: the connection proved the source).
    const tcp = await rig.rawTcp(r.tcpPort, '127.0.0.3'); // a source whose notice budget the flood did not spend
    const tcpInbox = tcp.inbox;
    tcp.send(encodeChallengeRequest());
    await waitFor(() => tcpInbox.some((f) => f[0] === FRAME_CHALLENGE), { intervalMs: 10, what: 'a challenge over TCP' });
    tcp.send(encodeHello(Identity.generate(), Date.now(), 0, relayNameHash('m'), parseChallenge(tcpInbox.find((f) => f[0] === FRAME_CHALLENGE)!)!));
    await waitFor(() => tcpInbox.some((f) => f[0] === FRAME_NOTICE && f[1] === NOTICE_WRONG_RELAY), { intervalMs: 10, what: 'a WRONG_RELAY notice over TCP' });
    await sleep(100);

    const stats = r.relay.stats();
    const notices = raw.inbox.filter((f) => f[0] === FRAME_NOTICE && f[1] === NOTICE_WRONG_RELAY).length;
    console.log(`hellos for another relay name: ${FLOOD} from the challenge's source + 100 from another + 1 over TCP, ${stats.dropped['wrong-relay']} refused, ` +
      `${stats.helloVerifications} signatures checked; WRONG_RELAY notices: ${notices} to the challenge's source (budget), ${other.inbox.length} to the other, ` +
      `TCP: ${tcpInbox.filter((f) => f[0] === FRAME_HELLO_ACK).length} acks; acks over UDP: ${raw.inbox.filter((f) => f[0] === FRAME_HELLO_ACK).length}`);
    expect(stats.helloVerifications).toBe(0);
    expect(stats.clients).toBe(0);
    expect(notices).toBeGreaterThan(0);
    expect(notices).toBeLessThanOrEqual(50); // NOTICE_RATE_PER_SOURCE, a second or two of it
    expect(other.inbox.length).toBe(0);
    expect(tcpInbox.some((f) => f[0] === FRAME_HELLO_ACK)).toBe(false);
    expect(raw.inbox.some((f) => f[0] === FRAME_HELLO_ACK)).toBe(false);
  });

  it('an unnamed relay takes the empty name only: an agent dialling it by a name is refused and says what to change, as one dialling a named relay by another name', async () => {
    const { relay: unnamed } = await rig.relay();
    const { relay: named } = await rig.relay({ names: ['r'] });
    const logs = [capturingLog(), capturingLog()];
    const byName = await rig.agent({ udp: `127.0.0.1:${unnamed.udpPort}`, name: 'eu1' }, { log: logs[0] });
    const byOther = await rig.agent({ udp: `127.0.0.1:${named.udpPort}`, name: 'eu2' }, { log: logs[1] });
    const refusal = (l: ReturnType<typeof capturingLog>) => l.lines.find((x) => (x.obj as { event?: string }).event === 'relay-refused');
    await waitFor(() => logs.every(refusal), { timeoutMs: 5000, intervalMs: 20, what: 'both agents refused' });
    for (const l of logs) console.log(`agent log: ${refusal(l)!.msg}`);
    expect(refusal(logs[0])!.msg).toMatch(/refused our hello: it is not named "eu1" .*--name must be the name the registry advertises it under/);
    expect(refusal(logs[1])!.msg).toMatch(/it is not named "eu2"/);
    expect([byName.client.state, byOther.client.state]).not.toContain('udp');
    expect([unnamed.stats().helloVerifications, named.stats().helloVerifications]).toEqual([0, 0]);
    // Dialled without a name, the unnamed relay takes the agent.
    const plain = await rig.agent({ udp: `127.0.0.1:${unnamed.udpPort}` });
    await waitState(plain, 'udp');
  });
});
