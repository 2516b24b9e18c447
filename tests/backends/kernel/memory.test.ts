/**
 * The shared liveness memory plan (`backends/kernel/memory.ts`): slots shared by tensors whose
 * lifetimes are disjoint, sized once by their largest tensor.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { assignSlots, planMemory, type Lifetime } from '../../../backends/kernel/memory.ts';
import { kernelReads, planFusion } from '../../../backends/kernel/fusion.ts';
import { buildProgram } from '../../../core/program.ts';
import { sizeOf } from '../../../core/shape.ts';
import { RUNS, T, fc } from '../parity/helpers.ts';

/** The most bytes live at once: a lower bound for any plan. */
function peakLive(lives: readonly Lifetime[]): number {
  const last = Math.max(0, ...lives.map((l) => l.end));
  let peak = 0;
  for (let t = 0; t <= last; t++) peak = Math.max(peak, lives.reduce((s, l) => s + (l.start <= t && t <= l.end ? l.bytes : 0), 0));
  return peak;
}

/** Every slot's tensors are pairwise disjoint in time and no larger than the slot, which is as large as its largest. */
function checkValid(lives: readonly Lifetime[], slotOf: ReadonlyMap<number, number>, slotBytes: readonly number[]): void {
  assert.equal(slotOf.size, lives.length);
  const bySlot = new Map<number, Lifetime[]>();
  for (const l of lives) {
    const s = slotOf.get(l.node)!;
    assert.ok(s >= 0 && s < slotBytes.length, `node ${l.node} in slot ${s}`);
    bySlot.set(s, [...(bySlot.get(s) ?? []), l]);
  }
  slotBytes.forEach((bytes, s) => {
    const ls = (bySlot.get(s) ?? []).sort((a, b) => a.start - b.start);
    assert.ok(ls.length > 0, `slot ${s} holds nothing`);
    assert.equal(bytes, Math.max(...ls.map((l) => l.bytes)), `slot ${s} is sized by its largest tensor`);
    for (let i = 1; i < ls.length; i++) assert.ok(ls[i - 1]!.end < ls[i]!.start, `slot ${s}: nodes ${ls[i - 1]!.node} and ${ls[i]!.node} live at once`);
  });
}

const lifetimes = (sizes: fc.Arbitrary<number>) =>
  fc.array(fc.tuple(fc.integer({ min: 0, max: 40 }), fc.integer({ min: 0, max: 12 }), sizes), { minLength: 1, maxLength: 60 })
    .map((xs) => xs.map(([start, length, bytes], node): Lifetime => ({ node, bytes, start, end: start + length })));

test('memory: tensors share a slot only when their lifetimes are disjoint, and a slot is its largest tensor\'s size', () => {
  fc.assert(fc.property(lifetimes(fc.integer({ min: 1, max: 1000 })), (lives) => {
    const { slotOf, slotBytes } = assignSlots(lives);
    checkValid(lives, slotOf, slotBytes);
    assert.ok(slotBytes.reduce((a, b) => a + b, 0) >= peakLive(lives));
  }), { numRuns: RUNS * 5 });
});

test('memory: tensors of one size need exactly as many slots as are live at the peak', () => {
  // Intervals taken in order of start, each given any slot free over it: optimal for an interval graph.
  fc.assert(fc.property(lifetimes(fc.constant(256)), (lives) => {
    const { slotBytes } = assignSlots(lives);
    assert.equal(slotBytes.reduce((a, b) => a + b, 0), peakLive(lives));
  }), { numRuns: RUNS * 5 });
});

test('memory: a slot is not grown for a large tensor and then left holding small ones', () => {
  // In kernel order: a (small) dies, then b (large) takes and grows a's slot, and c (small) a new
  // slot beside it: 1,000 + 10 bytes. The largest first: b, then a and c share one small slot.
  const lives: Lifetime[] = [
    { node: 0, bytes: 10, start: 0, end: 1 },
    { node: 1, bytes: 1000, start: 2, end: 5 },
    { node: 2, bytes: 10, start: 3, end: 4 },
    { node: 3, bytes: 10, start: 6, end: 7 },
  ];
  const { slotOf, slotBytes } = assignSlots(lives);
  checkValid(lives, slotOf, slotBytes);
  assert.deepEqual(slotBytes, [1000, 10]);
});

test('memory: on random fused programs no kernel writes into a slot it reads', () => {
  const steps = fc.array(fc.tuple(fc.nat(3), fc.nat(), fc.nat(), fc.boolean()), { minLength: 2, maxLength: 30 });
  fc.assert(fc.property(steps, (ops) => {
    const ps = [0, 1].map((i) => new T.Tensor({ op: 'input', index: i }, [], [3, 4], 'float32'));
    // A random DAG over [3, 4] values: contractions (GEMM kernels), a row sum broadcast back (a
    // reduction) and elementwise steps, each reading earlier values; some are outputs.
    const xs: T.Tensor[] = [...ps];
    const outs: T.Tensor[] = [];
    for (const [op, i, j, output] of ops) {
      const [a, b] = [xs[i % xs.length]!, xs[j % xs.length]!];
      const x = [() => T.tanh(a), () => T.add(a, b), () => T.matmul(T.tanh(T.matmul(a, T.transpose(b))), a), () => T.add(T.sum(T.mul(a, b), -1, true), b)][op]!();
      xs.push(x);
      if (output) outs.push(x);
    }
    const p = buildProgram('random', [...outs, xs.at(-1)!], ps).program;
    const plan = planFusion(p, new Set());
    const kernels = plan.kernels.map((k) => ({ reads: [...kernelReads(p, plan, k).keys()], writes: k.root }));
    const mem = planMemory(p, kernels, (nd) => 4 * sizeOf(nd.shape));
    kernels.forEach((k, t) => {
      const slot = mem.slotOf.get(k.writes);
      if (slot === undefined) return;
      for (const rd of k.reads) assert.notEqual(mem.slotOf.get(rd), slot, `kernel ${t} writes node ${k.writes} into the slot of node ${rd}, which it reads`);
    });
  }), { numRuns: RUNS * 2 });
});
