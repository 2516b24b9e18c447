/**
 * One property per primitive: the reverse-mode gradient (and the gradient of the vector-Jacobian
 * product, i.e. second order) agrees with float64 central differences on the reference backend, over
 * random shapes, broadcasts and attributes. The cases are shared with forward mode (primitiveCases.ts).
 */
import { registerReferenceBackend } from '../../backends/reference/index.ts';
import { setDefaultBackend } from '../../core/backend.ts';
import { test } from 'node:test';
import fc from 'fast-check';
import { arbShape, arbTensor } from '../../autodiff/arbitraries.ts';
import {
  add, broadcastTo, cast, concat, greater, iota, isFinite, matmul, mul, pad, permute, randomBits, reshape, slice, sum,
  tensor, unary, uniformFromBits, where,
} from '../../core/ops.ts';
import type { Tensor } from '../../core/tensor.ts';
import { checkRule, holds } from './helpers.ts';
import { primitiveCases } from './primitiveCases.ts';

registerReferenceBackend();
setDefaultBackend('reference');

for (const { name, arb } of primitiveCases) {
  test(name, () => holds(fc.tuple(arb), ({ f, inputs, tolerance }) => checkRule(f, inputs, tolerance)));
}

test('sources pass no gradient: iota, randomBits, uniformFromBits, isFinite', () =>
  holds(fc.tuple(arbTensor({ shapeArb: arbShape({ minRank: 1 }) })), (x) => {
    const key = tensor([3, 7], [2], 'int32');
    return checkRule(
      (x: Tensor) => {
        const noise = cast(uniformFromBits(randomBits(key, x.shape)), x.dtype);
        return where(isFinite(x), add(mul(x, cast(iota(x.shape, -1), x.dtype)), noise), 0);
      },
      [x],
    );
  }));

test('shape-polymorphic primitives accept zero-size dimensions', () =>
  holds(
    fc.tuple(
      arbShape({ minRank: 2, minDim: 0, maxDim: 2 }).chain((s) => arbTensor({ shape: s, awayFrom: [0] })),
      fc.constantFrom('unary', 'binary', 'sum', 'reshape', 'permute', 'broadcast', 'slice', 'pad', 'concat', 'matmul', 'select'),
    ),
    (x, op) => {
      const fns: Record<typeof op, (x: Tensor) => Tensor> = {
        unary: (x) => unary('sin', x),
        binary: (x) => mul(x, reshape(x, [...x.shape])),
        sum: (x) => sum(x, 0),
        reshape: (x) => reshape(x, [...x.shape].reverse()),
        permute: (x) => permute(x, x.shape.map((_, i) => x.rank - 1 - i)),
        broadcast: (x) => broadcastTo(x, [2, ...x.shape]),
        slice: (x) => slice(x, x.shape.map(() => 0), x.shape, x.shape.map(() => 2)),
        pad: (x) => pad(x, x.shape.map(() => 1), x.shape.map(() => 0), 0, x.shape.map(() => 1)),
        concat: (x) => concat([x, x], 0),
        matmul: (x) => matmul(x, permute(x, x.shape.map((_, i) => (i < x.rank - 2 ? i : 2 * x.rank - 3 - i)))),
        select: (x) => where(greater(x, 0), x, mul(x, 2)),
      };
      return checkRule(fns[op], [x]);
    },
  ));
