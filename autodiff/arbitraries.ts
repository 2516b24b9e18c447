/**
 * fast-check arbitraries for property tests of tensor code: shapes, concrete tensors, broadcast-
 * compatible shape pairs and valid convolution cases. Everything is small by default, so a property
 * can run many times on the CPU backend.
 *
 * @module tessera/testing
 */
import fc from 'fast-check';
import type { DType } from '../core/dtype.ts';
import { convOutSize, tensor } from '../core/ops.ts';
import { sizeOf, type Shape } from '../core/shape.ts';
import type { ConvAttrs, Tensor } from '../core/tensor.ts';

/** Rank and dimension bounds of `arbShape`. */
export interface ShapeConstraints {
  readonly minRank?: number;
  readonly maxRank?: number;
  readonly minDim?: number;
  readonly maxDim?: number;
}

/**
 * A shape with rank in [minRank, maxRank] (default 0..3) and dimensions in [minDim, maxDim] (default 1..4).
 * @example
 * fc.assert(fc.property(arbShape({ minRank: 1, maxRank: 4 }), (shape) => sizeOf(shape) >= 1));
 */
export function arbShape({ minRank = 0, maxRank = 3, minDim = 1, maxDim = 4 }: ShapeConstraints = {}): fc.Arbitrary<number[]> {
  return fc.integer({ min: minRank, max: maxRank }).chain((rank) => fc.array(fc.integer({ min: minDim, max: maxDim }), { minLength: rank, maxLength: rank }));
}

/** Shape, dtype and value range of `arbTensor`. */
export interface TensorConstraints {
  /** A fixed shape, or `shapeArb` to draw one; default arbShape(). */
  readonly shape?: Shape;
  readonly shapeArb?: fc.Arbitrary<readonly number[]>;
  /** Default float32. */
  readonly dtype?: DType;
  /** Value range (default [-2, 2]; integers for int32). */
  readonly min?: number;
  readonly max?: number;
  /** Values in [margin, max]: for log, sqrt, pow bases. */
  readonly positive?: boolean;
  /** Singular points or kinks (e.g. 0 for abs and division): values within `margin` are pushed to distance `margin`. */
  readonly awayFrom?: readonly number[];
  /** Default 0.1. */
  readonly margin?: number;
  /** Entries pairwise at least `margin` apart (no ties, e.g. for max), shifting up as needed. */
  readonly distinct?: boolean;
  /** Values are min + k * step: exact, and ties on purpose. */
  readonly step?: number;
}

/**
 * A concrete tensor. Floats come from fast-check's doubles (which favour boundary values, so ties
 * and extremes are common); the adjustments for `awayFrom` and `distinct` may leave [min, max] by up
 * to a few margins.
 * @example
 * await fc.assert(fc.asyncProperty(arbTensor({ shapeArb: arbShape({ maxRank: 3 }), min: -4, max: 4 }), async (x) => {
 *   await checkGrad((t: Tensor) => sum(tanh(t)), [x]);
 * }));
 */
export function arbTensor(c: TensorConstraints = {}): fc.Arbitrary<Tensor> {
  const dtype = c.dtype ?? 'float32';
  const margin = c.margin ?? 0.1;
  const max = c.max ?? 2;
  const min = c.positive ? Math.max(c.min ?? margin, margin) : (c.min ?? -2);
  const shapes = c.shape !== undefined ? fc.constant(c.shape) : (c.shapeArb ?? arbShape());
  return shapes.chain((shape) => {
    const n = sizeOf(shape);
    const values = (v: fc.Arbitrary<number>) => fc.array(v, { minLength: n, maxLength: n });
    const make = (v: number[]) => printable(tensor(v, shape, dtype), v);
    if (dtype === 'bool') return values(fc.integer({ min: 0, max: 1 })).map(make);
    if (dtype === 'int32') return values(fc.integer({ min: Math.ceil(min), max: Math.floor(max) })).map(make);
    const scalars = c.step !== undefined ? fc.integer({ min: 0, max: Math.floor((max - min) / c.step) }).map((k) => min + k * c.step!) : fc.double({ min, max, noNaN: true });
    return values(scalars).map((v) => make(adjust(v, c.awayFrom ?? [], margin, c.distinct ?? false)));
  });
}

/** Lets fast-check print a counterexample as code that rebuilds it. */
function printable(t: Tensor, values: readonly number[]): Tensor {
  Object.defineProperty(t, fc.toStringMethod, { value: () => `tensor([${values.join(', ')}], [${t.shape.join(', ')}], '${t.dtype}')` });
  return t;
}

function adjust(values: number[], awayFrom: readonly number[], margin: number, distinct: boolean): number[] {
  const out = values.map((v) => awayFrom.reduce((x, p) => (Math.abs(x - p) < margin ? p + (x >= p ? margin : -margin) : x), v));
  if (distinct) {
    const order = out.map((_, i) => i).sort((i, j) => out[i]! - out[j]!);
    for (let r = 1; r < order.length; r++) out[order[r]!] = Math.max(out[order[r]!]!, out[order[r - 1]!]! + margin);
  }
  return out;
}

