import assert from 'node:assert/strict';
import { test } from 'node:test';
import { broadcastTo, concat, gather, iota, max, pad, permute, reshape, scalar, slice, sum, tensor } from '../../../core/ops.ts';
import { sizeOf, stridesOf } from '../../../core/shape.ts';
import { values } from './helpers.ts';

const range = (n: number) => Array.from({ length: n }, (_, i) => i);
const arangeT = (shape: number[]) => tensor(range(sizeOf(shape)), shape);

/** The multi-index of flat position i in a row-major shape. */
function unravel(i: number, shape: readonly number[]): number[] {
  return shape.map((_, d) => Math.floor(i / stridesOf(shape)[d]!) % shape[d]!);
}
const ravel = (idx: readonly number[], shape: readonly number[]) => idx.reduce((acc, v, d) => acc + v * stridesOf(shape)[d]!, 0);

test('literal and reshape', async () => {
  assert.deepEqual(await values(scalar(2.5)), [2.5]);
  assert.deepEqual(await values(reshape(arangeT([2, 3]), [3, 2])), [0, 1, 2, 3, 4, 5]);
});

test('permute: out axis d is input axis perm[d]', async () => {
  const shape = [2, 3, 4];
  const perm = [2, 0, 1];
  const outShape = perm.map((p) => shape[p]!);
  const expected = range(24).map((i) => {
    const o = unravel(i, outShape);
    const inIdx = [0, 0, 0];
    perm.forEach((p, d) => (inIdx[p] = o[d]!));
    return ravel(inIdx, shape);
  });
  assert.deepEqual(await values(permute(arangeT(shape), perm)), expected);
  assert.deepEqual(await values(permute(arangeT([2, 3]), [1, 0])), [0, 3, 1, 4, 2, 5]);
});

test('broadcast right-aligns and repeats size-1 axes', async () => {
  assert.deepEqual(await values(broadcastTo(tensor([[1], [2], [3]]), [2, 3, 2])), [1, 1, 2, 2, 3, 3, 1, 1, 2, 2, 3, 3]);
  assert.deepEqual(await values(broadcastTo(tensor([1, 2]), [2, 2])), [1, 2, 1, 2]);
  assert.deepEqual(await values(broadcastTo(scalar(7, 'int32'), [3])), [7, 7, 7]);
});

test('slice with starts and strides', async () => {
  // [4,5] -> rows 1..3 step 2, cols 0..5 step 3
  assert.deepEqual(await values(slice(arangeT([4, 5]), [1, 0], [4, 5], [2, 3])), [5, 8, 15, 18]);
  assert.deepEqual(await values(slice(arangeT([6]), [2], [5])), [2, 3, 4]);
});

test('pad with lo, hi, interior and a value', async () => {
  assert.deepEqual(await values(pad(tensor([1, 2, 3]), [1], [2], 9, [1])), [9, 1, 9, 2, 9, 3, 9, 9]);
  assert.deepEqual(await values(pad(tensor([[1, 2], [3, 4]]), [0, 1], [1, 0], 0, [1, 0])), [
    0, 1, 2,
    0, 0, 0,
    0, 3, 4,
    0, 0, 0,
  ]);
  assert.deepEqual(await values(pad(tensor([5], [1], 'int32'), [2], [0], -1, [3])), [-1, -1, 5]);
});

test('concat along an inner axis', async () => {
  const a = tensor([[1, 2], [3, 4]]);
  const b = tensor([[5], [6]]);
  assert.deepEqual(await values(concat([a, b, a], 1)), [1, 2, 5, 1, 2, 3, 4, 6, 3, 4]);
  assert.deepEqual(await values(concat([a, tensor([[7, 8]])], 0)), [1, 2, 3, 4, 7, 8]);
});

test('gather clamps indices and places index dims at the axis', async () => {
  const x = tensor([[0, 1], [2, 3], [4, 5]]);
  const idx = tensor([2, -1, 5, 0], [4], 'int32');
  assert.deepEqual(await values(gather(x, idx, 0)), [4, 5, 0, 1, 4, 5, 0, 1]);
  // axis 1 with [2,2] indices: out[i, a, b] = x[i, clamp(idx[a, b])]
  const idx2 = tensor([[1, 0], [7, -3]], [2, 2], 'int32');
  assert.deepEqual(await values(gather(x, idx2, 1)), [1, 0, 1, 0, 3, 2, 3, 2, 5, 4, 5, 4]);
});

test('iota is the index along an axis, in the node dtype', async () => {
  assert.deepEqual(await values(iota([2, 3], 1)), [0, 1, 2, 0, 1, 2]);
  assert.deepEqual(await values(iota([2, 3], 0, 'float32')), [0, 0, 0, 1, 1, 1]);
  assert.deepEqual(await values(iota([3], 0, 'bool')), [0, 1, 1]);
});

test('sum over axes matches a direct sum; int32 sums wrap', async () => {
  const shape = [2, 3, 4];
  const x = arangeT(shape);
  const expected = [0, 0, 0];
  range(24).forEach((i) => (expected[unravel(i, shape)[1]!]! += i));
  assert.deepEqual(await values(sum(x, [0, 2])), expected);
  assert.deepEqual(await values(sum(x)), [276]);
  assert.deepEqual(await values(sum(x, 2)), [6, 22, 38, 54, 70, 86]);
  assert.deepEqual(await values(sum(tensor([2147483647, 1, 5], [3], 'int32'))), [-2147483643]);
});

test('float32 sums accumulate in double and round once', async () => {
  const big = [2 ** 24, 1, 1, 1, 1];
  assert.deepEqual(await values(sum(tensor(big))), [2 ** 24 + 4]);
});

test('max over axes propagates NaN', async () => {
  assert.deepEqual(await values(max(tensor([[1, 5, 3], [-2, -7, -1]]), 1)), [5, -1]);
  assert.deepEqual(await values(max(tensor([[1, 5, 3], [-2, -7, -1]]), 0)), [1, 5, 3]);
  const m = await values(max(tensor([[1, NaN, 3], [NaN, 9, 0]]), 1));
  assert.ok(Number.isNaN(m[0]) && Number.isNaN(m[1]));
  assert.deepEqual(await values(max(tensor([4, -9, 12], [3], 'int32'))), [12]);
});
