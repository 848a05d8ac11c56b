/** WireGuard keys for lab peers, made by wireguard-tools (`wg genkey`, `wg pubkey`, `wg genpsk`). */
import { runCommand } from './proc.js';

export interface WgKeyPair {
  /** base64 Curve25519 private key */
  privateKey: string;
  /** base64 public key */
  publicKey: string;
}

export async function wgGenKey(): Promise<string> {
  return (await runCommand(['wg', 'genkey'], { check: true })).stdout.trim();
}

export async function wgPubKey(privateKey: string): Promise<string> {
  return (await runCommand(['wg', 'pubkey'], { input: `${privateKey}\n`, check: true })).stdout.trim();
}

export async function wgGenPsk(): Promise<string> {
  return (await runCommand(['wg', 'genpsk'], { check: true })).stdout.trim();
}

export async function wgKeyPair(): Promise<WgKeyPair> {
  const privateKey = await wgGenKey();
  return { privateKey, publicKey: await wgPubKey(privateKey) };
}
