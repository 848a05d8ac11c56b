import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  MAX_NOTE_BYTES,
  MAX_SIGNATURES,
  formatCheckpoint,
  keyIdOf,
  openCheckpoint,
  parseCheckpoint,
  parseNote,
  signCheckpoint,
  signNote,
  verifyNote,
  type Checkpoint,
} from '../../src/audit/checkpoint.js';
import { EMPTY_ROOT, MerkleTree } from '../../src/audit/merkle.js';
import { AgentVpnError } from '../../src/errors.js';
import { publicKeyOfSeed, randomSeed, signingKeyOf } from '../../src/identity/ed25519.js';
import { errorCodeOf } from '../fixtures/error-code.js';

function keypair(name: string) {
  const seed = randomSeed();
  return { signer: { name, key: signingKeyOf(seed) }, verifier: { name, publicKey: publicKeyOfSeed(seed) } };
}

const codeOf = errorCodeOf;

const agent = keypair('agent.example/a1');
const registry = keypair('registry.example/witness');
const tree = new MerkleTree();
for (let i = 0; i < 10; i++) tree.append(Buffer.from(`entry ${i}`));
const cp: Checkpoint = { origin: 'agent.example/a1', size: 10, rootHash: tree.root(), extensions: [] };

// Published example of the Go note package (golang.org/x/mod/sumdb/note): verifier key
// "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW" and a note it signed.
const PETER = { name: 'PeterNeumann', publicKey: Buffer.from('ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW', 'base64').subarray(1) };
const PETER_NOTE =
  "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n\n" +
  '— PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n';

describe('signed notes: known answers', () => {
  it('computes the published key ID and verifies the published note', () => {
    expect(keyIdOf(PETER.name, PETER.publicKey).toString('hex')).toBe('c74f20a3');
    const note = verifyNote(PETER_NOTE, [PETER]);
    expect(note.verifiedBy).toEqual(['PeterNeumann']);
    expect(note.text.startsWith('If you think')).toBe(true);
    expect(codeOf(() => verifyNote(PETER_NOTE.replace('answer', 'Answer'), [PETER]))).toBe('AUDIT_NOTE_BAD_SIGNATURE');
  });

  it('writes the checkpoint body exactly as the spec shows it', () => {
    const body = formatCheckpoint({ origin: 'example.com/behind-the-sofa', size: 20852163, rootHash: Buffer.from('CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=', 'base64'), extensions: [] });
    expect(body).toBe('example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n');
  });

  it('a signature line is the em dash, the name and base64(key ID || 64-byte signature)', () => {
    const note = signCheckpoint(cp, [agent.signer]);
    const line = note.split('\n').at(-2)!;
    const [dash, name, b64] = line.split(' ');
    expect(dash).toBe('\u2014');
    expect(name).toBe(agent.signer.name);
    const bytes = Buffer.from(b64!, 'base64');
    expect(bytes.length).toBe(68);
    expect(bytes.subarray(0, 4)).toEqual(keyIdOf(agent.signer.name, agent.verifier.publicKey));
    expect(agent.signer.key.publicKey).toEqual(Buffer.from(agent.verifier.publicKey));
  });
});

