import assert from 'node:assert/strict';
import { test } from 'node:test';
import { BackendError } from '../../../core/errors.ts';
import {
  add, broadcastTo, cast, concat, conv2d, conv2dGradInput, conv2dGradWeight, exp, gather, iota, matmul, max, pad, permute,
  randomBits, reshape, slice, sum, tensor, where, zeros,
} from '../../../core/ops.ts';
import { buildProgram } from '../../../core/program.ts';
import { Tensor } from '../../../core/tensor.ts';
import { ReferenceBuffer, referenceBackend } from '../../../backends/reference/index.ts';
import { evalCpu, values } from './helpers.ts';

const be = referenceBackend();
const param = (index: number, shape: number[]) => new Tensor({ op: 'input', index }, [], shape, 'float32');

/** Compiles f over float32 parameters of the given shapes. */
function compile(shapes: number[][], f: (...xs: Tensor[]) => Tensor[]) {
  const params = shapes.map((s, i) => param(i, s));
  return be.compile(buildProgram('contract', f(...params), params).program);
}

const upload = (v: number[]) => be.upload(new Float32Array(v), [v.length], 'float32');

test('outputs that are inputs, or repeat, come back in fresh buffers; inputs stay intact', async () => {
  const exe = compile([[3]], (x) => [x, reshape(x, [1, 3]), x, add(x, 1), add(x, 1)]);
  const input = upload([1, 2, 3]);
  const outs = be.run(exe, [input], [false]);
  assert.equal(new Set([input, ...outs]).size, 6, 'every buffer distinct');
  assert.deepEqual(await Promise.all(outs.map(async (o) => [...(await be.download(o))])), [[1, 2, 3], [1, 2, 3], [1, 2, 3], [2, 3, 4], [2, 3, 4]]);
  be.free(outs[0]!);
  be.free(outs[3]!);
  assert.deepEqual([...(await be.download(input))], [1, 2, 3]);
  assert.deepEqual([...(await be.download(outs[4]!))], [2, 3, 4]);
});

test('a donated input whose array is an output is returned as that output, once', async () => {
  const exe = compile([[2, 2]], (x) => [reshape(x, [4]), x]);
  const input = upload([1, 2, 3, 4]);
  const [a, b] = be.run(exe, [input], [true]);
  assert.equal(a, input);
  assert.notEqual(b, input);
  assert.deepEqual([...(await be.download(b!))], [1, 2, 3, 4]);
});

test('a donated input not returned is freed; a non-donated one is not', async () => {
  const exe = compile([[2], [2]], (x, y) => [add(x, y)]);
  const x = upload([1, 2]);
  const y = upload([10, 20]);
  const [out] = be.run(exe, [x, y], [true, false]);
  assert.notEqual(out, x);
  assert.deepEqual([...(await be.download(out!))], [11, 22]);
  assert.ok((x as ReferenceBuffer).isFreed);
  await assert.rejects(be.download(x), BackendError);
  assert.deepEqual([...(await be.download(y))], [10, 20]);
});

test('a buffer passed twice is not treated as donated', async () => {
  const exe = compile([[2], [2]], (x, y) => [x, add(x, y)]);
  const x = upload([1, 2]);
  const outs = be.run(exe, [x, x], [true, false]);
  assert.ok(!outs.includes(x));
  assert.deepEqual([...(await be.download(x))], [1, 2]);
  assert.deepEqual([...(await be.download(outs[1]!))], [2, 4]);
});

test('upload copies, download copies, and misuse is a BackendError', async () => {
  const data = new Float32Array([1, 2]);
  const buf = be.upload(data, [2], 'float32');
  data[0] = 99;
  const read = await be.download(buf);
  read[1] = 99;
  assert.deepEqual([...(await be.download(buf))], [1, 2]);
  assert.throws(() => be.upload(new Float32Array(3), [2], 'float32'), BackendError);
  assert.throws(() => be.upload(new Int32Array(2), [2], 'float32'), BackendError);
  const exe = compile([[2]], (x) => [exp(x)]);
  assert.throws(() => be.run(exe, [], []), BackendError);
  assert.throws(() => be.run(exe, [be.upload(new Int32Array(2), [2], 'int32')], [false]), BackendError);
  be.free(buf);
  await assert.rejects(be.download(buf), BackendError);
});

test('zero-size tensors flow through every primitive', async () => {
  const empty = (shape: number[]) => zeros(shape);
  const k = tensor([1, 2], [2], 'int32');
  const cases: [Tensor, number[]][] = [
    [exp(empty([0, 3])), []],
    [add(empty([2, 0]), empty([2, 0])), []],
    [where(cast(empty([0]), 'bool'), empty([0]), empty([0])), []],
    [sum(empty([2, 0, 3]), 1), [0, 0, 0, 0, 0, 0]],
    [sum(empty([0])), [0]],
    [sum(empty([0, 3]), 1), []],
    [max(empty([0, 3]), 1), []],
    [permute(empty([0, 2]), [1, 0]), []],
    [broadcastTo(empty([1, 0]), [3, 0]), []],
    [slice(tensor([1, 2, 3]), [1], [1]), []],
    [pad(tensor([], [0]), [1], [1], 5), [5, 5]],
    [pad(empty([0, 2]), [0, 1], [0, 0], 5, [0, 2]), []],
    [concat([tensor([], [0, 2]), tensor([[1, 2]])], 0), [1, 2]],
    [gather(tensor([1, 2, 3]), tensor([], [0], 'int32')), []],
    [gather(empty([0, 3]), tensor([1], [1], 'int32'), 1), []],
    [matmul(empty([0, 3]), empty([3, 2])), []],
    [matmul(empty([2, 3]), empty([3, 0])), []],
    [conv2d(empty([0, 2, 3, 3]), empty([4, 2, 3, 3])), []],
    [conv2d(empty([1, 0, 3, 3]), empty([2, 0, 3, 3])), [0, 0]],
    [conv2dGradInput(empty([0, 4, 1, 1]), empty([4, 2, 3, 3]), [0, 2, 3, 3]), []],
    [conv2dGradWeight(empty([0, 2, 3, 3]), empty([0, 4, 1, 1]), [4, 2, 3, 3]), new Array<number>(72).fill(0)],
    [iota([0, 4], 1), []],
    [randomBits(k, [0]), []],
    [cast(empty([0]), 'int32'), []],
  ];
  for (const [i, [t, expected]] of cases.entries()) assert.deepEqual(await values(t), expected, `case ${i}: ${t.toString()}`);
  assert.equal((await evalCpu(reshape(empty([0, 3]), [3, 0])))[0]!.length, 0);
});
