import { createHash } from 'node:crypto';
import { ed25519 } from '@noble/curves/ed25519.js';
import { describe, expect, it } from 'vitest';
import { MAX_SIGNATURES, keyIdOf, openCheckpoint, parseNote, signCheckpoint, verifyNote } from '../../src/audit/checkpoint.js';
import { cosign, cosignerKeyIdOf, openCosigned } from '../../src/audit/cosignature.js';
import { MerkleTree } from '../../src/audit/merkle.js';
import { publicKeyOfSeed, randomSeed, signingKeyOf } from '../../src/identity/ed25519.js';
import { errorCodeOf } from '../fixtures/error-code.js';

function keypair(name: string) {
  const seed = randomSeed();
  return { seed, signer: { name, key: signingKeyOf(seed) }, verifier: { name, publicKey: publicKeyOfSeed(seed) } };
}

const ORIGIN = 'agentvpn.audit/agent-a1';
const WITNESS = 'agentvpn.witness/registry/0a1b2c3d';
const agent = keypair(ORIGIN);
const witness = keypair(WITNESS);
const tree = new MerkleTree();
for (let i = 0; i < 7; i++) tree.append(Buffer.from(`entry ${i}`));
const note = signCheckpoint({ origin: ORIGIN, size: 7, rootHash: tree.root(), extensions: [] }, [agent.signer]);
const TIME = 1_796_206_830;
const cosigned = cosign(note, witness.signer, TIME);

/** The cosignature line's parts: key ID (4), timestamp (8), signature (64). */
function cosignatureOf(n: string) {
  const line = n.split('\n').at(-2)!;
  const [dash, name, b64] = line.split(' ');
  const bytes = Buffer.from(b64!, 'base64');
  return { dash, name, keyId: bytes.subarray(0, 4), timestamp: bytes.subarray(4, 12), signature: bytes.subarray(12), bytes, line };
}
const replaceLine = (n: string, line: string, bytes: Buffer) => n.replace(line, `${line.slice(0, line.lastIndexOf(' '))} ${bytes.toString('base64')}`);
const codeOf = (fn: () => unknown) => errorCodeOf(fn);

