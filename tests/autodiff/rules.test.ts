/**
 * One property per primitive: the reverse-mode gradient (and the gradient of the vector-Jacobian
 * product, i.e. second order) agrees with float64 central differences on the CPU backend, over random
 * shapes, broadcasts and attributes.
 */
import { registerReferenceBackend } from '../../backends/reference/index.ts';
import { setDefaultBackend } from '../../core/backend.ts';
import { test } from 'node:test';
import fc from 'fast-check';
import {
  arbBroadcastPair, arbBroadcastShapes, arbConvCase, arbShape, arbTensor, type TensorConstraints,
} from '../../autodiff/arbitraries.ts';
import {
  add, binary, broadcastTo, cast, concat, conv2d, conv2dGradInput, conv2dGradWeight, convOutSize, gather, iota,
  isFinite, logicalAnd, logicalNot, logicalOr, matmul, max, mul, pad, permute, pow, randomBits, reshape, slice, sum,
  tensor, unary, uniformFromBits, where, greater, less,
} from '../../core/ops.ts';
import { broadcastShapes } from '../../core/shape.ts';
import type { BinaryFn, Tensor, UnaryFn } from '../../core/tensor.ts';
import { checkRule, holds } from './helpers.ts';

registerReferenceBackend();
setDefaultBackend('reference');

const pairOf = (ca: TensorConstraints, cb: TensorConstraints) =>
  arbBroadcastPair().chain(([sa, sb]) => fc.tuple(arbTensor({ ...ca, shape: sa }), arbTensor({ ...cb, shape: sb })));

const integers = { awayFrom: [-3, -2, -1, 0, 1, 2, 3], margin: 0.01 };
const unaryCases: [UnaryFn, TensorConstraints][] = [
  ['neg', {}], ['exp', {}], ['log', { positive: true }], ['sin', {}], ['cos', {}], ['sqrt', { positive: true }],
  ['rsqrt', { positive: true }], ['tanh', {}], ['sigmoid', {}], ['abs', { awayFrom: [0] }],
  ['reciprocal', { awayFrom: [0], margin: 0.3 }], ['floor', integers], ['sign', { awayFrom: [0] }],
];
for (const [fn, domain] of unaryCases) {
  test(`unary ${fn}`, () => holds(fc.tuple(arbTensor(domain)), (x) => checkRule((x: Tensor) => unary(fn, x), [x])));
}

// max/min operands on offset lattices (k/2 and k/2 + 1/4) never tie, so they are differentiable.
const apart: [TensorConstraints, TensorConstraints] = [{ step: 0.5 }, { min: -1.75, max: 1.75, step: 0.5 }];
const binaryCases: [BinaryFn, TensorConstraints, TensorConstraints][] = [
  ['add', {}, {}], ['sub', {}, {}], ['mul', {}, {}], ['div', {}, { awayFrom: [0], margin: 0.3 }],
  ['pow', { positive: true, margin: 0.3 }, {}], ['max', ...apart], ['min', ...apart],
];
for (const [fn, ca, cb] of binaryCases) {
  test(`binary ${fn} with broadcasting`, () => holds(pairOf(ca, cb), (a, b) => checkRule((a: Tensor, b: Tensor) => binary(fn, a, b), [a, b])));
}

test('binary pow of any base to an integer power (the exponent held fixed)', () =>
  holds(fc.tuple(arbTensor({ awayFrom: [0], margin: 0.3 }), fc.integer({ min: -2, max: 3 })), (a, k) =>
    checkRule((a: Tensor) => pow(a, k), [a])));

test('comparisons pass no gradient', () =>
  holds(fc.tuple(pairOf(...apart), fc.constantFrom<BinaryFn>('lt', 'le', 'gt', 'ge', 'eq', 'ne')), ([a, b], fn) =>
    checkRule((a: Tensor, b: Tensor) => add(mul(cast(binary(fn, a, b), a.dtype), a), b), [a, b])));

