/** The gradient checker and the arbitraries exported for users' property tests. */
import { registerReferenceBackend } from '../../backends/reference/index.ts';
import { setDefaultBackend } from '../../core/backend.ts';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { checkGrad, GradCheckError } from '../../autodiff/check.ts';
import { arbBroadcastPair, arbConvCase, arbShape, arbTensor } from '../../autodiff/arbitraries.ts';
import { DTypeError } from '../../core/errors.ts';
import { add, conv2d, floor, mul, sin, sum, tensor, zeros } from '../../core/ops.ts';
import { broadcastShapes } from '../../core/shape.ts';
import type { Tensor } from '../../core/tensor.ts';
import { holds, runs } from './helpers.ts';

registerReferenceBackend();
setDefaultBackend('reference');

test('checkGrad passes a correct gradient, entry by entry and along random directions', async () => {
  const small = await checkGrad((p: { w: Tensor }) => sum(sin(p.w)), [{ w: tensor([0.1, 0.2, 0.3]) }]);
  assert.equal(small.checked, 3);
  assert.deepEqual(small.worst?.at.length, 1);
  const large = await checkGrad((x: Tensor) => mul(sin(x), x), [tensor(Array.from({ length: 100 }, (_, i) => i / 50))], { directions: 3 });
  assert.equal(large.checked, 3);
  assert.match(String(large.worst?.at), /^direction \d$/);
});

test('checkGrad names the leaf path, index and both values of the worst mismatch', async () => {
  // floor jumps at 3x = 1, where central differences see a spike and the gradient is 0.
  const f = function stepped(x: Tensor, p: { w: Tensor }) {
    return add(sum(x), sum(floor(mul(p.w, 3))));
  };
  await assert.rejects(checkGrad(f, [tensor([1, 2]), { w: tensor([[0.5, 1 / 3]]) }]), (e: Error) => {
    assert.ok(e instanceof GradCheckError);
    assert.match(e.message, /stepped/);
    assert.match(e.message, /inputs\[1\]\.w at index \[0,1\]: analytic 0, numeric /);
    assert.deepEqual(e.result.worst?.at, [0, 1]);
    return true;
  });
});

test('checkGrad rejects a function that is not dtype-generic', async () => {
  const c = tensor([1, 2]);
  await assert.rejects(checkGrad((x: Tensor) => add(zeros([2]), mul(c, 2)), [tensor([1, 2])]), (e: Error) => e instanceof DTypeError && /float32 \[2\] at result/.test(e.message));
});

test('arbShape respects its bounds', () =>
  fc.assert(
    fc.property(arbShape({ minRank: 1, maxRank: 3, minDim: 0, maxDim: 2 }), (s) => s.length >= 1 && s.length <= 3 && s.every((d) => d >= 0 && d <= 2)),
    { numRuns: runs * 10 },
  ));

test('arbBroadcastPair shapes broadcast together', () =>
  fc.assert(fc.property(arbBroadcastPair(), ([a, b]) => void broadcastShapes('test', a, b)), { numRuns: runs * 10 }));

test('arbConvCase gives convolutions that build, with the shape of their output', () =>
  holds(arbConvCase().chain((c) => fc.tuple(fc.constant(c))), async ({ xShape, wShape, yShape, attrs }) => {
    const y = conv2d(zeros(xShape), zeros(wShape), attrs);
    assert.ok(y.shape.every((d) => d >= 1));
    assert.deepEqual([...y.shape], yShape);
  }));

test('arbTensor honours positive, awayFrom, distinct and step', () =>
  holds(
    fc.tuple(
      arbTensor({ positive: true, margin: 0.2 }),
      arbTensor({ awayFrom: [0, 1], margin: 0.1, dtype: 'float64' }),
      arbTensor({ distinct: true, dtype: 'float64' }),
      arbTensor({ step: 0.5, dtype: 'float64' }),
    ),
    async (pos, away, distinct, stepped) => {
      assert.ok(Array.from(await pos.data()).every((v) => v >= Math.fround(0.2)));
      assert.ok(Array.from(await away.data()).every((v) => Math.abs(v) >= 0.1 - 1e-12 && Math.abs(v - 1) >= 0.1 - 1e-12));
      const d = Array.from(await distinct.data()).sort((a, b) => a - b);
      assert.ok(d.every((v, i) => i === 0 || v - d[i - 1]! >= 0.1 - 1e-12));
      assert.ok(Array.from(await stepped.data()).every((v) => Number.isInteger((v + 2) / 0.5)));
    },
  ));
