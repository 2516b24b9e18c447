/**
 * Composite ops, written only from primitives: autodiff and the backends never see them.
 */
import { isFloat } from './dtype.ts';
import { DTypeError, ShapeError, fmtShape } from './errors.ts';
import {
  add, broadcastTo, cast, div, equal, exp, expectTensor, iota, log, matmul, max, maximum, minimum, mul,
  reshape, rsqrt, sigmoid, slice, sub, sum, tanh, transpose, where,
} from './ops.ts';
import { normalizeAxes, sizeOf } from './shape.ts';
import type { Tensor } from './tensor.ts';

type Axes = number | readonly number[] | undefined;

function axesOf(op: string, x: Tensor, axes: Axes): number[] {
  return axes === undefined ? x.shape.map((_, i) => i) : normalizeAxes(op, typeof axes === 'number' ? [axes] : axes, x.rank);
}

/**
 * Elementwise `x * x`, e.g. `mean(square(sub(pred, y)))` for a squared error.
 * @example
 * const mse = mean(square(sub(pred, y)));
 */
export function square(x: Tensor): Tensor {
  return mul(x, x);
}

/**
 * Mean over `axes` (all by default), e.g. `mean(x, [2, 3], true)` per channel of NCHW.
 * @example
 * mean(tensor([[1, 2], [3, 4]]), 1);                  // [1.5, 3.5]
 * const perChannel = mean(x, [2, 3], true);           // [N, C, H, W] -> [N, C, 1, 1]
 */
export function mean(x: Tensor, axes?: Axes, keepdims = false): Tensor {
  const ax = axesOf('mean', x, axes);
  const n = sizeOf(ax.map((a) => x.shape[a]!));
  if (n === 0) throw new ShapeError(`mean: reduction over an empty axis of ${fmtShape(x.shape)}`);
  return div(sum(x, ax, keepdims), n);
}

/**
 * Population variance (divides by n), as in group and layer norm.
 * @example
 * variance(tensor([1, 2, 3, 4]));                     // 1.25
 */
export function variance(x: Tensor, axes?: Axes, keepdims = false): Tensor {
  const ax = axesOf('variance', x, axes);
  const centred = sub(x, mean(x, ax, true));
  return mean(square(centred), ax, keepdims);
}

/**
 * Stable: shifts by the max (whose gradient contributions cancel exactly); a NaN max shifts by 0.
 * @example
 * logsumexp(tensor([1000, 1000]));                    // 1000.6931, no overflow
 */
export function logsumexp(x: Tensor, axes?: Axes, keepdims = false): Tensor {
  const ax = axesOf('logsumexp', x, axes);
  const m = max(x, ax, true);
  const safe = where(equal(m, m), m, 0); // NaN-free shift
  const out = add(log(sum(exp(sub(x, safe)), ax, true)), safe);
  return keepdims ? out : reshape(out, x.shape.filter((_, i) => !ax.includes(i)));
}

/**
 * exp(x) normalised to sum 1 along `axis` (shifted by the max, so large logits do not overflow).
 * @example
 * softmax(tensor([[1, 1, 1, 1]]));                    // [[0.25, 0.25, 0.25, 0.25]]
 */
export function softmax(x: Tensor, axis = -1): Tensor {
  const e = exp(sub(x, max(x, axis, true)));
  return div(e, sum(e, axis, true));
}

/**
 * log(softmax(x)) along `axis`, computed stably as x - logsumexp(x).
 * @example
 * const nll = neg(mean(sum(mul(logSoftmax(logits), oneHot(labels, 10)), -1)));   // cross-entropy
 */
export function logSoftmax(x: Tensor, axis = -1): Tensor {
  return sub(x, logsumexp(x, axis, true));
}

/**
 * Elementwise `max(x, 0)`.
 * @example
 * relu(tensor([-1, 2]));                              // [0, 2]
 */
export function relu(x: Tensor): Tensor {
  return maximum(x, 0);
}

/**
 * SiLU (swish): x * sigmoid(x).
 * @example
 * silu(tensor([0, 1]));                               // [0, 0.7311]
 */
export function silu(x: Tensor): Tensor {
  return mul(x, sigmoid(x));
}

/**
 * GELU, tanh approximation (Hendrycks & Gimpel): 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
 * @example
 * const h = gelu(add(matmul(x, w1), b1));
 */
export function gelu(x: Tensor): Tensor {
  const inner = mul(add(x, mul(mul(square(x), x), 0.044715)), Math.sqrt(2 / Math.PI));
  return mul(mul(x, 0.5), add(tanh(inner), 1));
}

/**
 * `x` limited to [lo, hi], e.g. `clip(x, -1, 1)`.
 * @example
 * clip(tensor([-2, 0.5, 3]), -1, 1);                  // [-1, 0.5, 1]
 */
export function clip(x: Tensor, lo: number, hi: number): Tensor {
  return minimum(maximum(x, lo), hi);
}

