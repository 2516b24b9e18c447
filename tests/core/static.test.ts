/**
 * jit's static arguments (one compilation per distinct static value, cached; plain data by value,
 * other objects by identity; tensors refused) and the error for JS control flow on a traced tensor.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { registerReferenceBackend } from '../../backends/reference/index.ts';
import { grad } from '../../autodiff/index.ts';
import { setDefaultBackend } from '../../core/backend.ts';
import { TreeError } from '../../core/errors.ts';
import { jit } from '../../core/jit.ts';
import { add, greater, mul, sum, tensor, where } from '../../core/ops.ts';
import { TracedValueError, type Tensor } from '../../core/tensor.ts';
import { numRuns } from '../train/fcRuns.ts';

registerReferenceBackend();
setDefaultBackend('reference');

test('staticArgnums: one trace per distinct static value, then cached', async () => {
  await fc.assert(
    fc.asyncProperty(fc.array(fc.integer({ min: -3, max: 3 }), { minLength: 1, maxLength: 8 }), async (powers) => {
      let traces = 0;
      const power = jit(
        (x: Tensor, n: number) => {
          traces++;
          let y = tensor(1);
          for (let i = 0; i < Math.abs(n); i++) y = mul(y, x);
          return n < 0 ? sum(mul(y, -1)) : sum(y);
        },
        { staticArgnums: [1] },
      );
      for (const n of powers) {
        const got = await (await power(tensor(2), n)).item();
        assert.equal(got, (n < 0 ? -1 : 1) * 2 ** Math.abs(n));
      }
      assert.equal(traces, new Set(powers).size);
    }),
    { numRuns },
  );
});

test('staticArgnums: plain records compare by value, functions by identity; tensors are refused', async () => {
  let traces = 0;
  const apply = jit(
    (cfg: { scale: number; act: (t: Tensor) => Tensor }, x: Tensor) => {
      traces++;
      return cfg.act(mul(x, cfg.scale));
    },
    { staticArgnums: [0] },
  );
  const relu = (t: Tensor) => where(greater(t, 0), t, 0);
  const x = tensor([-1, 2]);
  assert.deepEqual(Array.from(await (await apply({ scale: 2, act: relu }, x)).data()), [0, 4]);
  assert.deepEqual(Array.from(await (await apply({ act: relu, scale: 2 }, x)).data()), [0, 4]);
  assert.equal(traces, 1);
  await apply({ scale: 3, act: relu }, x);
  assert.equal(traces, 2);
  await apply({ scale: 3, act: (t: Tensor) => where(greater(t, 0), t, 0) }, x);
  assert.equal(traces, 3);
  await assert.rejects(apply({ scale: 1, act: relu, t: x } as never, x), (e: Error) => e instanceof TreeError && /static argument args\[0\]\.t is a Tensor/.test(e.message));
  const missing = jit((x: Tensor) => x, { staticArgnums: [1] });
  await assert.rejects(missing(x), (e: Error) => e instanceof TreeError && /staticArgnums names argument 1, but the call has 1/.test(e.message));
});

test('a traced tensor used as a JS condition or number throws TracedValueError saying what to do', async () => {
  const branchy = jit((x: Tensor) => ((x as unknown as number) > 0 ? x : add(x, 1)));
  await assert.rejects(branchy(tensor(1)), (e: Error) => e instanceof TracedValueError && /used as a JS number or condition/.test(e.message) && /where\(cond, a, b\)/.test(e.message) && /staticArgnums/.test(e.message));
  assert.throws(() => grad((x: Tensor) => ((x as unknown as number) + 1 === 2 ? sum(x) : sum(mul(x, 2))))(tensor([1])), TracedValueError);
  // Concrete tensors have no synchronous value either; the message points at item().
  assert.throws(() => (tensor(1) as unknown as number) < 2, (e: Error) => e instanceof TracedValueError && /await x\.item\(\)/.test(e.message));
  // Printing is still fine.
  assert.match(`${tensor([1, 2])}`, /Tensor\(const, \[2\], float32\)/);
});

test('jit(f).compile traces and compiles ahead of the first call: nothing runs, nothing is donated, the call does not trace again', async () => {
  let traces = 0;
  const f = jit((x: Tensor, n: number) => {
    traces++;
    return mul(x, n);
  }, { donate: [0], staticArgnums: [1] });
  const x = tensor([1, 2, 3]);
  await f.compile(x, 4);
  assert.equal(traces, 1);
  assert.deepEqual(Array.from(await x.data()), [1, 2, 3], 'compile leaves a donated argument readable');
  assert.deepEqual(Array.from(await (await f(x, 4)).data()), [4, 8, 12]);
  assert.equal(traces, 1, 'the call used the compiled program');
  await f.compile(tensor([1, 2]), 4);
  assert.equal(traces, 2, 'a new shape compiles anew');
});
