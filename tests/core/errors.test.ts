/** The public API names the culprit: op and shapes, dtypes, tree paths, non-tensor inputs. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  add, concat, conv2d, DTypeError, flatten, gather, jit, matmul, reshape, ShapeError, slice, sum, tensor, treeMap, TreeError,
  unflatten, where, zeros, max, leafPaths, random, broadcastTo, pad, permute,
} from '../../core/index.ts';
import { registerReferenceBackend } from '../../backends/reference/index.ts';

registerReferenceBackend();

test('matmul names both shapes when inner dimensions differ', () => {
  assert.throws(() => matmul(zeros([2, 3]), zeros([4, 5])), (e: unknown) => e instanceof ShapeError && e.message === 'matmul: inner dimensions differ: [2,3] x [4,5]');
});

test('broadcasting errors name the op, both shapes and the axis', () => {
  assert.throws(() => add(zeros([2, 3]), zeros([4])), /add: shapes cannot be broadcast: \[2,3\] and \[4\] \(axis -1: 3 vs 4\)/);
  assert.throws(() => broadcastTo(zeros([3]), [2, 4]), /broadcastTo: \[3\] cannot be broadcast to \[2,4\]/);
});

test('shape errors of movement ops', () => {
  assert.throws(() => reshape(zeros([2, 3]), [4, 2]), /reshape: \[2,3\] \(6 elements\) cannot become \[4,2\] \(8 elements\)/);
  assert.throws(() => reshape(zeros([2, 3]), [-1, -1]), /more than one -1/);
  assert.throws(() => slice(zeros([4]), [2], [5]), /slice: range \[2, 5\) on axis 0 is outside \[4\]/);
  assert.throws(() => slice(zeros([4]), [0], [4], [0]), /stride 0 on axis 0/);
  assert.throws(() => pad(zeros([4]), [-1], [0]), /pad: amounts must be integers >= 0/);
  assert.throws(() => permute(zeros([2, 3]), [0, 0]), ShapeError);
  assert.throws(() => concat([zeros([2, 3]), zeros([3, 3])], 1), /concat: shapes differ off axis 1: \[2,3\], \[3,3\]/);
  assert.throws(() => sum(zeros([2]), 3), /sum: axis 3 is out of range for rank 1/);
  assert.throws(() => max(zeros([2, 0]), 1), /max: reduction over an empty axis of \[2,0\]/);
});

test('conv2d names shapes and attributes', () => {
  assert.throws(() => conv2d(zeros([1, 3, 8, 8]), zeros([4, 2, 3, 3])), /conv2d: weight \[4,2,3,3\] expects 2 input channels, x \[1,3,8,8\] has 3/);
  assert.throws(() => conv2d(zeros([1, 4, 8, 8]), zeros([6, 2, 3, 3]), { groups: 4 }), /not divisible by groups 4/);
  assert.throws(() => conv2d(zeros([1, 3, 2, 2]), zeros([4, 3, 3, 3])), /does not fit input/);
  assert.throws(() => conv2d(zeros([1, 3, 8, 8]), zeros([4, 3, 3, 3]), { stride: 0 }), /stride must be integers >= 1/);
  assert.throws(() => conv2d(zeros([3, 8, 8]), zeros([4, 3, 3, 3])), /expects x \[N,C,H,W\]/);
});

test('dtype errors name both dtypes', () => {
  const i = tensor([1, 2], [2], 'int32');
  assert.throws(() => add(zeros([2]), i), (e: unknown) => e instanceof DTypeError && /add: dtypes differ: float32 \[2\] and int32 \[2\]/.test(e.message));
  assert.throws(() => where(zeros([2]), 1, 2), /where: condition must be bool, got float32/);
  assert.throws(() => gather(zeros([3]), zeros([2])), /gather: indices must be int32, got float32/);
  assert.throws(() => matmul(tensor([[1]], [1, 1], 'int32'), tensor([[1]], [1, 1], 'int32')), DTypeError);
});

test('non-tensor inputs are named', () => {
  assert.throws(() => add([1, 2] as never, zeros([2])), (e: unknown) => e instanceof TreeError && /add: argument 0 is not a Tensor \(got Array\)/.test(e.message));
  assert.throws(() => matmul(zeros([2, 2]), 'x' as never), /matmul: argument 1 is not a Tensor \(got string\)/);
  assert.throws(() => add(1, 2), /both arguments are numbers/);
  assert.throws(() => tensor([1, 2], [3]), /tensor: 2 values do not fill shape \[3\]/);
  assert.throws(() => random.normal(zeros([2]), [3]), /normal: a key is an int32 tensor of shape \[2\]/);
});

test('mismatched pytrees name the path', () => {
  assert.throws(() => treeMap((a: number, b: number) => a + b, { a: 1, b: [1, 2] }, { a: 1, b: [1] }), /at b: 2 vs 1 children/);
  assert.throws(() => treeMap((a: number, b: number) => a + b, { a: 1 }, { c: 1 }), /keys \{a\} vs \{c\}/);
});

test('jit rejects non-tensor leaves by path, and returned non-tensors', async () => {
  const f = jit((p: { w: unknown }) => p.w as never);
  await assert.rejects(f({ w: () => 1 }), /argument args\[0\]\.w is function/);
  const g = jit((x: never) => ({ out: x, bad: new Map() }) as never);
  await assert.rejects(g(zeros([1]) as never), /output result\.bad is object/);
});

test('pytrees flatten in sorted key order and round-trip', () => {
  const tree = { b: [1, { z: 2, y: 3 }], a: 4 };
  const { leaves, def } = flatten<number>(tree);
  assert.deepEqual(leaves, [4, 1, 3, 2]);
  assert.deepEqual(leafPaths(def), ['a', 'b[0]', 'b[1].y', 'b[1].z']);
  assert.deepEqual(unflatten(def, leaves), { a: 4, b: [1, { y: 3, z: 2 }] });
  assert.throws(() => unflatten(def, [1, 2]), /tree has more leaves/);
});
