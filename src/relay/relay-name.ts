import { createHash } from 'node:crypto';
import { AgentVpnError } from '../errors.js';
import { NAME_PATTERN } from '../net/names.js';

/**
 * The relay name a hello is bound to (relay protocol 3). An agent signs, inside its hello, a short
 * hash of the name of the relay it means to dial, as the registry advertises it (the name its
 * record gives as home relay); a relay takes only hellos for one of its own names. So a malicious
 * relay M that an agent dials cannot pass the agent's hello on to another relay R, even with a
 * challenge R made for M: the agent signed "m", not "r".
 *
 *   name hash (RELAY_NAME_HASH_SIZE = 16 bytes)
 *   | SHA-256(NAME_LABEL || name as UTF-8), first 16 bytes |
 *
 * A relay without a name (one-relay networks, registries that advertise relays by address only)
 * has the empty name: it takes hellos for "" only, and agents dialling a relay advertised without
 * a name bind to "". A named relay never takes the empty name (that would let M, advertised
 * without a name, pass hellos on to it).
 */

/** 16 bytes: a second preimage of a 128-bit hash is out of reach; names are public, so no secrecy is asked of it. */
export const RELAY_NAME_HASH_SIZE = 16;
/** Names one relay answers to: a few (advertised by several registries, or being renamed); each costs one 16-byte compare per hello. */
export const MAX_RELAY_NAMES = 8;
const NAME_LABEL = Buffer.from('agentvpn relay name v3\n');

/** The hash of a relay name that hellos carry ("" for a relay without a name). */
export function relayNameHash(name: string): Buffer {
  return createHash('sha256').update(NAME_LABEL).update(name, 'utf8').digest().subarray(0, RELAY_NAME_HASH_SIZE);
}

/** Checks a relay's names as records and the registry's list give them (lowercase letters, digits, '-', up to 63); throws BAD_RELAY_NAME. */
export function validateRelayNames(names: readonly string[]): string[] {
  if (names.length > MAX_RELAY_NAMES) {
    throw new AgentVpnError('BAD_RELAY_NAME', `${names.length} relay names given; at most ${MAX_RELAY_NAMES}`, 'give the name(s) the registry advertises this relay under');
  }
  for (const n of names) {
    if (typeof n !== 'string' || !NAME_PATTERN.test(n)) {
      throw new AgentVpnError('BAD_RELAY_NAME', `invalid relay name "${String(n).slice(0, 80)}"`,
        'relay names are lowercase letters, digits and -, up to 63: the NAME of the registry\'s --relay-peer NAME=udp://… (or its --relay-name)');
    }
  }
  return [...new Set(names)];
}

/** The hashes a relay with these names takes (the empty name's alone when it has none). */
export function acceptedNameHashes(names: readonly string[]): Buffer[] {
  return (names.length ? validateRelayNames(names) : ['']).map(relayNameHash);
}
