/** The orthonormal Haar transform: known values, norms, exact inverse, adjoint, gradients, errors, and the cpu backend. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { registerReferenceBackend } from '../../backends/reference/index.ts';
import { registerCpuBackend } from '../../backends/cpu/index.ts';
import { jit, mul, setDefaultBackend, sum, tensor, type Tensor } from '../../core/index.ts';
import { arbTensor } from '../../autodiff/arbitraries.ts';
import { checkGrad } from '../../autodiff/check.ts';
import { haar2d, haarDecompose, haarReconstruct, inverseHaar2d, type HaarComponents } from '../../models/haar.ts';
import { holds } from '../autodiff/helpers.ts';

registerReferenceBackend();
registerCpuBackend();
setDefaultBackend('reference');

/** An NCHW shape that `levels` levels can halve, with the levels. */
const arbImageCase = fc.record({
  n: fc.integer({ min: 1, max: 2 }),
  c: fc.integer({ min: 1, max: 3 }),
  levels: fc.integer({ min: 0, max: 3 }),
  h: fc.integer({ min: 1, max: 3 }),
  w: fc.integer({ min: 1, max: 3 }),
}).map(({ n, c, levels, h, w }) => ({ shape: [n, c, h * 2 ** levels, w * 2 ** levels], levels }));

const arbImage = (dtype: 'float32' | 'float64') =>
  arbImageCase.chain(({ shape, levels }) => fc.tuple(arbTensor({ shape, dtype }), fc.constant(levels)));

const values = async (t: Tensor) => Array.from(await t.data());
const leaves = (c: HaarComponents): Tensor[] => [...c.details, c.approx];
const dot = async (a: readonly Tensor[], b: readonly Tensor[]) => {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += await sum(mul(a[i]!, b[i]!)).item();
  return s;
};

test('haar2d of one 2x2 block: a = (p+q+r+s)/2, h = (p-q+r-s)/2, v = (p+q-r-s)/2, d = (p-q-r+s)/2', async () => {
  const { approx, detail } = haar2d(tensor([1, 2, 3, 4, 10, 20, 30, 40], [1, 2, 2, 2]));
  assert.deepEqual(approx.shape, [1, 2, 1, 1]);
  assert.deepEqual(detail.shape, [1, 6, 1, 1]);
  assert.deepEqual(await values(approx), [5, 50]);
  assert.deepEqual(await values(detail), [-1, -2, 0, -10, -20, 0]);
});

test('the transform keeps norms and its inverse is exact (float64) over random shapes and levels', () =>
  holds(arbImage('float64'), async (x, levels) => {
    const c = haarDecompose(x, levels);
    assert.equal(c.details.length, levels);
    c.details.forEach((d, l) => assert.deepEqual(d.shape, [x.shape[0], 3 * x.shape[1]!, x.shape[2]! / 2 ** (l + 1), x.shape[3]! / 2 ** (l + 1)]));
    const norm = await sum(mul(x, x)).item();
    const parts = await dot(leaves(c), leaves(c));
    assert.ok(Math.abs(norm - parts) <= 1e-12 * Math.max(1, norm), `|x|^2 ${norm}, sum of |component|^2 ${parts}`);
    const back = await values(haarReconstruct(c));
    (await values(x)).forEach((v, i) => assert.ok(Math.abs(back[i]! - v) <= 1e-14 * Math.max(1, Math.abs(v)), `entry ${i}: ${back[i]} vs ${v}`));
  }));

test('the inverse is the adjoint: <H x, c> = <x, H^T c> for random x and components c', () =>
  holds(arbImage('float64').chain(([x, levels]) => {
    const shapes = leaves(haarDecompose(x, levels)).map((t) => t.shape);
    return fc.tuple(fc.constant(x), fc.constant(levels), fc.tuple(...shapes.map((shape) => arbTensor({ shape, dtype: 'float64' }))));
  }), async (x, levels, cs) => {
    const c: HaarComponents = { details: cs.slice(0, -1), approx: cs[cs.length - 1]! };
    const lhs = await dot(leaves(haarDecompose(x, levels)), cs);
    const rhs = await dot([x], [haarReconstruct(c)]);
    assert.ok(Math.abs(lhs - rhs) <= 1e-12 * Math.max(1, Math.abs(lhs)), `<Hx, c> ${lhs}, <x, H^T c> ${rhs}`);
  }));

test('float32: the round trip is exact to float32 rounding, and the cpu backend agrees with the reference', () =>
  holds(arbImage('float32'), async (x, levels) => {
    const round = haarReconstruct(haarDecompose(x, levels));
    const [xs, back] = [await values(x), await values(round)];
    xs.forEach((v, i) => assert.ok(Math.abs(back[i]! - v) <= 4 * 2 ** -23 * 2 ** levels * Math.max(1, Math.abs(v)), `entry ${i}: ${back[i]} vs ${v}`));
    const split = (x: Tensor) => leaves(haarDecompose(x, levels));
    const onCpu = await jit(split, { backend: 'cpu' })(x);
    const onRef = await jit(split, { backend: 'reference' })(x);
    // Convolutions on cpu accumulate in float32, the reference in float64: equal to a few ulps.
    for (let i = 0; i < onCpu.length; i++) {
      const [a, b] = [await values(onCpu[i]!), await values(onRef[i]!)];
      a.forEach((v, e) => assert.ok(Math.abs(v - b[e]!) <= 1e-6 * Math.max(1, Math.abs(b[e]!)), `component ${i} entry ${e}: cpu ${v}, reference ${b[e]}`));
    }
  }));

test('gradients of the transform and its inverse agree with central differences', () =>
  holds(arbImage('float64').filter(([x]) => x.size <= 64), async (x, levels) => {
    await checkGrad((x: Tensor) => leaves(haarDecompose(x, levels)).map((t, i) => mul(t, i + 1)), [x]);
    if (levels === 0) return;
    const c = haarDecompose(x, levels);
    await checkGrad((d: Tensor, a: Tensor) => haarReconstruct({ details: [...c.details.slice(0, -1), d], approx: a }), [c.details.at(-1)!, c.approx]);
  }));

test('shapes that cannot be halved are named', () => {
  assert.throws(() => haar2d(tensor(new Float32Array(6), [1, 1, 2, 3])), /haar2d: height and width must be even, got \[1,1,2,3\]/);
  assert.throws(() => haarDecompose(tensor(new Float32Array(12), [1, 1, 2, 6]), 2), /haarDecompose: \[1,1,2,6\] cannot be halved 2 times \(level 2 sees \[1,1,1,3\]\)/);
  assert.throws(() => inverseHaar2d({ approx: tensor(new Float32Array(4), [1, 1, 2, 2]), detail: tensor(new Float32Array(8), [1, 2, 2, 2]) }), /detail bands must be \[1,3,2,2\]/);
});
