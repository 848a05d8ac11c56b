import type { SetRequest } from './protocol.js';
import type { UapiTarget } from './target.js';

/**
 * Peer sections applied per turn of the event loop. A new peer costs an X25519 (its static-static
 * DH, ~50 us here), so a setconf of 16k peers would hold the packet path for ~1 s in one go;
 * 128 per turn is a few ms at a time.
 */
const PEERS_PER_TURN = 128;

function sameKey(a: Uint8Array, b: Uint8Array | null): boolean {
  return b !== null && Buffer.from(a).equals(Buffer.from(b));
}

/**
 * Applies a checked set request with wireguard-go's meaning. The listen port goes first: it is
 * the one change the system can refuse (port taken), and then nothing else has changed yet.
 * Between turns the device runs with the sections applied so far, as wireguard-go's does line by line.
 */
export async function applySet(target: UapiTarget, req: SetRequest): Promise<void> {
  if (req.listenPort !== undefined) await target.setListenPort(req.listenPort);
  if (req.privateKey !== undefined) target.setPrivateKey(req.privateKey);
  if (req.fwmark !== undefined) target.setFwmark(req.fwmark);
  if (req.replacePeers) target.removeAllPeers();
  const own = target.publicKey();
  for (const [i, change] of req.peers.entries()) {
    if (i > 0 && i % PEERS_PER_TURN === 0) await new Promise((resolve) => setImmediate(resolve));
    if (sameKey(change.publicKey, own)) continue; // a peer section naming ourselves is ignored
    const exists = target.hasPeer(change.publicKey);
    if (change.remove) {
      if (exists) target.removePeer(change.publicKey);
    } else if (exists || !change.updateOnly) {
      target.upsertPeer(change);
    }
  }
}