/** Normalises over `axes` to zero mean and unit variance: (x - mean) / sqrt(var + eps). */
function normalize(x: Tensor, axes: number[], eps: number): Tensor {
  const mu = mean(x, axes, true);
  const centred = sub(x, mu);
  const v = mean(square(centred), axes, true);
  return mul(centred, rsqrt(add(v, eps)));
}

/**
 * Group normalisation over NC... input (Wu & He 2018), optional per-channel affine. EDM's GroupNorm
 * uses eps 1e-5 and min(32, C / 4) groups; that choice belongs to the layer, not here.
 * @example
 * const x = random.normal(random.key(0), [2, 64, 8, 8]);
 * const y = groupNorm(x, 32, 1e-5, ones([64]), zeros([64]));   // 32 groups of 2 channels
 */
export function groupNorm(xIn: Tensor, groups: number, eps = 1e-5, weight?: Tensor, bias?: Tensor): Tensor {
  const x = expectTensor('groupNorm', xIn);
  if (x.rank < 2) throw new ShapeError(`groupNorm: expects [N, C, ...], got ${fmtShape(x.shape)}`);
  const [n, c] = x.shape as [number, number];
  if (!Number.isInteger(groups) || groups < 1 || c % groups !== 0) {
    throw new ShapeError(`groupNorm: ${c} channels cannot be split into ${groups} groups (x ${fmtShape(x.shape)})`);
  }
  const spatial = x.shape.slice(2);
  const g = reshape(x, [n, groups, c / groups, ...spatial]);
  const normed = reshape(normalize(g, g.shape.map((_, i) => i).slice(2), eps), x.shape);
  return affine('groupNorm', normed, c, [1, c, ...spatial.map(() => 1)], weight, bias);
}

/**
 * Layer normalisation over the last axis, optional affine.
 * @example
 * const tokens = random.normal(random.key(0), [2, 16, 64]);   // [B, L, D]
 * const y = layerNorm(tokens, 1e-6, ones([64]), zeros([64]));
 */
export function layerNorm(xIn: Tensor, eps = 1e-5, weight?: Tensor, bias?: Tensor): Tensor {
  const x = expectTensor('layerNorm', xIn);
  if (x.rank < 1) throw new ShapeError('layerNorm: expects rank >= 1');
  const c = x.shape[x.rank - 1]!;
  return affine('layerNorm', normalize(x, [x.rank - 1], eps), c, [c], weight, bias);
}

function affine(op: string, x: Tensor, c: number, shape: number[], weight?: Tensor, bias?: Tensor): Tensor {
  let out = x;
  for (const [name, p] of [['weight', weight], ['bias', bias]] as const) {
    if (p === undefined) continue;
    if (p.size !== c || p.rank !== 1) throw new ShapeError(`${op}: ${name} must be [${c}], got ${fmtShape(p.shape)}`);
    out = name === 'weight' ? mul(out, reshape(p, shape)) : add(out, reshape(p, shape));
  }
  return out;
}

/** Options of `scaledDotProductAttention`. */
export interface AttentionOptions {
  /** Default 1/sqrt(head dim). */
  readonly scale?: number;
  /** Boolean, broadcastable to [..., Lq, Lk]; false positions get no weight. */
  readonly mask?: Tensor;
}

/**
 * softmax(q k^T * scale) v over [..., L, D] tensors (Vaswani et al., eq. 1).
 * @example
 * const [q, k, v] = random.split(random.key(0), 3).map((r) => random.normal(r, [2, 4, 16, 32]));   // [B, heads, L, D]
 * const out = scaledDotProductAttention(q!, k!, v!);  // [2, 4, 16, 32]
 */
export function scaledDotProductAttention(q: Tensor, k: Tensor, v: Tensor, options: AttentionOptions = {}): Tensor {
  for (const [name, t] of [['q', q], ['k', k], ['v', v]] as const) {
    expectTensor('scaledDotProductAttention', t, name);
    if (t.rank < 2) throw new ShapeError(`scaledDotProductAttention: ${name} must be [..., L, D], got ${fmtShape(t.shape)}`);
  }
  const d = q.shape[q.rank - 1]!;
  if (k.shape[k.rank - 1] !== d) throw new ShapeError(`scaledDotProductAttention: q ${fmtShape(q.shape)} and k ${fmtShape(k.shape)} differ in head dim`);
  if (k.shape[k.rank - 2] !== v.shape[v.rank - 2]) throw new ShapeError(`scaledDotProductAttention: k ${fmtShape(k.shape)} and v ${fmtShape(v.shape)} differ in length`);
  let logits = mul(matmul(q, transpose(k)), options.scale ?? 1 / Math.sqrt(d));
  if (options.mask !== undefined) logits = where(options.mask, logits, -1e30);
  return matmul(softmax(logits, -1), v);
}

/**
 * Average pooling over NCHW with a square window (no padding).
 * @example
 * const x = random.normal(random.key(0), [1, 3, 32, 32]);
 * avgPool2d(x, 2);                                    // [1, 3, 16, 16]
 */
