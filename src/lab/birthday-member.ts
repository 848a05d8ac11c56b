/**
 * A malicious member for the birthday-probing tests: it joins a lab registry with a record whose
 * only endpoint is a victim's address, connects to the network's relay, and keeps asking one
 * member (by name) to take birthday probing's easy role for that victim address, as a member
 * hoping to turn the fleet into a port sprayer would. Built from the project's own codecs.
 *
 *   node dist/lab/birthday-member.js REGISTRY_URL TOKEN NETWORK NAME TARGET_NAME VICTIM_IP:PORT DURATION_MS STATUS_FILE
 *
 * It writes {"ipv4": ...} to STATUS_FILE once it has joined and published (the test then makes the
 * target send it traffic), and on stdout a JSON line with the requests it sent when done.
 */
import dgram from 'node:dgram';
import { writeFileSync } from 'node:fs';
import { Identity } from '../identity/identity.js';
import { parseAddress } from '../ip/prefix.js';
import { endpointPort, makeEndpoint, sameEndpoint } from '../net/endpoint.js';
import { DiscoCodec } from '../paths/disco.js';
import { RelayClient } from '../relay/client.js';
import { parseHostPort } from '../relay/protocol.js';
import { RegistryClient } from '../registry/client.js';
import { RECORD_LIFETIME_MS, signRecord } from '../registry/record.js';

/** How often it asks (a real member's requests also pass the target's disco budgets: this stays within them). */
const REQUEST_INTERVAL_MS = 500;
/** Heartbeats keep it online (the lab registry marks members offline after 15 s of silence). */
const HEARTBEAT_INTERVAL_MS = 3_000;

async function main(): Promise<void> {
  const [url, token, network, name, targetName, victimText, durationText, statusFile] = process.argv.slice(2);
  const victim = parseHostPort(victimText, 'victim');
  const victimEp = makeEndpoint(parseAddress(victim.host)!, victim.port);
  const identity = Identity.generate();
  const registry = new RegistryClient({ url, identity, network });
  const join = await registry.join(name, token);
  const relayInfo = join.relays?.[0];
  if (!relayInfo) throw new Error('the registry advertises no relay');
  const now = Date.now();
  await registry.publish(signRecord(identity, {
    v: 1, network: join.network, id: identity.id, name, wgPublicKey: Buffer.from(identity.wgPublicKey).toString('base64'),
    ipv4: join.ipv4, ipv6: join.ipv6, endpoints: [victimText], capabilities: [], seq: now, issuedAt: now, expiresAt: now + RECORD_LIFETIME_MS,
    ...(relayInfo.name ? { homeRelay: relayInfo.name } : {}),
  }), identity.chain);
  const heartbeat = setInterval(() => void registry.heartbeat().catch(() => {}), HEARTBEAT_INTERVAL_MS);

  const socket = dgram.createSocket('udp4');
  await new Promise<void>((resolve) => socket.bind(0, () => resolve()));
  const relay = new RelayClient({
    relay: relayInfo, identity,
    sendUdp: (buf, ep) => socket.send(buf, endpointPort(ep), `${ep[12]}.${ep[13]}.${ep[14]}.${ep[15]}`),
    onPacket: () => {}, // the target's handshakes: never answered
  });
  socket.on('message', (msg, rinfo) => {
    if (sameEndpoint(makeEndpoint(parseAddress(rinfo.address)!, rinfo.port), 0, relay.endpoint, 0)) relay.handleDatagram(msg, 0, msg.length);
  });
  relay.start();

  const target = await registry.get(targetName);
  const targetKey = Buffer.from(target.record.wgPublicKey, 'base64');
  const codec = new DiscoCodec(identity.wgPrivateKey, identity.wgPublicKey);
  writeFileSync(statusFile, JSON.stringify({ ipv4: join.ipv4 }));

  let sent = 0;
  const until = Date.now() + Number(durationText);
  while (Date.now() < until) {
    const msg = codec.seal(targetKey, { type: 'birthday', answer: false, publicEndpoint: victimEp });
    if (msg && relay.send(targetKey, msg)) sent++;
    await new Promise((r) => setTimeout(r, REQUEST_INTERVAL_MS));
  }
  clearInterval(heartbeat);
  relay.stop();
  socket.close();
  console.log(JSON.stringify({ requests: sent, relay: relay.name }));
}

main().then(() => process.exit(0), (err) => {
  console.error(err);
  process.exit(1);
});
