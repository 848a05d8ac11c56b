import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { AgentVpnError } from '../errors.js';

/** The crypto addon (binding.gyp target agentvpn_crypto): pure computation, no syscalls. */
export interface CryptoAddon {
  /** Writes BLAKE2s(input), keyed with `key` (empty = unkeyed), into all of `out` (1..32 bytes). */
  blake2s(out: Uint8Array, key: Uint8Array, input: Uint8Array): void;
  /** Seals `count` WireGuard transport messages (native/crypto/aead-batch.c has the layout); returns count. */
  sealBatch(
    src: Uint8Array, srcOffsets: Int32Array, lens: Int32Array, dst: Uint8Array, dstOffsets: Int32Array,
    keys: Uint8Array, keyIndex: Int32Array, receivers: Uint32Array, counters: Float64Array, count: number,
  ): number;
  /** Opens `count` transport messages in place; ok[i] says which authenticated; returns how many did. */
  openBatch(slab: Uint8Array, offsets: Int32Array, lens: Int32Array, keys: Uint8Array, keyIndex: Int32Array, ok: Uint8Array, count: number): number;
}

const ADDON_PATH = fileURLToPath(new URL('../../build/Release/agentvpn_crypto.node', import.meta.url));

function load(): CryptoAddon {
  const hint = 'run npm ci (needs python3, make, g++)';
  if (!existsSync(ADDON_PATH)) throw new AgentVpnError('NATIVE_MISSING', `crypto addon not built: ${ADDON_PATH} is missing`, hint);
  try {
    return createRequire(import.meta.url)(ADDON_PATH) as CryptoAddon;
  } catch (e) {
    throw new AgentVpnError('NATIVE_MISSING', `cannot load crypto addon ${ADDON_PATH}: ${(e as Error).message}`, hint, { cause: e });
  }
}

export const cryptoAddon = load();
