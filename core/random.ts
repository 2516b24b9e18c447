/**
 * JAX-style explicit randomness. A key is an int32 tensor of shape [2]; every draw is a pure function
 * of a key, computed by the `randomBits` primitive (Threefry-2x32), which both backends implement
 * bit for bit. Reuse of a key gives the same numbers: `split` it instead.
 */
import { isFloat, type DType } from './dtype.ts';
import { DTypeError, ShapeError, fmtShape } from './errors.ts';
import { add, cast, cos, expectTensor, floor, less, log, minimum, mul, randomBits, reshape, slice, sqrt, sub, tensor, uniformFromBits } from './ops.ts';
import { checkShape, shapesEqual, sizeOf, type Shape } from './shape.ts';
import type { Tensor } from './tensor.ts';

function checkKey(op: string, k: Tensor): Tensor {
  const key = expectTensor(op, k, 'key');
  if (key.dtype !== 'int32' || !shapesEqual(key.shape, [2])) {
    throw new ShapeError(`${op}: a key is an int32 tensor of shape [2] (from key(seed)), got ${key.dtype} ${fmtShape(key.shape)}`);
  }
  return key;
}

/**
 * A key from an integer seed (as JAX: high word 0 for seeds below 2^32).
 * @example
 * const k = key(0);                                   // int32 [2]
 * const x = normal(k, [2, 3]);
 */
export function key(seed: number): Tensor {
  if (!Number.isSafeInteger(seed)) throw new ShapeError(`key: seed must be a safe integer, got ${seed}`);
  const hi = Math.floor(seed / 2 ** 32);
  return tensor([hi | 0, seed >>> 0 | 0], [2], 'int32');
}

/**
 * `n` independent keys. `split(k, n)[i]` equals `foldIn(k, i)`.
 * @example
 * const [kData, kNoise] = split(key(0));
 * const keys = split(key(1), 8);                      // 8 independent keys
 */
export function split(k: Tensor, n = 2): Tensor[] {
  const key = checkKey('split', k);
  if (!Number.isInteger(n) || n < 1) throw new ShapeError(`split: n must be an integer >= 1, got ${n}`);
  const bits = randomBits(key, [2 * n]);
  return Array.from({ length: n }, (_, i) => slice(bits, [2 * i], [2 * i + 2]));
}

/**
 * A new key from a key and an integer, e.g. a step number.
 * @example
 * const stepKey = foldIn(runKey, step);               // a fresh key per training step
 */
export function foldIn(k: Tensor, data: number): Tensor {
  return randomBits(checkKey('foldIn', k), [2], data);
}

function uniform01(key: Tensor, shape: Shape): Tensor {
  return uniformFromBits(randomBits(key, shape));
}

function checkFloat(op: string, dtype: DType): void {
  if (!isFloat(dtype)) throw new DTypeError(`${op}: dtype must be float32 or float64, got ${dtype}`);
}

/**
 * Uniform on [minval, maxval).
 * @example
 * const t = uniform(key(0), [64], 1e-3, 1);           // float32 in [0.001, 1)
 */
export function uniform(k: Tensor, shape: Shape, minval = 0, maxval = 1, dtype: DType = 'float32'): Tensor {
  checkShape('uniform', shape);
  checkFloat('uniform', dtype);
  const u = cast(uniform01(checkKey('uniform', k), shape), dtype);
  return minval === 0 && maxval === 1 ? u : add(mul(u, maxval - minval), minval);
}

/**
 * Standard normal by the Box-Muller transform of two uniforms per value.
 * @example
 * const noise = normal(key(0), [4, 3, 32, 32]);       // N(0, 1)
 * const scaled = mul(normal(key(1), [4, 3, 32, 32]), 0.5);   // N(0, 0.25)
 */
export function normal(k: Tensor, shape: Shape, dtype: DType = 'float32'): Tensor {
  checkShape('normal', shape);
  checkFloat('normal', dtype);
  const n = sizeOf(shape);
  const u = cast(uniform01(checkKey('normal', k), [2, n]), dtype);
  const u1 = sub(1, reshape(slice(u, [0, 0], [1, n]), shape)); // in (0, 1]: log is finite
  const u2 = reshape(slice(u, [1, 0], [2, n]), shape);
  return mul(sqrt(mul(log(u1), -2)), cos(mul(u2, 2 * Math.PI)));
}

/**
 * True with probability p.
 * @example
 * const keep = bernoulli(key(0), 0.9, [8, 16]);       // bool, true with probability 0.9
 */
export function bernoulli(k: Tensor, p: number, shape: Shape): Tensor {
  if (!(p >= 0 && p <= 1)) throw new ShapeError(`bernoulli: p must be in [0, 1], got ${p}`);
  return less(uniform01(checkKey('bernoulli', k), shape), p);
}

/**
 * Integers uniform on [lo, hi).
 * @example
 * const labels = randint(key(0), [32], 0, 10);        // int32 in [0, 10)
 */
export function randint(k: Tensor, shape: Shape, lo: number, hi: number): Tensor {
  if (!Number.isInteger(lo) || !Number.isInteger(hi) || hi <= lo) throw new ShapeError(`randint: need integers lo < hi, got [${lo}, ${hi})`);
  if (hi - lo > 2 ** 24) throw new ShapeError(`randint: range ${hi - lo} exceeds 2^24 (float32 resolution of the draw)`);
  const u = uniform01(checkKey('randint', k), shape);
  // The clamp guards the float rounding of u * range up to range itself.
  return add(minimum(cast(floor(mul(u, hi - lo)), 'int32'), hi - lo - 1), lo);
}
