import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  abs, add, binary, cast, cos, div, equal, exp, floor, greater, greaterEqual, isFinite, less, lessEqual, log, logicalAnd,
  logicalNot, logicalOr, maximum, minimum, mul, neg, notEqual, pow, reciprocal, rsqrt, sigmoid, sign, sin, sqrt, sub, tanh,
  tensor, uniformFromBits, where,
} from '../../../core/ops.ts';
import { assertClose, values } from './helpers.ts';

const INT_MIN = -2147483648;
const INT_MAX = 2147483647;
const xs = [-2, -0.5, 0, 0.25, 3];
const f32 = (v: number) => Math.fround(v);

test('float unaries are the double function rounded once to float32', async () => {
  const x = tensor(xs);
  const cases: [string, typeof exp, (v: number) => number][] = [
    ['neg', neg, (v) => -v],
    ['exp', exp, (v) => Math.E ** v],
    ['sin', sin, Math.sin],
    ['cos', cos, Math.cos],
    ['tanh', tanh, (v) => (Math.exp(2 * v) - 1) / (Math.exp(2 * v) + 1)],
    ['sigmoid', sigmoid, (v) => 1 / (1 + Math.exp(-v))],
    ['abs', abs, (v) => (v < 0 ? -v : v)],
    ['floor', floor, (v) => v - (((v % 1) + 1) % 1)],
    ['reciprocal', reciprocal, (v) => 1 / v],
  ];
  for (const [name, op, ref] of cases) assertClose(await values(op(x)), xs.map((v) => f32(ref(v))), 1e-7, name);
  const pos = tensor([0.25, 1, 4, 0]);
  assertClose(await values(sqrt(pos)), [0.5, 1, 2, 0], 0, 'sqrt');
  assertClose(await values(rsqrt(pos)), [2, 1, 0.5, Infinity], 0, 'rsqrt');
  assertClose(await values(log(tensor([1, Math.E, 0, -1]))), [0, 1, -Infinity, NaN], 1e-7, 'log');
});

test('float32 nodes round every result; float64 nodes do not', async () => {
  assert.deepEqual(await values(add(tensor([0.1]), tensor([0.2]))), [f32(f32(0.1) + f32(0.2))]);
  assert.deepEqual(await values(add(tensor([0.1], [1], 'float64'), tensor([0.2], [1], 'float64'))), [0.1 + 0.2]);
  assert.deepEqual(await values(div(tensor([1], [1], 'float64'), tensor([3], [1], 'float64'))), [1 / 3]);
  assert.deepEqual(await values(div(tensor([1]), tensor([3]))), [f32(1 / 3)]);
});

test('sigmoid is computed without overflow', async () => {
  assertClose(await values(sigmoid(tensor([-1000, 1000, -100, 100]))), [0, 1, f32(Math.exp(-100)), 1], 0);
  const [tiny] = await values(sigmoid(tensor([-710], [1], 'float64')));
  assert.ok(tiny! > 0 && Math.abs(tiny! - Math.exp(-710)) < 1e-320, `sigmoid(-710) = ${tiny}`);
});

test('sign keeps -0 and NaN; on int32 it is -1, 0, 1', async () => {
  assertClose(await values(sign(tensor([-3, -0, 0, 2, NaN, -Infinity]))), [-1, -0, 0, 1, NaN, -1], 0);
  assert.deepEqual(await values(sign(tensor([-7, 0, 9, INT_MIN], [4], 'int32'))), [-1, 0, 1, -1]);
});

test('max and min propagate NaN', async () => {
  const a = tensor([1, NaN, 3, -0]);
  const b = tensor([NaN, 2, 1, 0]);
  assertClose(await values(maximum(a, b)), [NaN, NaN, 3, 0], 0);
  assertClose(await values(minimum(a, b)), [NaN, NaN, 1, -0], 0);
});

test('pow is Math.pow (int32: cast back with saturation)', async () => {
  assertClose(await values(pow(tensor([2, -8, 0, 4, -2]), tensor([10, 1 / 3, 0, -0.5, 3]))), [1024, NaN, 1, 0.5, -8], 0);
  assert.deepEqual(await values(pow(tensor([3, 2, 2, -2, 0], [5], 'int32'), tensor([4, -1, 40, 31, -1], [5], 'int32'))), [81, 0, INT_MAX, INT_MIN, INT_MAX]);
});

