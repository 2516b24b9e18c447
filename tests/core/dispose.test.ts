/** Device memory is freed by `using` (Symbol.dispose) without reference counts in user code. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { registerReferenceBackend } from '../../backends/reference/index.ts';
import { add, jit, setDefaultBackend, tensor, type Tensor } from '../../core/index.ts';

registerReferenceBackend();
setDefaultBackend('reference');

test('a disposed result cannot be read, and `using` disposes at the end of its block', async () => {
  const f = jit((x: Tensor) => add(x, 1));
  const y = await f(tensor([1, 2]));
  assert.deepEqual(Array.from(await y.data()), [2, 3]);
  y[Symbol.dispose]();
  await assert.rejects(y.data(), /donated to a jit call or disposed/);
  let escaped: Tensor;
  {
    using z = await f(tensor([5]));
    escaped = z;
    assert.equal(await z.item(), 6);
  }
  await assert.rejects(escaped.data(), /disposed/);
});