describe('checkpoints: round trips and verification', () => {
  it('signs and opens a checkpoint, with extensions, and the empty tree', () => {
    for (const c of [cp, { ...cp, extensions: ['ext one', 'two'] }, { origin: 'o', size: 0, rootHash: EMPTY_ROOT, extensions: [] }]) {
      const opened = openCheckpoint(signCheckpoint(c, [agent.signer]), [agent.verifier]);
      expect({ ...opened, rootHash: Buffer.from(opened.rootHash) }).toEqual({ ...c, rootHash: Buffer.from(c.rootHash), verifiedBy: [agent.signer.name] });
    }
  });

  it('accepts bytes as well as text', () => {
    expect(openCheckpoint(Buffer.from(signCheckpoint(cp, [agent.signer])), [agent.verifier]).size).toBe(10);
    expect(codeOf(() => parseNote(Buffer.from([0x61, 0x0a, 0x0a, 0xff, 0x0a])))).toBe('AUDIT_NOTE_MALFORMED');
  });

  it('cosigned: both trusted keys count, an unknown signature is ignored', () => {
    const stranger = keypair('stranger.example/x');
    const note = signCheckpoint(cp, [agent.signer, registry.signer, stranger.signer]);
    expect(openCheckpoint(note, [agent.verifier, registry.verifier]).verifiedBy).toEqual([agent.signer.name, registry.signer.name]);
    expect(openCheckpoint(note, [registry.verifier]).verifiedBy).toEqual([registry.signer.name]);
  });

  it('refuses an altered body, an untrusted or impostor key, and a bad known signature', () => {
    const note = signCheckpoint(cp, [agent.signer]);
    expect(codeOf(() => openCheckpoint(note.replace('\n10\n', '\n11\n'), [agent.verifier]))).toBe('AUDIT_NOTE_BAD_SIGNATURE');
    expect(codeOf(() => openCheckpoint(note, [registry.verifier]))).toBe('AUDIT_NOTE_UNVERIFIED');
    // Same name, another key: the key ID differs, so the signature is someone else's and is ignored.
    const impostor = keypair(agent.signer.name);
    expect(codeOf(() => openCheckpoint(signCheckpoint(cp, [impostor.signer]), [agent.verifier]))).toBe('AUDIT_NOTE_UNVERIFIED');
    // A re-signed rewritten history is caught by the Merkle layer, not here: it verifies as a note.
    expect(openCheckpoint(signCheckpoint({ ...cp, rootHash: EMPTY_ROOT }, [agent.signer]), [agent.verifier]).size).toBe(10);
    // A truncated signature from the known key.
    const [text, sig] = [note.slice(0, note.lastIndexOf('\u2014')), note.split(' ').at(-1)!.trim()];
    const short = Buffer.from(sig, 'base64').subarray(0, 40).toString('base64');
    expect(codeOf(() => openCheckpoint(`${text}\u2014 ${agent.signer.name} ${short}\n`, [agent.verifier]))).toBe('AUDIT_NOTE_BAD_SIGNATURE');
  });

  it('refuses to write what it could not read back', () => {
    const bad: Checkpoint[] = [
      { ...cp, origin: '' },
      { ...cp, origin: 'a\nb' },
      { ...cp, size: -1 },
      { ...cp, size: 1.5 },
      { ...cp, size: 2 ** 60 },
      { ...cp, rootHash: new Uint8Array(31) },
      { ...cp, extensions: [''] },
      { ...cp, extensions: ['x\ny'] },
      { ...cp, origin: 'tab\there' },
    ];
    for (const c of bad) expect(codeOf(() => signCheckpoint(c, [agent.signer])), JSON.stringify(c.origin)).toBe('INTERNAL');
    expect(codeOf(() => signNote('no final newline', [agent.signer]))).toBe('INTERNAL');
    expect(codeOf(() => signNote('x\n', []))).toBe('INTERNAL');
    expect(codeOf(() => signNote('x\n', [{ ...agent.signer, name: 'has space' }]))).toBe('INTERNAL');
    expect(codeOf(() => signNote('x\n', [{ ...agent.signer, name: 'a+b' }]))).toBe('INTERNAL');
  });
});

describe('signed notes: strict parsing', () => {
  const good = signCheckpoint(cp, [agent.signer]);
  const sigLine = good.slice(good.lastIndexOf('\u2014'));
  const body = good.slice(0, good.lastIndexOf('\u2014') - 1);

  it.each([
    ['no final newline', good.slice(0, -1)],
    ['no separating empty line', body.slice(0, -1) + sigLine],
    ['no signature', body + '\n'],
    ['a carriage return', good.replace('\n10\n', '\r\n10\n')],
    ['a NUL', good.replace('agent', 'ag\u0000ent')],
    ['a lone surrogate', good.replace('agent', 'ag\ud800ent')],
    ['a hyphen for the dash', body + sigLine.replace('\u2014', '-')],
    ['two spaces', body + sigLine.replace(' ', '  ')],
    ['a name with a plus', body + sigLine.replace('agent.example', 'agent+example')],
    ['a name with a no-break space', body + sigLine.replace('agent.example', 'agent\u00a0example')],
    ['unpadded base64', body + sigLine.replace(/=*\n$/, '\n')],
    ['base64url', body + sigLine.replace(/[+/]/g, '_').replace(/^(\u2014 \S+ )/, '$1_')],
    ['a key ID only', `${body}\u2014 ${agent.signer.name} AAAAAA==\n`],
    ['a trailing empty line', good + '\n'],
    ['a name too long', `${body}\u2014 ${'n'.repeat(129)} ${sigLine.split(' ')[2]}`],
  ])('refuses a note with %s', (_, note) => {
    expect(codeOf(() => parseNote(note))).toBe('AUDIT_NOTE_MALFORMED');
  });

  it.each([
    ['a leading zero in the size', 'o\n010\n' + EMPTY_ROOT.toString('base64') + '\n'],
    ['a negative size', 'o\n-1\n' + EMPTY_ROOT.toString('base64') + '\n'],
    ['a size past 2^53', 'o\n9007199254740993\n' + EMPTY_ROOT.toString('base64') + '\n'],
    ['a 31-byte root', 'o\n1\n' + EMPTY_ROOT.subarray(1).toString('base64') + '\n'],
    ['a hex root', 'o\n1\n' + EMPTY_ROOT.toString('hex') + '\n'],
    ['two lines', 'o\n1\n'],
    ['an empty origin', '\n1\n' + EMPTY_ROOT.toString('base64') + '\n'],
    ['an empty extension line', 'o\n1\n' + EMPTY_ROOT.toString('base64') + '\n\next\n'],
    ['no final newline', 'o\n1\n' + EMPTY_ROOT.toString('base64')],
  ])('refuses a checkpoint with %s', (_, text) => {
    expect(codeOf(() => parseCheckpoint(text))).toBe('AUDIT_CHECKPOINT_MALFORMED');
  });

  it(`caps a note at ${MAX_NOTE_BYTES} bytes and ${MAX_SIGNATURES} signatures`, () => {
    const signers = Array.from({ length: MAX_SIGNATURES }, (_, i) => keypair(`witness${i}.example`).signer);
    const full = signCheckpoint(cp, signers);
    expect(parseNote(full).signatures.length).toBe(MAX_SIGNATURES);
    const one = signCheckpoint(cp, [agent.signer]);
    expect(codeOf(() => parseNote(full + one.slice(one.lastIndexOf('\u2014'))))).toBe('AUDIT_NOTE_MALFORMED');
    const huge = `${'x'.repeat(MAX_NOTE_BYTES)}\n\n${sigLine}`;
    expect(codeOf(() => parseNote(huge))).toBe('AUDIT_NOTE_TOO_LARGE');
    expect(codeOf(() => parseNote(Buffer.from(huge)))).toBe('AUDIT_NOTE_TOO_LARGE');
    expect(codeOf(() => parseCheckpoint(huge))).toBe('AUDIT_CHECKPOINT_MALFORMED');
    // Multi-byte characters count as their UTF-8 bytes.
    expect(codeOf(() => parseNote(`${'é'.repeat(MAX_NOTE_BYTES / 2)}\n\n${sigLine}`))).toBe('AUDIT_NOTE_TOO_LARGE');
  });

  it('every refusal carries a hint', () => {
    const refused = ['nonsense', 'text\n\nno dash line\n', `${'x'.repeat(MAX_NOTE_BYTES + 1)}`, 'no final newline'];
    for (const input of refused) {
      let err: unknown = null;
      try {
        parseNote(input);
      } catch (e) {
        err = e;
      }
      expect(err, JSON.stringify(input.slice(0, 30))).toBeInstanceOf(AgentVpnError);
      expect((err as AgentVpnError).hint.length).toBeGreaterThan(10);
    }
  });
});