test('select (where) with broadcasting; and/or/not conditions pass no gradient', () =>
  holds(
    arbBroadcastShapes(3).chain(([sc, sa, sb]) =>
      fc.tuple(arbTensor({ shape: sc!, dtype: 'bool' }), arbTensor({ shape: sa! }), arbTensor({ shape: sb! }), fc.constantFrom('plain', 'and', 'or', 'not'))),
    (cond, a, b, logic) => {
      const pick = (c: Tensor, a: Tensor, b: Tensor) => {
        const withA = broadcastTo(c, broadcastShapes('test', c.shape, a.shape));
        if (logic === 'and') return logicalAnd(withA, greater(a, 100));
        if (logic === 'or') return logicalOr(withA, less(a, -100));
        return logic === 'not' ? logicalNot(withA) : withA;
      };
      return checkRule((a: Tensor, b: Tensor) => where(pick(cond, a, b), a, b), [a, b]);
    },
  ));

const axesOf = (shape: readonly number[]) =>
  fc.oneof(fc.constant(undefined), fc.subarray(shape.map((_, i) => i)));

test('reduce sum over random axes (all, none, some), keepdims', () =>
  holds(
    arbShape().chain((s) => fc.tuple(arbTensor({ shape: s }), axesOf(s), fc.boolean())),
    (x, axes, keepdims) => checkRule((x: Tensor) => sum(x, axes, keepdims), [x]),
  ));

test('reduce max over random axes of distinct values', () =>
  holds(
    arbShape().chain((s) => fc.tuple(arbTensor({ shape: s, distinct: true }), axesOf(s), fc.boolean())),
    (x, axes, keepdims) => checkRule((x: Tensor) => max(x, axes, keepdims), [x]),
  ));

test('reshape to flat, reversed and split shapes', () =>
  holds(
    fc.tuple(arbTensor({ shapeArb: arbShape({ minRank: 1 }) }), fc.constantFrom('flat', 'reversed', 'ones')),
    (x, how) => {
      const shape = how === 'flat' ? [x.size] : how === 'reversed' ? [...x.shape].reverse() : [1, ...x.shape, 1];
      return checkRule((x: Tensor) => reshape(x, shape), [x]);
    },
  ));

test('permute by a random permutation', () =>
  holds(
    arbShape({ minRank: 1, maxRank: 4 }).chain((s) =>
      fc.tuple(arbTensor({ shape: s }), fc.shuffledSubarray(s.map((_, i) => i), { minLength: s.length, maxLength: s.length }))),
    (x, perm) => checkRule((x: Tensor) => permute(x, perm), [x]),
  ));

test('broadcast over size-1 and missing leading axes', () =>
  holds(
    arbBroadcastPair().chain(([sa, sb]) => fc.tuple(arbTensor({ shape: sa }), fc.constant(broadcastShapes('test', sa, sb)))),
    (x, target) => checkRule((x: Tensor) => broadcastTo(x, target), [x]),
  ));

const sliceArgs = (shape: readonly number[]) =>
  fc.tuple(...shape.map((d) =>
    fc.integer({ min: 0, max: d }).chain((s) => fc.tuple(fc.constant(s), fc.integer({ min: s, max: d }), fc.integer({ min: 1, max: 3 })))));

test('slice with random starts, ends and strides', () =>
  holds(
    arbShape({ minRank: 1, maxDim: 5 }).chain((s) => fc.tuple(arbTensor({ shape: s }), sliceArgs(s))),
    (x, ranges) => checkRule((x: Tensor) => slice(x, ranges.map((r) => r[0]), ranges.map((r) => r[1]), ranges.map((r) => r[2])), [x]),
  ));

test('pad with random low, high and interior padding and value', () =>
  holds(
    arbShape({ minRank: 1 }).chain((s) => {
      const amounts = fc.array(fc.integer({ min: 0, max: 2 }), { minLength: s.length, maxLength: s.length });
      return fc.tuple(arbTensor({ shape: s }), amounts, amounts, amounts, fc.constantFrom(0, 1.5));
    }),
    (x, lo, hi, interior, value) => checkRule((x: Tensor) => pad(x, lo, hi, value, interior), [x]),
  ));

