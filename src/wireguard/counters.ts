/** Why packets were dropped, counted per device and per peer and shown by `agentvpn status`. */
export const DEVICE_DROP_REASONS = [
  'malformed',        // too short, unknown message type, non-zero reserved bytes
  'unknownIndex',     // transport or reply for a session index we do not have
  'badMac1',          // handshake not addressed to our public key
  'cookieSent',       // under load without a valid mac2: answered with a cookie instead
  'rateLimited',      // under load, too many handshakes from one address
  'cookieShed',       // under load without a valid mac2, and the cookie-reply budget was spent
  'handshakeShed',    // the handshake queue was full: dropped before any work
  'unknownPeer',      // handshake from a key that is not one of our peers
  'handshakeInvalid', // failed decryption, replayed or too-frequent initiation, stale response
  'noRoute',          // packet from the TUN to an address no peer is allowed for
  'tunMalformed',     // packet from the TUN that is not IPv4/IPv6
  'sendFailed',       // the UDP socket did not take the packet
  'tunWriteFailed',   // the TUN device did not take the packet
] as const;

export const PEER_DROP_REASONS = [
  'decryptFailed',    // transport message failed authentication
  'replay',           // counter already seen or too old
  'keypairExpired',   // session older than the reject-after time
  'sourceNotAllowed', // decrypted packet's source is outside the peer's allowed IPs
  'innerMalformed',   // decrypted payload is not a valid IP packet
  'stagedOverflow',   // too many packets queued while waiting for a handshake
  'handshakeTimeout', // queued packets dropped when the handshake gave up
  'noEndpoint',       // nowhere to send: the peer has no known endpoint yet
  'policyDenied',     // decrypted packet the policy does not let this peer send us (src/policy/filter.ts)
  'policyRejected',   // packet from the TUN the policy does not let us send this peer (answered with ICMP unreachable)
] as const;

export type DeviceDropReason = (typeof DEVICE_DROP_REASONS)[number];
export type PeerDropReason = (typeof PEER_DROP_REASONS)[number];

export function zeroCounters<K extends string>(keys: readonly K[]): Record<K, number> {
  return Object.fromEntries(keys.map((k) => [k, 0])) as Record<K, number>;
}
