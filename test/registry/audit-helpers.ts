/**
 * An agent's audit log as the tests build it (in memory: entries, tree, checkpoints signed with
 * the agent's key), and the ship bodies it sends, honest or doctored.
 */
import { signCheckpoint } from '../../src/audit/checkpoint.js';
import { agentLogOrigin } from '../../src/audit/origin.js';
import { encodeEntry } from '../../src/audit/entry.js';
import { MerkleTree } from '../../src/audit/merkle.js';
import { randomSeed, signingKeyOf } from '../../src/identity/ed25519.js';
import { Identity } from '../../src/identity/identity.js';
import type { AuditShip } from '../../src/registry/protocol.js';

export const originOf = agentLogOrigin;

export class TestAgentLog {
  readonly seed = randomSeed();
  readonly identity = new Identity(this.seed);
  readonly lines: string[] = [];
  tree = new MerkleTree();
  /** Who signs checkpoints: the agent's key unless a test swaps it. */
  signerKey = signingKeyOf(this.seed);

  get id(): string {
    return this.identity.id;
  }

  /** Appends n entries (of `owner`, default this agent). */
  add(n: number, opts: { owner?: string; type?: string; text?: string } = {}): this {
    for (let i = 0; i < n; i++) {
      const seq = this.lines.length;
      const line = encodeEntry({
        seq, time: new Date(1_800_000_000_000 + seq).toISOString(), agent: opts.owner ?? this.id, type: opts.type ?? 'test.event',
        subject: '', details: { n: seq, text: opts.text ?? 'x' },
      }).toString('utf8');
      this.lines.push(line);
      this.tree.append(Buffer.from(line));
    }
    return this;
  }

  checkpoint(size = this.lines.length): string {
    return signCheckpoint({ origin: originOf(this.id), size, rootHash: this.tree.root(size), extensions: [] }, [{ name: originOf(this.id), key: this.signerKey }]);
  }

  /** The honest ship of entries [from, to). */
  ship(from: number, to = this.lines.length): AuditShip {
    return {
      agent: this.id, from, entries: this.lines.slice(from, to), checkpoint: this.checkpoint(to),
      proof: from > 0 ? this.tree.consistencyProof(from, to).map((h) => h.toString('base64')) : [],
    };
  }

  /** The same identity with its history rewritten from `seq` on (a fork): same key, new entries. */
  forkAt(seq: number, text = 'rewritten'): TestAgentLog {
    const fork = Object.create(TestAgentLog.prototype) as TestAgentLog;
    Object.assign(fork, { seed: this.seed, identity: this.identity, signerKey: this.signerKey, lines: [] as string[], tree: new MerkleTree() });
    for (const line of this.lines.slice(0, seq)) {
      fork.lines.push(line);
      fork.tree.append(Buffer.from(line));
    }
    return fork.add(this.lines.length - seq, { text });
  }
}
