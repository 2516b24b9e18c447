/**
 * One property per composite: gradients (first and second order) agree with float64 central
 * differences on the CPU backend over random shapes and attributes.
 */
import { registerReferenceBackend } from '../../backends/reference/index.ts';
import { setDefaultBackend } from '../../core/backend.ts';
import { test } from 'node:test';
import fc from 'fast-check';
import { arbShape, arbTensor } from '../../autodiff/arbitraries.ts';
import {
  avgPool2d, gelu, groupNorm, layerNorm, logSoftmax, logsumexp, mean, scaledDotProductAttention, silu, softmax,
  upsampleNearest2d, variance,
} from '../../core/composite.ts';
import type { Tensor } from '../../core/tensor.ts';
import { checkRule, holds } from './helpers.ts';

registerReferenceBackend();
setDefaultBackend('reference');

const withAxes = (minRank = 0) =>
  arbShape({ minRank }).chain((s) => fc.tuple(arbTensor({ shape: s }), fc.oneof(fc.constant(undefined), fc.subarray(s.map((_, i) => i))), fc.boolean()));
const withAxis = arbShape({ minRank: 1 }).chain((s) => fc.tuple(arbTensor({ shape: s }), fc.integer({ min: -s.length, max: s.length - 1 })));

test('mean over random axes', () => holds(withAxes(), (x, axes, keep) => checkRule((x: Tensor) => mean(x, axes, keep), [x])));

test('variance over random axes', () => holds(withAxes(), (x, axes, keep) => checkRule((x: Tensor) => variance(x, axes, keep), [x])));

test('logsumexp over random axes', () => holds(withAxes(), (x, axes, keep) => checkRule((x: Tensor) => logsumexp(x, axes, keep), [x])));

test('softmax along a random axis', () => holds(withAxis, (x, axis) => checkRule((x: Tensor) => softmax(x, axis), [x])));

test('logSoftmax along a random axis', () => holds(withAxis, (x, axis) => checkRule((x: Tensor) => logSoftmax(x, axis), [x])));

test('silu', () => holds(fc.tuple(arbTensor({ min: -4, max: 4 })), (x) => checkRule((x: Tensor) => silu(x), [x])));

test('gelu (tanh approximation)', () => holds(fc.tuple(arbTensor({ min: -4, max: 4 })), (x) => checkRule((x: Tensor) => gelu(x), [x])));

test('groupNorm with random groups, spatial rank and affine parameters', () =>
  holds(
    fc
      .record({ n: fc.integer({ min: 1, max: 2 }), groups: fc.integer({ min: 1, max: 2 }), per: fc.integer({ min: 1, max: 2 }), spatial: arbShape({ maxRank: 2, maxDim: 3 }), affine: fc.boolean() })
      .chain(({ n, groups, per, spatial, affine }) => {
        const c = groups * per;
        return fc.tuple(arbTensor({ shape: [n, c, ...spatial] }), fc.constant(groups), affine ? fc.tuple(arbTensor({ shape: [c] }), arbTensor({ shape: [c] })) : fc.constant(undefined));
      }),
    (x, groups, affine) =>
      affine === undefined
        ? checkRule((x: Tensor) => groupNorm(x, groups), [x])
        : checkRule((x: Tensor, w: Tensor, b: Tensor) => groupNorm(x, groups, 1e-5, w, b), [x, ...affine]),
  ));

test('layerNorm with and without affine parameters', () =>
  holds(
    arbShape({ minRank: 1 }).chain((s) => fc.tuple(arbTensor({ shape: s }), arbTensor({ shape: [s[s.length - 1]!] }), arbTensor({ shape: [s[s.length - 1]!] }), fc.boolean())),
    (x, w, b, affine) =>
      affine ? checkRule((x: Tensor, w: Tensor, b: Tensor) => layerNorm(x, 1e-5, w, b), [x, w, b]) : checkRule((x: Tensor) => layerNorm(x), [x]),
  ));

test('scaledDotProductAttention with an optional mask', () =>
  holds(
    fc
      .record({ batch: arbShape({ maxRank: 1, maxDim: 2 }), lq: fc.integer({ min: 1, max: 3 }), lk: fc.integer({ min: 1, max: 3 }), d: fc.integer({ min: 1, max: 3 }), dv: fc.integer({ min: 1, max: 3 }), masked: fc.boolean() })
      .chain(({ batch, lq, lk, d, dv, masked }) =>
        fc.tuple(
          arbTensor({ shape: [...batch, lq, d] }),
          arbTensor({ shape: [...batch, lk, d] }),
          arbTensor({ shape: [...batch, lk, dv] }),
          masked ? arbTensor({ shape: [lq, lk], dtype: 'bool' }) : fc.constant(undefined),
        )),
    (q, k, v, mask) => checkRule((q: Tensor, k: Tensor, v: Tensor) => scaledDotProductAttention(q, k, v, { mask }), [q, k, v]),
  ));

test('avgPool2d with random window and stride', () =>
  holds(
    fc.record({ kernel: fc.integer({ min: 1, max: 3 }), stride: fc.integer({ min: 1, max: 3 }), h: fc.integer({ min: 0, max: 3 }), w: fc.integer({ min: 0, max: 3 }), c: fc.integer({ min: 1, max: 2 }) })
      .chain(({ kernel, stride, h, w, c }) => fc.tuple(arbTensor({ shape: [1, c, kernel + h, kernel + w] }), fc.constant(kernel), fc.constant(stride))),
    (x, kernel, stride) => checkRule((x: Tensor) => avgPool2d(x, kernel, stride), [x]),
  ));

test('upsampleNearest2d by a random factor', () =>
  holds(
    fc.tuple(arbTensor({ shapeArb: arbShape({ minRank: 4, maxRank: 4, maxDim: 3 }) }), fc.integer({ min: 1, max: 3 })),
    (x, factor) => checkRule((x: Tensor) => upsampleNearest2d(x, factor), [x]),
  ));
