import type { SetRequest } from './protocol.js';
import type { UapiTarget } from './target.js';

function sameKey(a: Uint8Array, b: Uint8Array | null): boolean {
  return b !== null && Buffer.from(a).equals(Buffer.from(b));
}

/**
 * Applies a checked set request with wireguard-go's meaning. The listen port goes first: it is
 * the one change the system can refuse (port taken), and then nothing else has changed yet.
 */
export async function applySet(target: UapiTarget, req: SetRequest): Promise<void> {
  if (req.listenPort !== undefined) await target.setListenPort(req.listenPort);
  if (req.privateKey !== undefined) target.setPrivateKey(req.privateKey);
  if (req.fwmark !== undefined) target.setFwmark(req.fwmark);
  if (req.replacePeers) target.removeAllPeers();
  const own = target.publicKey();
  for (const change of req.peers) {
    if (sameKey(change.publicKey, own)) continue; // a peer section naming ourselves is ignored
    const exists = target.hasPeer(change.publicKey);
    if (change.remove) {
      if (exists) target.removePeer(change.publicKey);
    } else if (exists || !change.updateOnly) {
      target.upsertPeer(change);
    }
  }
}
