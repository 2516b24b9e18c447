/**
 * The primitives' derivative cases, one per primitive (or per way of calling it): random inputs over
 * shapes, broadcasts and attributes, with the function of them under test. Reverse mode
 * (rules.test.ts, against central differences) and forward mode (jvp-rules.test.ts, against central
 * differences and the adjoint identity with `vjp`) run the same cases with their own checker.
 */
import fc from 'fast-check';
import {
  arbBroadcastPair, arbBroadcastShapes, arbConvCase, arbShape, arbTensor, type TensorConstraints,
} from '../../autodiff/arbitraries.ts';
import {
  add, binary, broadcastTo, cast, concat, conv2d, conv2dGradInput, conv2dGradWeight, gather, greater,
  less, logicalAnd, logicalNot, logicalOr, matmul, max, mul, pad, permute, pow, reshape, slice, sum, unary, where,
} from '../../core/ops.ts';
import { broadcastShapes } from '../../core/shape.ts';
import type { BinaryFn, Tensor, UnaryFn } from '../../core/tensor.ts';

/** One drawn case: `f` at `inputs` (every input a float tensor it is differentiated in). */
export interface Instance {
  readonly f: (...xs: Tensor[]) => Tensor;
  readonly inputs: Tensor[];
  /** Looser finite-difference settings, where float32 rounding inside `f` needs a wide step. */
  readonly tolerance?: { readonly eps: number; readonly rtol: number; readonly atol: number };
}

export interface PrimitiveCase {
  readonly name: string;
  readonly arb: fc.Arbitrary<Instance>;
}

const pairOf = (ca: TensorConstraints, cb: TensorConstraints) =>
  arbBroadcastPair().chain(([sa, sb]) => fc.tuple(arbTensor({ ...ca, shape: sa }), arbTensor({ ...cb, shape: sb })));

const integers = { awayFrom: [-3, -2, -1, 0, 1, 2, 3], margin: 0.01 };
const unaryCases: [UnaryFn, TensorConstraints][] = [
  ['neg', {}], ['exp', {}], ['log', { positive: true }], ['sin', {}], ['cos', {}], ['sqrt', { positive: true }],
  ['rsqrt', { positive: true }], ['tanh', {}], ['sigmoid', {}], ['abs', { awayFrom: [0] }],
  ['reciprocal', { awayFrom: [0], margin: 0.3 }], ['floor', integers], ['sign', { awayFrom: [0] }],
];

// max/min operands on offset lattices (k/2 and k/2 + 1/4) never tie, so they are differentiable.
const apart: [TensorConstraints, TensorConstraints] = [{ step: 0.5 }, { min: -1.75, max: 1.75, step: 0.5 }];
const binaryCases: [BinaryFn, TensorConstraints, TensorConstraints][] = [
  ['add', {}, {}], ['sub', {}, {}], ['mul', {}, {}], ['div', {}, { awayFrom: [0], margin: 0.3 }],
  ['pow', { positive: true, margin: 0.3 }, {}], ['max', ...apart], ['min', ...apart],
];

const axesOf = (shape: readonly number[]) => fc.oneof(fc.constant(undefined), fc.subarray(shape.map((_, i) => i)));
const permutationOf = (shape: readonly number[]) =>
  fc.shuffledSubarray(shape.map((_, i) => i), { minLength: shape.length, maxLength: shape.length });
const sliceArgs = (shape: readonly number[]) =>
  fc.tuple(...shape.map((d) =>
    fc.integer({ min: 0, max: d }).chain((s) => fc.tuple(fc.constant(s), fc.integer({ min: s, max: d }), fc.integer({ min: 1, max: 3 })))));

/** A convolution case with concrete x, w and dy of the matching shapes. */
const convTensors = arbConvCase().chain(({ xShape, wShape, yShape, attrs }) =>
  fc.tuple(arbTensor({ shape: xShape }), arbTensor({ shape: wShape }), arbTensor({ shape: yShape }), fc.constant(attrs)));

