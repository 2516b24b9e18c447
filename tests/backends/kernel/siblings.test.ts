/**
 * Multi-output fusion in the shared kernel layer (`groupSiblings`), as a plan: which kernels it
 * joins, which it must keep apart, and the invariants any grouped plan keeps on random programs
 * (the values are compared with the reference by the parity suites of both fast backends).
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { buildProgram, type Program } from '../../../core/program.ts';
import { groupSiblings, kernelReads, kernelWrites, planFusion, reductionMembers, type FusionPlan } from '../../../backends/kernel/fusion.ts';
import { RUNS, T, fc } from '../parity/helpers.ts';
import { adamLike, dag, step } from '../parity/graphs.ts';

const placeholder = (i: number, shape: number[]): T.Tensor => new T.Tensor({ op: 'input', index: i }, [], shape, 'float32');

function program(name: string, f: (...xs: T.Tensor[]) => T.Tensor[], shapes: number[][]): Program {
  const ps = shapes.map((s, i) => placeholder(i, s));
  return buildProgram(name, f(...ps), ps).program;
}

const grouped = (p: Program, maxBuffers = 16): FusionPlan => groupSiblings(p, planFusion(p, new Set()), maxBuffers);

test('siblings: an optimizer step over one parameter is one kernel writing its four outputs', () => {
  const p = program('adam', adamLike, [[5, 7], [5, 7], [5, 7], [5, 7], [5, 7], []]);
  assert.equal(planFusion(p, new Set()).kernels.length, 4);
  const plan = grouped(p);
  assert.equal(plan.kernels.length, 1);
  assert.deepEqual(new Set(kernelWrites(plan.kernels[0]!)), new Set(p.outputs));
  // Six inputs read, four outputs written: ten bindings. With eight, the group is cut to fit.
  const tight = grouped(p, 8);
  assert.ok(tight.kernels.length > 1 && tight.kernels.length < 4, `${tight.kernels.length} kernels`);
  for (const k of tight.kernels) assert.ok(kernelReads(p, tight, k).size + kernelWrites(k).length <= 8);
});

test('siblings: a reader of one output that runs before the other keeps them apart; so does a read at another index', () => {
  const between = program('between', (m, g) => {
    const m2 = T.add(T.mul(m, 0.9), g);
    const total = T.sum(m2);
    return [m2, total, T.add(T.tanh(m2), total)];
  }, [[6, 6], [6, 6]]);
  assert.ok(grouped(between).kernels.every((k) => k.siblings === undefined));
  const transposed = program('transposed', (x) => {
    const a = T.tanh(x);
    return [a, T.add(T.transpose(a), a)];
  }, [[6, 6]]);
  assert.ok(grouped(transposed).kernels.every((k) => k.siblings === undefined));
  // Sizes must agree: a row sum's broadcast back is not a sibling.
  const sizes = program('sizes', (x) => {
    const a = T.exp(x);
    return [a, T.mul(T.sum(a, 1, true), 2)];
  }, [[4, 6]]);
  assert.ok(grouped(sizes).kernels.every((k) => k.siblings === undefined));
});

test('siblings: reductions of one structure over a shared input are one kernel; a dependent or differently shaped one is not', () => {
  // A group norm's backward: the group sums of g and of g * x^ (one loop, two accumulators).
  const p = program('moments', (g, x) => [T.sum(g, [1, 2]), T.sum(T.mul(g, x), [1, 2]), T.max(g, [1, 2]), T.sum(g, [0])], [[3, 4, 5], [3, 4, 5]]);
  const plan = grouped(p);
  const reductions = plan.kernels.filter((k) => k.heavy !== undefined);
  // The max (another function) and the sum over axis 0 (another structure) stay apart.
  assert.equal(reductions.length, 3);
  const joint = reductions.find((k) => k.siblings !== undefined)!;
  assert.deepEqual(new Set(kernelWrites(joint)), new Set(p.outputs.slice(0, 2)));
  assert.deepEqual(reductionMembers(joint).map((m) => p.nodes[m.heavy]!.prim.op), ['reduce', 'reduce']);
  // A sum of the input centred by the first sum reads it: the two stay two kernels.
  const chained = program('chained', (x) => {
    const s = T.sum(x, 1, true);
    return [s, T.sum(T.mul(x, T.sub(x, s)), 1, true)];
  }, [[4, 6]]);
  assert.ok(grouped(chained).kernels.every((k) => k.siblings === undefined));
  // Sums that share no input are not joined (nothing read once instead of twice).
  const apart = program('apart', (a, b) => [T.sum(a, 1), T.sum(b, 1)], [[4, 6], [4, 6]]);
  assert.ok(grouped(apart).kernels.every((k) => k.siblings === undefined));
});

test('siblings: on random programs every grouped plan writes each node once, before its readers, within the binding limit', () => {
  fc.assert(
    fc.property(
      fc.array(step, { minLength: 1, maxLength: 16 }),
      fc.integer({ min: 1, max: 6 }),
      fc.integer({ min: 1, max: 3 }),
      fc.array(fc.nat(), { minLength: 1, maxLength: 5 }),
      fc.integer({ min: 3, max: 12 }),
      (steps, n, inputs, outs, maxBuffers) => {
        const p = program('dag', dag(steps, n, outs.map((o) => o % steps.length)), Array.from({ length: inputs }, () => [n, n]));
        const base = planFusion(p, new Set());
        const plan = groupSiblings(p, base, maxBuffers);
        const writtenAt = new Map<number, number>();
        plan.kernels.forEach((k, t) => kernelWrites(k).forEach((w) => {
          assert.ok(!writtenAt.has(w), `node ${w} written twice`);
          writtenAt.set(w, t);
        }));
        // The same nodes are written as without grouping.
        assert.deepEqual([...writtenAt.keys()].sort((a, b) => a - b), base.kernels.map((k) => k.root).sort((a, b) => a - b));
        const size = (m: number) => T.sizeOf(p.nodes[m]!.shape);
        plan.kernels.forEach((k, t) => {
          const reads = kernelReads(p, plan, k);
          for (const r of reads.keys()) {
            if (p.nodes[r]!.prim.op !== 'input') assert.ok(writtenAt.get(r)! < t, `kernel ${t} reads node ${r} before it is written`);
          }
          if (k.siblings === undefined) return;
          assert.ok(reads.size + kernelWrites(k).length <= maxBuffers, `kernel ${t} binds ${reads.size + kernelWrites(k).length} > ${maxBuffers}`);
          for (const s of k.siblings) assert.equal(size(s), size(k.root));
          if (k.heavy === undefined) return;
          // A multi-output reduction: reductions of one structure, none reading another's output.
          const members = reductionMembers(k);
          const key = (h: number) => {
            const nd = p.nodes[h]!;
            assert.equal(nd.prim.op, 'reduce');
            return JSON.stringify([nd.prim, nd.dtype, p.nodes[nd.inputs[0]!]!.shape]);
          };
          for (const m of members) assert.equal(key(m.heavy), key(members[0]!.heavy));
          for (const w of kernelWrites(k)) assert.ok(!reads.has(w));
        });
      },
    ),
    { numRuns: RUNS * 10 },
  );
});
