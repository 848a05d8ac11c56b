/**
 * Debian trixie's wireguard-go (0.0.20231211) and nebula (1.9.3), unpacked by
 * scripts/fetch-trixie.sh into .cache/trixie (never installed): the references the flood and
 * throughput benchmarks compare against.
 */
import { join } from 'node:path';
import { REPO_ROOT } from './agentvpn.js';
import { runCommand } from './proc.js';

export interface TrixieBinaries {
  wireguardGo: string;
  nebula: string;
  nebulaCert: string;
}

/** Runs scripts/fetch-trixie.sh (a no-op once the binaries are there) and returns their paths. */
export async function fetchTrixieBinaries(): Promise<TrixieBinaries> {
  const r = await runCommand(['bash', join(REPO_ROOT, 'scripts', 'fetch-trixie.sh')], { timeoutMs: 300_000 });
  const paths = Object.fromEntries(r.stdout.split('\n').map((l) => l.split('=')).filter((kv) => kv.length === 2));
  if (r.code !== 0 || !paths.WIREGUARD_GO || !paths.NEBULA || !paths.NEBULA_CERT) {
    throw new Error(`scripts/fetch-trixie.sh failed (code ${r.code}): ${r.stderr.trim().slice(-1000)}`);
  }
  return { wireguardGo: paths.WIREGUARD_GO, nebula: paths.NEBULA, nebulaCert: paths.NEBULA_CERT };
}