test('concat of 1-3 pieces (some empty) along a random axis', () =>
  holds(
    arbShape({ minRank: 1 }).chain((s) =>
      fc.integer({ min: 0, max: s.length - 1 }).chain((axis) =>
        fc.tuple(
          fc.constant(axis),
          fc.array(fc.integer({ min: 0, max: 3 }).chain((n) => arbTensor({ shape: s.map((d, i) => (i === axis ? n : d)) })), { minLength: 1, maxLength: 3 }),
        ))),
    (axis, pieces) => checkRule((...xs: Tensor[]) => concat(xs, axis), pieces),
  ));

test('matmul with broadcast batch dimensions', () =>
  holds(
    fc.tuple(arbBroadcastPair({ maxRank: 2, maxDim: 3 }), fc.integer({ min: 1, max: 3 }), fc.integer({ min: 1, max: 3 }), fc.integer({ min: 1, max: 3 }))
      .chain(([[ba, bb], m, k, n]) => fc.tuple(arbTensor({ shape: [...ba, m, k] }), arbTensor({ shape: [...bb, k, n] }))),
    (a, b) => checkRule((a: Tensor, b: Tensor) => matmul(a, b), [a, b]),
  ));

/** A convolution case with concrete x, w and dy of the matching shapes. */
const convTensors = arbConvCase().chain(({ xShape, wShape, attrs }) => {
  const [n, , h, w] = xShape;
  const [o, , kh, kw] = wShape;
  const dyShape = [n, o, convOutSize(h, kh, attrs.stride[0], attrs.padding[0], attrs.dilation[0]), convOutSize(w, kw, attrs.stride[1], attrs.padding[1], attrs.dilation[1])];
  return fc.tuple(arbTensor({ shape: xShape }), arbTensor({ shape: wShape }), arbTensor({ shape: dyShape }), fc.constant(attrs));
});

test('conv2d over strides, paddings, dilations and groups', () =>
  holds(convTensors, (x, w, _dy, attrs) => checkRule((x: Tensor, w: Tensor) => conv2d(x, w, attrs), [x, w])));

test('conv2dGradInput (transposed convolution) in dy and w', () =>
  holds(convTensors, (x, w, dy, attrs) => checkRule((dy: Tensor, w: Tensor) => conv2dGradInput(dy, w, x.shape, attrs), [dy, w])));

test('conv2dGradWeight in x and dy', () =>
  holds(convTensors, (x, w, dy, attrs) => checkRule((x: Tensor, dy: Tensor) => conv2dGradWeight(x, dy, w.shape, attrs), [x, dy])));

test('gather along a random axis, with out-of-range (clamped) and repeated indices', () =>
  holds(
    arbShape({ minRank: 1 }).chain((s) =>
      fc.integer({ min: 0, max: s.length - 1 }).chain((axis) =>
        fc.tuple(arbTensor({ shape: s }), arbTensor({ dtype: 'int32', min: -1, max: s[axis]!, shapeArb: arbShape({ maxRank: 2 }) }), fc.constant(axis)))),
    (x, idx, axis) => checkRule((x: Tensor) => gather(x, idx, axis), [x]),
  ));

test('cast between float types passes the gradient; through int32 it passes none', () =>
  holds(fc.tuple(arbTensor({ min: -1.9, max: 1.6, step: 0.5 })), async (x) => {
    // float32 rounding needs a wide step; the function is linear, so the step adds no error.
    await checkRule((x: Tensor) => cast(cast(x, 'float32'), x.dtype), [x], { eps: 1e-2, rtol: 1e-3, atol: 1e-4 });
    await checkRule((x: Tensor) => add(x, cast(cast(mul(x, 3), 'int32'), x.dtype)), [x]);
  }));

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