describe('signed notes: properties', () => {
  const good = signCheckpoint(cp, [agent.signer, registry.signer]);
  const onlyAgentVpnErrors = (f: () => unknown) => {
    try {
      f();
    } catch (e) {
      if (!(e instanceof AgentVpnError)) throw e;
    }
  };

  it('parsing arbitrary text or bytes throws nothing but AgentVpnError', () => {
    fc.assert(
      fc.property(fc.oneof(fc.string({ unit: 'binary', maxLength: 300 }), fc.uint8Array({ maxLength: 300 })), (input) => {
        onlyAgentVpnErrors(() => parseNote(input));
        onlyAgentVpnErrors(() => verifyNote(input, [agent.verifier]));
        if (typeof input === 'string') onlyAgentVpnErrors(() => parseCheckpoint(input));
      }),
      { numRuns: 3000 },
    );
  });

  it('an edited signed checkpoint is refused with an AgentVpnError or opens to the same checkpoint', () => {
    const chars = fc.constantFrom('\n', '\u2014', ' ', '+', '=', 'A', '0', '1', '/', '\r', 'é');
    fc.assert(
      fc.property(fc.nat({ max: good.length }), fc.nat({ max: 3 }), fc.array(chars, { maxLength: 3 }), (at, del, ins) => {
        const edited = good.slice(0, at) + ins.join('') + good.slice(at + del);
        try {
          const opened = openCheckpoint(edited, [agent.verifier, registry.verifier]);
          expect(formatCheckpoint(opened)).toBe(formatCheckpoint(cp));
        } catch (e) {
          if (!(e instanceof AgentVpnError)) throw e;
        }
      }),
      { numRuns: 3000 },
    );
  });

  it('any valid checkpoint round-trips through sign and open', () => {
    const line = fc.string({ minLength: 1, maxLength: 40 }).filter((s) => !/[\u0000-\u001f]/.test(s));
    fc.assert(
      fc.property(line, fc.nat({ max: Number.MAX_SAFE_INTEGER }), fc.uint8Array({ minLength: 32, maxLength: 32 }), fc.array(line, { maxLength: 4 }), (origin, size, root, extensions) => {
        const c = { origin, size, rootHash: root, extensions };
        const opened = openCheckpoint(signCheckpoint(c, [agent.signer]), [agent.verifier]);
        expect([opened.origin, opened.size, Buffer.from(opened.rootHash).toString('hex'), opened.extensions]).toEqual([origin, size, Buffer.from(root).toString('hex'), extensions]);
      }),
      { numRuns: 500 },
    );
  });
});
