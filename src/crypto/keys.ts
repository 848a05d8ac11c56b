import { AgentVpnError } from '../errors.js';

/** Keys travel as base64 of 32 bytes, exactly like `wg genkey`/`wg pubkey`. */
export function encodeKey(key: Uint8Array): string {
  return Buffer.from(key).toString('base64');
}

export function decodeKey(text: string, what = 'key'): Uint8Array {
  const trimmed = text.trim();
  const bytes = Buffer.from(trimmed, 'base64');
  if (bytes.length !== 32 || bytes.toString('base64') !== trimmed) {
    throw new AgentVpnError(
      'BAD_KEY',
      `${what} is not a valid key: expected 44 characters of base64 encoding 32 bytes`,
      'generate one with `agentvpn genkey` (or `wg genkey`) and derive the public key with `agentvpn pubkey`',
    );
  }
  return new Uint8Array(bytes);
}
