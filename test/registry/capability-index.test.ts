import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { parseCapability } from '../../src/net/capabilities.js';
import { CapabilityIndex, IdSet } from '../../src/registry/capability-index.js';

const ID = fc.constantFrom('a', 'b', 'c', 'd', 'e', 'f', 'g', 'h');
/** add, delete, or ask for the order: every interleaving must give exactly the live IDs, sorted. */
const OP = fc.oneof(
  fc.record({ op: fc.constant('add' as const), id: ID }),
  fc.record({ op: fc.constant('delete' as const), id: ID }),
  fc.record({ op: fc.constant('sorted' as const) }),
);

describe('IdSet', () => {
  it('gives its IDs in ascending order, each once, for any mix of adds, deletes and reads', () => {
    fc.assert(fc.property(fc.array(OP, { maxLength: 60 }), (ops) => {
      const set = new IdSet();
      const model = new Set<string>();
      for (const o of ops) {
        if (o.op === 'add') {
          set.add(o.id);
          model.add(o.id);
        } else if (o.op === 'delete') {
          set.delete(o.id);
          model.delete(o.id);
        } else {
          expect(set.sorted()).toEqual([...model].sort());
        }
        expect(set.size).toBe(model.size);
      }
      expect(set.sorted()).toEqual([...model].sort());
    }));
  });

  it('never changes an order it returned', () => {
    const set = new IdSet();
    for (const id of ['c', 'a']) set.add(id);
    const first = set.sorted();
    set.add('b');
    set.delete('a');
    expect(first).toEqual(['a', 'c']);
    expect(set.sorted()).toEqual(['b', 'c']);
    expect(set.sorted()).toBe(set.sorted()); // unchanged since: the same array, not re-merged
  });

  it('keeps its memory bounded when one ID is deleted and added again without a read', () => {
    const set = new IdSet();
    set.add('other');
    for (let i = 0; i < 10_000; i++) {
      set.add('churner');
      set.delete('churner');
    }
    set.add('churner');
    const unmerged = (set as unknown as { added: string[] }).added.length;
    expect(unmerged).toBeLessThanOrEqual(1025);
    expect(set.sorted()).toEqual(['churner', 'other']);
  });

  it('orders many IDs added in random order', () => {
    const set = new IdSet();
    const ids = Array.from({ length: 3000 }, (_, i) => `id-${(i * 7919) % 3000}`);
    ids.slice(0, 1500).forEach((id) => set.add(id));
    expect(set.sorted()).toEqual(ids.slice(0, 1500).sort());
    ids.slice(1500).forEach((id) => set.add(id));
    for (let i = 0; i < 3000; i += 3) set.delete(ids[i]);
    expect(set.sorted()).toEqual(ids.filter((_, i) => i % 3 !== 0).sort());
  });
});

describe('CapabilityIndex', () => {
  const caps = (...texts: string[]) => texts.map(parseCapability);
  const ids = (index: CapabilityIndex, query: string) => index.candidates(parseCapability(query))?.ids.sorted() ?? null;

  it('files an agent under each key of its capabilities and moves it when they change', () => {
    const index = new CapabilityIndex();
    index.replace('x', [], caps('llm.inference@1;model=m1', 'llm.inference@2', 'svc'));
    index.replace('y', [], caps('llm.inference@1;model=m2'));
    expect(ids(index, 'llm.inference')).toEqual(['x', 'y']);
    expect(ids(index, 'llm.inference@2')).toEqual(['x']);
    expect(ids(index, 'llm.inference;model=m2')).toEqual(['y']);
    index.replace('x', caps('llm.inference@1;model=m1', 'llm.inference@2', 'svc'), caps('svc'));
    expect(ids(index, 'llm.inference')).toEqual(['y']);
    expect(ids(index, 'llm.inference@2')).toBeNull(); // emptied keys are dropped
    expect(ids(index, 'svc')).toEqual(['x']);
    index.replace('y', caps('llm.inference@1;model=m2'), []);
    expect(ids(index, 'llm.inference')).toBeNull();
  });

  it('answers from the rarer key exactly when a query names one part beside the name, and otherwise asks for checks', () => {
    const index = new CapabilityIndex();
    index.replace('x', [], caps('llm.inference@1;model=m1;gpu=a100'));
    index.replace('y', [], caps('llm.inference@1'));
    expect(index.candidates(parseCapability('llm.inference;model=m1'))?.exact).toBe(true);
    expect(index.candidates(parseCapability('llm.inference@1;model=m1'))?.exact).toBe(false);
  });
});