export function avgPool2d(x: Tensor, kernel: number, stride = kernel): Tensor {
  if (x.rank !== 4) throw new ShapeError(`avgPool2d: expects [N,C,H,W], got ${fmtShape(x.shape)}`);
  if (!isFloat(x.dtype)) throw new DTypeError(`avgPool2d: expects a float tensor, got ${x.dtype}`);
  const [n, c, h, w] = x.shape as [number, number, number, number];
  if (kernel > h || kernel > w) throw new ShapeError(`avgPool2d: window ${kernel} larger than ${fmtShape(x.shape)}`);
  const oh = Math.floor((h - kernel) / stride) + 1;
  const ow = Math.floor((w - kernel) / stride) + 1;
  let acc: Tensor | undefined;
  for (let i = 0; i < kernel; i++) {
    for (let j = 0; j < kernel; j++) {
      const s = slice(x, [0, 0, i, j], [n, c, i + (oh - 1) * stride + 1, j + (ow - 1) * stride + 1], [1, 1, stride, stride]);
      acc = acc === undefined ? s : add(acc, s);
    }
  }
  return div(acc!, kernel * kernel);
}

/**
 * Nearest-neighbour upsampling of NCHW by an integer factor.
 * @example
 * const x = random.normal(random.key(0), [1, 3, 16, 16]);
 * upsampleNearest2d(x, 2);                            // [1, 3, 32, 32]
 */
export function upsampleNearest2d(x: Tensor, factor = 2): Tensor {
  if (x.rank !== 4) throw new ShapeError(`upsampleNearest2d: expects [N,C,H,W], got ${fmtShape(x.shape)}`);
  const [n, c, h, w] = x.shape as [number, number, number, number];
  const b = broadcastTo(reshape(x, [n, c, h, 1, w, 1]), [n, c, h, factor, w, factor]);
  return reshape(b, [n, c, h * factor, w * factor]);
}

/**
 * int32 class indices -> one-hot floats along a new last axis.
 * @example
 * oneHot(tensor([2, 0], undefined, 'int32'), 3);      // [[0, 0, 1], [1, 0, 0]]
 */
export function oneHot(indices: Tensor, depth: number, dtype: Tensor['dtype'] = 'float32'): Tensor {
  if (indices.dtype !== 'int32') throw new DTypeError(`oneHot: indices must be int32, got ${indices.dtype}`);
  const shape = [...indices.shape, depth];
  return cast(equal(broadcastTo(reshape(indices, [...indices.shape, 1]), shape), iota(shape, -1)), dtype);
}

/**
 * Sum of squares of all entries.
 * @example
 * sumOfSquares(tensor([3, 4]));                       // 25
 */
export function sumOfSquares(x: Tensor): Tensor {
  return sum(square(x));
}

/**
 * `x` with a new axis of size 1 at `axis`, e.g. `expandDims(v, 0)` turns [n] into [1, n].
 * @example
 * expandDims(tensor([1, 2, 3]), -1);                  // [3] -> [3, 1]
 */
export function expandDims(x: Tensor, axis: number): Tensor {
  const ax = axis < 0 ? axis + x.rank + 1 : axis;
  if (ax < 0 || ax > x.rank) throw new ShapeError(`expandDims: axis ${axis} out of range for ${fmtShape(x.shape)}`);
  return reshape(x, [...x.shape.slice(0, ax), 1, ...x.shape.slice(ax)]);
}

/**
 * `x` without its axes of size 1 (or only `axes`, which must be 1).
 * @example
 * const x = random.normal(random.key(0), [4, 1, 8, 1]);
 * squeeze(x);                                         // [4, 8]
 * squeeze(x, 1);                                      // [4, 8, 1]
 */
export function squeeze(x: Tensor, axes?: Axes): Tensor {
  const ax = axes === undefined ? x.shape.flatMap((d, i) => (d === 1 ? [i] : [])) : axesOf('squeeze', x, axes);
  for (const a of ax) if (x.shape[a] !== 1) throw new ShapeError(`squeeze: axis ${a} of ${fmtShape(x.shape)} is not 1`);
  return reshape(x, x.shape.filter((_, i) => !ax.includes(i)));
}

/**
 * Splits along an axis into `sizes`.
 * @example
 * const [img, coords] = split(x, [3, 2], 1);          // [N, 5, H, W] -> [N, 3, H, W] and [N, 2, H, W]
 */
export function split(x: Tensor, sizes: readonly number[], axis = 0): Tensor[] {
  const ax = axesOf('split', x, axis)[0]!;
  if (sizes.reduce((a, b) => a + b, 0) !== x.shape[ax]) throw new ShapeError(`split: sizes [${sizes}] do not sum to axis ${ax} of ${fmtShape(x.shape)}`);
  let start = 0;
  return sizes.map((s) => {
    const starts = x.shape.map((_, i) => (i === ax ? start : 0));
    const ends = x.shape.map((d, i) => (i === ax ? start + s : d));
    start += s;
    return slice(x, starts, ends);
  });
}