describe('tlog-cosignature v1', () => {
  it('round trips: the witness line opens with its time and the checkpoint', () => {
    const cp = openCosigned(cosigned, witness.verifier);
    expect(cp).toMatchObject({ origin: ORIGIN, size: 7, cosignedAt: TIME });
    expect(Buffer.from(cp.rootHash).equals(tree.root())).toBe(true);
    expect(cosigned.startsWith(note)).toBe(true);
  });

  it('the line is "— name base64(key ID || u64 BE time || 64-byte signature)" and an independent Ed25519 verifies it', () => {
    const c = cosignatureOf(cosigned);
    expect(c.dash).toBe('\u2014');
    expect(c.name).toBe(WITNESS);
    expect(c.bytes.length).toBe(4 + 8 + 64);
    expect(c.timestamp.readBigUInt64BE(0)).toBe(BigInt(TIME));
    // The spec's signed message, rebuilt here from its text, checked with @noble/curves (not node:crypto).
    const message = Buffer.from(`cosignature/v1\ntime ${TIME}\n${parseNote(note).text}`, 'utf8');
    expect(ed25519.verify(c.signature, message, witness.verifier.publicKey)).toBe(true);
  });

  it('the key ID uses signature type 0x04, not the note key ID type 0x01', () => {
    const expected = createHash('sha256').update(WITNESS).update(Buffer.from([0x0a, 0x04])).update(witness.verifier.publicKey).digest().subarray(0, 4);
    const id = cosignerKeyIdOf(WITNESS, witness.verifier.publicKey);
    expect(id.toString('hex')).toBe(expected.toString('hex'));
    expect(id.equals(keyIdOf(WITNESS, witness.verifier.publicKey))).toBe(false);
    expect(cosignatureOf(cosigned).keyId.equals(id)).toBe(true);
  });

  it("the agent's signature still verifies on the cosigned note, and the cosignature is not mistaken for a note signature", () => {
    expect(openCheckpoint(cosigned, [agent.verifier])).toMatchObject({ size: 7, verifiedBy: [ORIGIN] });
    // A verifier that (wrongly) treats the witness key as a note key does not match the 0x04 key ID: ignored.
    expect(codeOf(() => verifyNote(cosigned, [witness.verifier]))).toBe('AUDIT_NOTE_UNVERIFIED');
  });

  it('refuses a changed checkpoint body (size, root, origin)', () => {
    const body = parseNote(cosigned).text;
    const [origin, size, root] = body.split('\n');
    const other = new MerkleTree();
    for (let i = 0; i < 7; i++) other.append(Buffer.from(`forged ${i}`));
    for (const changed of [
      cosigned.replace(`\n${size}\n`, '\n8\n'),
      cosigned.replace(root!, other.root().toString('base64')),
      cosigned.replace(origin!, 'agentvpn.audit/agent-zz'),
    ]) {
      expect(changed).not.toBe(cosigned);
      expect(codeOf(() => openCosigned(changed, witness.verifier))).toBe('AUDIT_NOTE_BAD_SIGNATURE');
    }
  });

  it('refuses a changed timestamp', () => {
    const c = cosignatureOf(cosigned);
    for (const time of [TIME + 1, TIME - 3600, 0]) {
      const bytes = Buffer.from(c.bytes);
      bytes.writeBigUInt64BE(BigInt(time), 4);
      expect(codeOf(() => openCosigned(replaceLine(cosigned, c.line, bytes), witness.verifier))).toBe('AUDIT_NOTE_BAD_SIGNATURE');
    }
    const huge = Buffer.from(c.bytes);
    huge.writeBigUInt64BE(2n ** 63n, 4);
    expect(codeOf(() => openCosigned(replaceLine(cosigned, c.line, huge), witness.verifier))).toBe('AUDIT_NOTE_BAD_SIGNATURE');
  });

  it('refuses a cosignature by another key under the witness name, and a forged line with the right key ID', () => {
    const impostor = keypair(WITNESS);
    const byImpostor = cosign(note, impostor.signer, TIME);
    expect(codeOf(() => openCosigned(byImpostor, witness.verifier))).toBe('AUDIT_NOT_COSIGNED');
    // The impostor's signature under the real witness's key ID: found, and it does not verify.
    const c = cosignatureOf(byImpostor);
    const bytes = Buffer.concat([cosignerKeyIdOf(WITNESS, witness.verifier.publicKey), c.bytes.subarray(4)]);
    expect(codeOf(() => openCosigned(replaceLine(byImpostor, c.line, bytes), witness.verifier))).toBe('AUDIT_NOTE_BAD_SIGNATURE');
    // A witness of another name with the same key is another witness.
    expect(codeOf(() => openCosigned(cosigned, { name: 'agentvpn.witness/other/0a1b2c3d', publicKey: witness.verifier.publicKey }))).toBe('AUDIT_NOT_COSIGNED');
  });

  it('refuses a missing line, and a line of the wrong length', () => {
    expect(codeOf(() => openCosigned(note, witness.verifier))).toBe('AUDIT_NOT_COSIGNED');
    const c = cosignatureOf(cosigned);
    expect(codeOf(() => openCosigned(replaceLine(cosigned, c.line, c.bytes.subarray(0, 4 + 8 + 63)), witness.verifier))).toBe('AUDIT_NOTE_BAD_SIGNATURE');
    expect(codeOf(() => openCosigned(replaceLine(cosigned, c.line, c.bytes.subarray(0, 4 + 8)), witness.verifier))).toBe('AUDIT_NOTE_BAD_SIGNATURE');
  });

  it('a second cosignature (a later time, another witness) leaves both verifiable', () => {
    const other = keypair('agentvpn.witness/backup/99887766');
    const twice = cosign(cosign(note, witness.signer, TIME), other.signer, TIME + 10);
    expect(openCosigned(twice, witness.verifier).cosignedAt).toBe(TIME);
    expect(openCosigned(twice, other.verifier).cosignedAt).toBe(TIME + 10);
    expect(openCheckpoint(twice, [agent.verifier]).size).toBe(7);
  });

  it('cosign refuses a bad time and a note that is not a checkpoint', () => {
    expect(codeOf(() => cosign(note, witness.signer, -1))).toBe('INTERNAL');
    expect(codeOf(() => cosign(note, witness.signer, 1.5))).toBe('INTERNAL');
    expect(codeOf(() => cosign('not a note\n', witness.signer, TIME))).toBe('AUDIT_NOTE_MALFORMED');
  });

  it('cosign never writes a note it could not read back (a bad cosigner name, a note full of signatures)', () => {
    for (const name of ['agentvpn.witness/a b', 'agentvpn.witness/a+b', `agentvpn.witness/${'x'.repeat(200)}`]) {
      expect(codeOf(() => cosign(note, { name, key: witness.signer.key }, TIME)), name.slice(0, 40)).toBe('INTERNAL');
    }
    let full = note;
    for (let i = 1; i < MAX_SIGNATURES; i++) full = cosign(full, keypair(`agentvpn.witness/w${i}/00000000`).signer, TIME);
    expect(parseNote(full).signatures.length).toBe(MAX_SIGNATURES);
    expect(codeOf(() => cosign(full, witness.signer, TIME))).toBe('AUDIT_NOTE_MALFORMED');
  });
});