const oneInput = (x: Tensor, f: (x: Tensor) => Tensor): Instance => ({ f: (x) => f(x!), inputs: [x] });
const twoInputs = (a: Tensor, b: Tensor, f: (a: Tensor, b: Tensor) => Tensor): Instance => ({ f: (a, b) => f(a!, b!), inputs: [a, b] });

export const primitiveCases: PrimitiveCase[] = [
  ...unaryCases.map(([fn, domain]): PrimitiveCase => ({
    name: `unary ${fn}`,
    arb: arbTensor(domain).map((x) => oneInput(x, (x) => unary(fn, x))),
  })),
  ...binaryCases.map(([fn, ca, cb]): PrimitiveCase => ({
    name: `binary ${fn} with broadcasting`,
    arb: pairOf(ca, cb).map(([a, b]) => twoInputs(a, b, (a, b) => binary(fn, a, b))),
  })),
  {
    name: 'binary pow of any base to a fixed integer power',
    arb: fc.tuple(arbTensor({ awayFrom: [0], margin: 0.3 }), fc.integer({ min: -2, max: 3 })).map(([a, k]) => oneInput(a, (a) => pow(a, k))),
  },
  {
    name: 'comparisons pass nothing (they only feed a cast)',
    arb: fc.tuple(pairOf(...apart), fc.constantFrom<BinaryFn>('lt', 'le', 'gt', 'ge', 'eq', 'ne')).map(([[a, b], fn]) =>
      twoInputs(a, b, (a, b) => add(mul(cast(binary(fn, a, b), a.dtype), a), b))),
  },
  {
    name: 'select (where) with broadcasting; and/or/not conditions pass nothing',
    arb: arbBroadcastShapes(3).chain(([sc, sa, sb]) =>
      fc.tuple(arbTensor({ shape: sc!, dtype: 'bool' }), arbTensor({ shape: sa! }), arbTensor({ shape: sb! }), fc.constantFrom('plain', 'and', 'or', 'not')))
      .map(([cond, a, b, logic]) => {
        const pick = (a: Tensor) => {
          const c = broadcastTo(cond, broadcastShapes('test', cond.shape, a.shape));
          if (logic === 'and') return logicalAnd(c, greater(a, 100));
          if (logic === 'or') return logicalOr(c, less(a, -100));
          return logic === 'not' ? logicalNot(c) : c;
        };
        return twoInputs(a, b, (a, b) => where(pick(a), a, b));
      }),
  },
  {
    name: 'reduce sum over random axes (all, none, some), keepdims',
    arb: arbShape().chain((s) => fc.tuple(arbTensor({ shape: s }), axesOf(s), fc.boolean()))
      .map(([x, axes, keep]) => oneInput(x, (x) => sum(x, axes, keep))),
  },
  {
    name: 'reduce max over random axes of distinct values',
    arb: arbShape().chain((s) => fc.tuple(arbTensor({ shape: s, distinct: true }), axesOf(s), fc.boolean()))
      .map(([x, axes, keep]) => oneInput(x, (x) => max(x, axes, keep))),
  },
  {
    name: 'reshape to flat, reversed and split shapes',
    arb: fc.tuple(arbTensor({ shapeArb: arbShape({ minRank: 1 }) }), fc.constantFrom('flat', 'reversed', 'ones')).map(([x, how]) => {
      const shape = how === 'flat' ? [x.size] : how === 'reversed' ? [...x.shape].reverse() : [1, ...x.shape, 1];
      return oneInput(x, (x) => reshape(x, shape));
    }),
  },
  {
    name: 'permute by a random permutation',
    arb: arbShape({ minRank: 1, maxRank: 4 }).chain((s) => fc.tuple(arbTensor({ shape: s }), permutationOf(s)))
      .map(([x, perm]) => oneInput(x, (x) => permute(x, perm))),
  },
  {
    name: 'broadcast over size-1 and missing leading axes',
    arb: arbBroadcastPair().chain(([sa, sb]) => fc.tuple(arbTensor({ shape: sa }), fc.constant(broadcastShapes('test', sa, sb))))
      .map(([x, target]) => oneInput(x, (x) => broadcastTo(x, target))),
  },
  {
    name: 'slice with random starts, ends and strides',
    arb: arbShape({ minRank: 1, maxDim: 5 }).chain((s) => fc.tuple(arbTensor({ shape: s }), sliceArgs(s)))
      .map(([x, r]) => oneInput(x, (x) => slice(x, r.map((q) => q[0]), r.map((q) => q[1]), r.map((q) => q[2])))),
  },
  {
    name: 'pad with random low, high and interior padding and value',
    arb: arbShape({ minRank: 1 }).chain((s) => {
      const amounts = fc.array(fc.integer({ min: 0, max: 2 }), { minLength: s.length, maxLength: s.length });
      return fc.tuple(arbTensor({ shape: s }), amounts, amounts, amounts, fc.constantFrom(0, 1.5));
    }).map(([x, lo, hi, interior, value]) => oneInput(x, (x) => pad(x, lo, hi, value, interior))),
  },
  {
    name: 'concat of 1-3 pieces (some empty) along a random axis',
    arb: arbShape({ minRank: 1 }).chain((s) =>
      fc.integer({ min: 0, max: s.length - 1 }).chain((axis) =>
        fc.tuple(
          fc.constant(axis),
          fc.array(fc.integer({ min: 0, max: 3 }).chain((n) => arbTensor({ shape: s.map((d, i) => (i === axis ? n : d)) })), { minLength: 1, maxLength: 3 }),
        ))).map(([axis, pieces]): Instance => ({ f: (...xs) => concat(xs, axis), inputs: pieces })),
  },
  {
    name: 'matmul with broadcast batch dimensions',
    arb: fc.tuple(arbBroadcastPair({ maxRank: 2, maxDim: 3 }), fc.integer({ min: 1, max: 3 }), fc.integer({ min: 1, max: 3 }), fc.integer({ min: 1, max: 3 }))
      .chain(([[ba, bb], m, k, n]) => fc.tuple(arbTensor({ shape: [...ba, m, k] }), arbTensor({ shape: [...bb, k, n] })))
      .map(([a, b]) => twoInputs(a, b, matmul)),
  },
  {
    name: 'conv2d over strides, paddings, dilations and groups',
    arb: convTensors.map(([x, w, , attrs]) => twoInputs(x, w, (x, w) => conv2d(x, w, attrs))),
  },
  {
    name: 'conv2dGradInput (transposed convolution) in dy and w',
    arb: convTensors.map(([x, w, dy, attrs]) => twoInputs(dy, w, (dy, w) => conv2dGradInput(dy, w, x.shape, attrs))),
  },
  {
    name: 'conv2dGradWeight in x and dy',
    arb: convTensors.map(([x, w, dy, attrs]) => twoInputs(x, dy, (x, dy) => conv2dGradWeight(x, dy, w.shape, attrs))),
  },
  {
    name: 'gather along a random axis, with out-of-range (clamped) and repeated indices',
    arb: arbShape({ minRank: 1 }).chain((s) =>
      fc.integer({ min: 0, max: s.length - 1 }).chain((axis) =>
        fc.tuple(arbTensor({ shape: s }), arbTensor({ dtype: 'int32', min: -1, max: s[axis]!, shapeArb: arbShape({ maxRank: 2 }) }), fc.constant(axis))))
      .map(([x, idx, axis]) => oneInput(x, (x) => gather(x, idx, axis))),
  },
  {
    // float32 rounding needs a wide step; the function is linear, so the step adds no error.
    name: 'cast through float32 passes the derivative',
    arb: arbTensor({ min: -1.9, max: 1.6, step: 0.5 }).map((x): Instance => ({
      ...oneInput(x, (x) => cast(cast(x, 'float32'), x.dtype)),
      tolerance: { eps: 1e-2, rtol: 1e-3, atol: 1e-4 },
    })),
  },
  {
    name: 'cast through int32 passes nothing',
    arb: arbTensor({ min: -1.9, max: 1.6, step: 0.5 }).map((x) => oneInput(x, (x) => add(x, cast(cast(mul(x, 3), 'int32'), x.dtype)))),
  },
];