/**
 * `count` shapes that broadcast together: a common shape, from which each one drops some leading
 * axes and sets some dimensions to 1.
 * @example
 * fc.assert(fc.property(arbBroadcastShapes(3), ([a, b, c]) => {
 *   broadcastShapes('check', broadcastShapes('check', a!, b!), c!);   // never throws
 * }));
 */
export function arbBroadcastShapes(count: number, c: ShapeConstraints = {}): fc.Arbitrary<number[][]> {
  return arbShape(c).chain((shape) => {
    const side = fc
      .tuple(fc.integer({ min: 0, max: shape.length }), fc.array(fc.boolean(), { minLength: shape.length, maxLength: shape.length }))
      .map(([drop, ones]) => shape.map((d, i) => (ones[i] ? 1 : d)).slice(drop));
    return fc.array(side, { minLength: count, maxLength: count });
  });
}

/**
 * Two shapes that broadcast together, including size-1 and missing leading axes.
 * @example
 * const pairs = arbBroadcastPair({ maxRank: 3 }).chain(([a, b]) =>
 *   fc.tuple(arbTensor({ shape: a }), arbTensor({ shape: b })));   // operands for add, mul, ...
 */
export function arbBroadcastPair(c: ShapeConstraints = {}): fc.Arbitrary<[number[], number[]]> {
  return arbBroadcastShapes(2, c).map(([a, b]) => [a!, b!]);
}

/** A valid convolution: input and weight shapes, attributes, and the output shape. */
export interface ConvCase {
  readonly xShape: [number, number, number, number];
  readonly wShape: [number, number, number, number];
  readonly attrs: ConvAttrs;
  /** The output's shape (and so the shape of a cotangent dy). */
  readonly yShape: [number, number, number, number];
}

/** Size bounds of `arbConvCase`. */
export interface ConvConstraints {
  readonly maxBatch?: number;
  readonly maxGroups?: number;
  readonly maxChannelsPerGroup?: number;
  readonly maxKernel?: number;
  readonly maxStride?: number;
  readonly maxPadding?: number;
  readonly maxDilation?: number;
  /** The largest amount by which the input exceeds the smallest size that fits the kernel. */
  readonly maxExtra?: number;
}

/**
 * Convolution attributes (stride, padding, dilation per axis; groups).
 * @example
 * fc.assert(fc.property(arbConvAttrs({ maxStride: 2 }), (a) => a.stride[0] <= 2));
 */
export function arbConvAttrs(c: ConvConstraints = {}): fc.Arbitrary<ConvAttrs> {
  const pair = (lo: number, hi: number) => fc.tuple(fc.integer({ min: lo, max: hi }), fc.integer({ min: lo, max: hi }));
  return fc.record({
    stride: pair(1, c.maxStride ?? 2),
    padding: pair(0, c.maxPadding ?? 2),
    dilation: pair(1, c.maxDilation ?? 2),
    groups: fc.integer({ min: 1, max: c.maxGroups ?? 2 }),
  });
}

/**
 * A valid conv2d: NCHW input and OIHW weight shapes whose output is at least 1x1, with the attributes.
 * @example
 * fc.assert(fc.property(arbConvCase(), ({ xShape, wShape, attrs, yShape }) => {
 *   const y = conv2d(zeros(xShape), zeros(wShape), attrs);
 *   return shapesEqual(y.shape, yShape);
 * }));
 */
export function arbConvCase(c: ConvConstraints = {}): fc.Arbitrary<ConvCase> {
  const small = (lo: number, hi: number) => fc.integer({ min: lo, max: hi });
  const perGroup = c.maxChannelsPerGroup ?? 2;
  return fc
    .record({
      attrs: arbConvAttrs(c),
      n: small(1, c.maxBatch ?? 2),
      cin: small(1, perGroup),
      cout: small(1, perGroup),
      kh: small(1, c.maxKernel ?? 3),
      kw: small(1, c.maxKernel ?? 3),
      extraH: small(0, c.maxExtra ?? 3),
      extraW: small(0, c.maxExtra ?? 3),
    })
    .map(({ attrs, n, cin, cout, kh, kw, extraH, extraW }) => {
      const fits = (k: number, axis: 0 | 1) => Math.max(1, attrs.dilation[axis] * (k - 1) + 1 - 2 * attrs.padding[axis]);
      const g = attrs.groups;
      const [h, w] = [fits(kh, 0) + extraH, fits(kw, 1) + extraW];
      const out = (size: number, k: number, axis: 0 | 1) => convOutSize(size, k, attrs.stride[axis], attrs.padding[axis], attrs.dilation[axis]);
      return {
        xShape: [n, cin * g, h, w],
        wShape: [cout * g, cin, kh, kw],
        attrs,
        yShape: [n, cout * g, out(h, kh, 0), out(w, kw, 1)],
      };
    });
}