test('int32 arithmetic wraps and division truncates toward zero (x / 0 = x)', async () => {
  const i32 = (v: number[]) => tensor(v, [v.length], 'int32');
  assert.deepEqual(await values(div(i32([7, -7, 7, -7, 5, INT_MIN, 0]), i32([2, 2, -2, -2, 0, -1, 3]))), [3, -3, -3, 3, 5, INT_MIN, 0]);
  assert.deepEqual(await values(add(i32([INT_MAX, INT_MIN]), i32([1, -1]))), [INT_MIN, INT_MAX]);
  assert.deepEqual(await values(sub(i32([INT_MIN]), i32([1]))), [INT_MAX]);
  assert.deepEqual(await values(mul(i32([65536, 65537, -3]), i32([65536, 65537, 5]))), [0, 131073, -15]);
  assert.deepEqual(await values(neg(i32([INT_MIN, 5]))), [INT_MIN, -5]);
  assert.deepEqual(await values(abs(i32([INT_MIN, -5]))), [INT_MIN, 5]);
  assert.deepEqual(await values(maximum(i32([3, -4]), i32([-9, 2]))), [3, 2]);
});

test('comparisons give bool and are false on NaN (ne is true)', async () => {
  const a = tensor([1, 2, 3, NaN]);
  const b = tensor([2, 2, 2, NaN]);
  assert.deepEqual(await values(less(a, b)), [1, 0, 0, 0]);
  assert.deepEqual(await values(lessEqual(a, b)), [1, 1, 0, 0]);
  assert.deepEqual(await values(greater(a, b)), [0, 0, 1, 0]);
  assert.deepEqual(await values(greaterEqual(a, b)), [0, 1, 1, 0]);
  assert.deepEqual(await values(equal(a, b)), [0, 1, 0, 0]);
  assert.deepEqual(await values(notEqual(a, b)), [1, 0, 1, 1]);
  const p = tensor([1, 1, 0, 0], [4], 'bool');
  const q = tensor([1, 0, 1, 0], [4], 'bool');
  assert.deepEqual(await values(logicalAnd(p, q)), [1, 0, 0, 0]);
  assert.deepEqual(await values(logicalOr(p, q)), [1, 1, 1, 0]);
  assert.deepEqual(await values(logicalNot(p)), [0, 0, 1, 1]);
  assert.deepEqual(await values(binary('eq', p, q)), [1, 0, 0, 1]);
});

test('isFinite', async () => {
  assert.deepEqual(await values(isFinite(tensor([1, Infinity, -Infinity, NaN, -0]))), [1, 0, 0, 0, 1]);
});

test('select picks per element', async () => {
  const c = tensor([1, 0, 1], [3], 'bool');
  assert.deepEqual(await values(where(c, tensor([1, 2, 3]), tensor([-1, -2, -3]))), [1, -2, 3]);
  assert.deepEqual(await values(where(c, tensor([1, 2, 3], [3], 'int32'), 0)), [1, 0, 3]);
});

test('cast: float to int truncates and saturates (NaN is 0); to bool is x != 0; bool is 0/1', async () => {
  assert.deepEqual(await values(cast(tensor([1.9, -1.9, NaN, 3e9, -3e9, Infinity, -0.5]), 'int32')), [1, -1, 0, INT_MAX, INT_MIN, INT_MAX, 0]);
  assert.deepEqual(await values(cast(tensor([0, -0, 0.5, NaN, -Infinity]), 'bool')), [0, 0, 1, 1, 1]);
  assert.deepEqual(await values(cast(tensor([0, 3, -1], [3], 'int32'), 'bool')), [0, 1, 1]);
  assert.deepEqual(await values(cast(tensor([1, 0], [2], 'bool'), 'float32')), [1, 0]);
  assert.deepEqual(await values(cast(tensor([1, 0], [2], 'bool'), 'int32')), [1, 0]);
  assert.deepEqual(await values(cast(tensor([16777217, -5], [2], 'int32'), 'float32')), [16777216, -5]);
  assert.deepEqual(await values(cast(tensor([0.1], [1], 'float64'), 'float32')), [f32(0.1)]);
  assert.deepEqual(await values(cast(tensor([0.1]), 'float64')), [f32(0.1)]);
});

test('uniformFromBits maps the top 24 bits to [0, 1)', async () => {
  const bits = tensor([0, -1, 256, -0x80000000], [4], 'int32');
  assert.deepEqual(await values(uniformFromBits(bits)), [0, 1 - 2 ** -24, 2 ** -24, 0.5]);
});
