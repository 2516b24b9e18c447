/** End to end through core: ops, lazy evaluation on the default backend, jit and donation. */
import assert from 'node:assert/strict';
import { before, test } from 'node:test';
import { getBackend, setDefaultBackend } from '../../../core/backend.ts';
import { jit } from '../../../core/jit.ts';
import { add, matmul, mul, randomBits, sum, tensor, uniformFromBits } from '../../../core/ops.ts';
import type { Tensor } from '../../../core/tensor.ts';
import { randomBitsHost, uniformFromBitsHost } from '../../../core/threefry.ts';
import { referenceBackend, registerReferenceBackend } from '../../../backends/reference/index.ts';

before(() => {
  registerReferenceBackend();
  setDefaultBackend('reference');
});

test('the registry hands out the CPU backend singleton', async () => {
  assert.equal(await getBackend('reference'), referenceBackend());
  assert.equal(referenceBackend().name, 'reference');
  assert.deepEqual(referenceBackend().describe()['dtypes'], ['float32', 'float64', 'int32', 'bool']);
});

test('lazy tensors evaluate on data()', async () => {
  const a = tensor([[1, 2], [3, 4]]);
  const b = tensor([10, 20]);
  assert.deepEqual([...(await add(a, b).data())], [11, 22, 13, 24]);
  assert.equal(await sum(mul(a, a)).item(), 30);
  assert.deepEqual(await matmul(a, a).toArray(), [[7, 10], [15, 22]]);
});

test('jit runs a traced program and caches it per signature', async () => {
  let traces = 0;
  const f = jit((x: Tensor, y: Tensor) => {
    traces++;
    return { prod: matmul(x, y), total: sum(x) };
  });
  const r1 = await f(tensor([[1, 2]]), tensor([[3], [4]]));
  assert.deepEqual([...(await r1.prod.data())], [11]);
  assert.equal(await r1.total.item(), 3);
  const r2 = await f(tensor([[5, 6]]), tensor([[1], [1]]));
  assert.deepEqual([...(await r2.prod.data())], [11]);
  assert.equal(traces, 1);
});

test('jit with donation: a fold keeps working and the old state is unreadable', async () => {
  const step = jit((s: Tensor) => add(s, 1), { donate: [0] });
  const s0 = await jit((s: Tensor) => mul(s, 1))(tensor([1, 2, 3]));
  let s = s0;
  for (let i = 0; i < 3; i++) s = await step(s);
  assert.deepEqual([...(await s.data())], [4, 5, 6]);
  await assert.rejects(s0.data());
});

test('randomBits through the CPU backend equals randomBitsHost', async () => {
  const [k0, k1] = [0x13198a2e, -0x7c5cf72c];
  const key = tensor([k0, k1], [2], 'int32');
  const bits = randomBits(key, [3, 5], 11);
  const expected = randomBitsHost(k0, k1, 15, 11);
  assert.deepEqual(await bits.data(), expected);
  assert.deepEqual(await uniformFromBits(bits).data(), uniformFromBitsHost(expected));
  assert.deepEqual(await randomBits(key, [1]).data(), randomBitsHost(k0, k1, 1, 0));
});
