/**
 * Primitive op builders. Each is pure: it checks shapes and dtypes, then returns a new graph node.
 * Nothing here computes; evaluation happens in a backend when a value is read or a jit runs.
 */
import { allocate, coerceScalar, isFloat, matchesDType, type DType, type TypedArray } from './dtype.ts';
import { DTypeError, ShapeError, TreeError, fmtShape } from './errors.ts';
import { broadcastShapes, checkShape, normalizeAxes, normalizeAxis, shapesEqual, sizeOf, type Shape } from './shape.ts';
import { COMPARISONS, Tensor, isTensor, type BinaryFn, type ConvAttrs, type Marker, type Prim, type UnaryFn } from './tensor.ts';

/** A tensor, or a number that takes the other operand's dtype (`add(x, 1)`). */
export type TensorLike = Tensor | number;

/**
 * Names the argument that is not a tensor.
 * @example
 * const x = expectTensor('myOp', input, 'weight');   // throws a TreeError naming myOp's weight unless a Tensor
 */
export function expectTensor(op: string, x: unknown, what = 'argument'): Tensor {
  if (isTensor(x)) return x;
  const got = x === null ? 'null' : Array.isArray(x) ? 'Array' : typeof x === 'object' ? (x.constructor?.name ?? 'object') : typeof x;
  throw new TreeError(`${op}: ${what} is not a Tensor (got ${got}${typeof x === 'number' ? ` ${x}` : ''})`);
}

function node(prim: Prim, inputs: readonly Tensor[], shape: Shape, dtype: DType): Tensor {
  return new Tensor(prim, inputs, Object.freeze([...shape]), dtype);
}

// ---------------------------------------------------------------- creation

type Nested = number | boolean | readonly Nested[];

function inferShape(x: Nested): number[] {
  const shape: number[] = [];
  let cur: Nested = x;
  while (Array.isArray(cur)) {
    shape.push(cur.length);
    cur = (cur as readonly Nested[])[0] ?? 0;
  }
  return shape;
}

/**
 * A concrete tensor from nested arrays, a typed array or a number. Default dtype float32.
 * @example
 * const a = tensor([[1, 2], [3, 4]]);                 // float32 [2, 2]
 * const b = tensor(new Int32Array([1, 2, 3, 4, 5, 6]), [2, 3], 'int32');
 */
export function tensor(values: Nested | TypedArray, shape?: Shape, dtype: DType = 'float32'): Tensor {
  const inferred = ArrayBuffer.isView(values) ? [values.length] : inferShape(values as Nested);
  const s = shape ?? inferred;
  checkShape('tensor', s);
  const n = sizeOf(s);
  let data: TypedArray;
  if (ArrayBuffer.isView(values)) {
    if (values.length !== n) throw new ShapeError(`tensor: ${values.length} values do not fill shape ${fmtShape(s)} (${n} elements)`);
    // Always a copy: the caller may change its array later, a tensor never changes.
    if (matchesDType(values, dtype)) {
      data = values.slice();
    } else {
      data = allocate(dtype, n);
      for (let i = 0; i < n; i++) data[i] = coerceScalar(values[i]!, dtype);
    }
  } else {
    const flat = (Array.isArray(values) ? (values as unknown[]).flat(Infinity) : [values]) as (number | boolean)[];
    if (flat.length !== n) throw new ShapeError(`tensor: ${flat.length} values do not fill shape ${fmtShape(s)} (${n} elements)`);
    data = allocate(dtype, n);
    flat.forEach((v, i) => {
      if (typeof v !== 'number' && typeof v !== 'boolean') throw new TreeError(`tensor: element ${i} is ${typeof v}, not a number`);
      data[i] = coerceScalar(Number(v), dtype);
    });
  }
  return new Tensor({ op: 'const' }, [], Object.freeze([...s]), dtype, { kind: 'host', data });
}

/**
 * A scalar embedded in the program (no upload).
 * @example
 * const half = scalar(0.5);                           // float32 [], a constant of the program
 */
export function scalar(value: number, dtype: DType = 'float32'): Tensor {
  if (typeof value !== 'number') throw new TreeError(`scalar: value is ${typeof value}, not a number`);
  return node({ op: 'literal', value: coerceScalar(value, dtype) }, [], [], dtype);
}

/**
 * A tensor of `shape` filled with `value`, e.g. `full([2, 3], 0.5)`.
 * @example
 * full([2], 7, 'int32');                             // int32 [7, 7]
 */
export function full(shape: Shape, value: number, dtype: DType = 'float32'): Tensor {
  checkShape('full', shape);
  return broadcastTo(scalar(value, dtype), shape);
}

/**
 * A tensor of zeros, e.g. `zeros([32])` for a bias.
 * @example
 * zeros([2, 3], 'int32');                            // int32 [[0, 0, 0], [0, 0, 0]]
 */
export const zeros = (shape: Shape, dtype: DType = 'float32'): Tensor => full(shape, 0, dtype);
/**
 * A tensor of ones, e.g. `ones([4, 4])`.
 * @example
 * const w = ones([4, 4], 'float64');
 */
export const ones = (shape: Shape, dtype: DType = 'float32'): Tensor => full(shape, 1, dtype);
/**
 * Zeros with `x`'s shape and dtype (Adam's initial moments).
 * @example
 * const m = zerosLike(param);                         // Adam's first moment
 */
export const zerosLike = (x: Tensor): Tensor => zeros(x.shape, x.dtype);
/**
 * Ones with `x`'s shape and dtype.
 * @example
 * const scale = onesLike(x);
 */
export const onesLike = (x: Tensor): Tensor => ones(x.shape, x.dtype);

/**
 * The index along `axis` at every position of `shape`.
 * @example
 * const cols = iota([2, 3], 1);                       // int32 [[0, 1, 2], [0, 1, 2]]
 */
export function iota(shape: Shape, axis = 0, dtype: DType = 'int32'): Tensor {
  checkShape('iota', shape);
  return node({ op: 'iota', axis: normalizeAxis('iota', axis, shape.length) }, [], shape, dtype);
}

/**
 * `[0, 1, ..., n - 1]` (int32 by default), e.g. `arange(5)`.
 * @example
 * const idx = arange(5);                              // int32 [0, 1, 2, 3, 4]
 */
export const arange = (n: number, dtype: DType = 'int32'): Tensor => iota([n], 0, dtype);

// ---------------------------------------------------------------- elementwise

const FLOAT_ONLY: ReadonlySet<UnaryFn> = new Set(['exp', 'log', 'sin', 'cos', 'sqrt', 'rsqrt', 'tanh', 'sigmoid', 'reciprocal', 'floor', 'isFinite']);

/**
 * The elementwise primitive `fn` on `x`; the named wrappers (`exp`, `tanh`, ...) are the usual way in.
 * @example
 * const y = unary('exp', x);                          // the same node as exp(x)
 */
export function unary(fn: UnaryFn, xIn: Tensor): Tensor {
  const x = expectTensor(fn, xIn);
  if (fn === 'logicalNot') {
    if (x.dtype !== 'bool') throw new DTypeError(`logicalNot: expects bool, got ${x.dtype}`);
    return node({ op: 'unary', fn }, [x], x.shape, 'bool');
  }
  if (fn === 'uniformFromBits') {
    if (x.dtype !== 'int32') throw new DTypeError(`uniformFromBits: expects int32 bits, got ${x.dtype}`);
    return node({ op: 'unary', fn }, [x], x.shape, 'float32');
  }
  if (x.dtype === 'bool') throw new DTypeError(`${fn}: not defined for bool ${fmtShape(x.shape)}`);
  if (FLOAT_ONLY.has(fn) && !isFloat(x.dtype)) throw new DTypeError(`${fn}: expects a float tensor, got ${x.dtype} ${fmtShape(x.shape)}`);
  return node({ op: 'unary', fn }, [x], x.shape, fn === 'isFinite' ? 'bool' : x.dtype);
}

/**
 * Elementwise `-x`.
 * @example
 * neg(tensor([1, -2]));                               // [-1, 2]
 */
export const neg = (x: Tensor) => unary('neg', x);
/**
 * Elementwise `e^x`.
 * @example
 * exp(tensor([0, 1]));                                // [1, 2.71828]
 */
export const exp = (x: Tensor) => unary('exp', x);
/**
 * Elementwise natural logarithm.
 * @example
 * log(tensor([1, Math.E]));                           // [0, 1]
 */
export const log = (x: Tensor) => unary('log', x);
/**
 * Elementwise sine, e.g. `sin(mul(x, 3))` (see the README's MLP example).
 * @example
 * sin(tensor([0, Math.PI / 2]));                      // [0, 1]
 */
export const sin = (x: Tensor) => unary('sin', x);
/**
 * Elementwise cosine.
 * @example
 * cos(tensor([0, Math.PI]));                          // [1, -1]
 */
export const cos = (x: Tensor) => unary('cos', x);
/**
 * Elementwise square root.
 * @example
 * sqrt(tensor([4, 9]));                               // [2, 3]
 */
export const sqrt = (x: Tensor) => unary('sqrt', x);
/**
 * Elementwise `1 / sqrt(x)`.
 * @example
 * rsqrt(tensor([4, 16]));                             // [0.5, 0.25]
 */
export const rsqrt = (x: Tensor) => unary('rsqrt', x);
/**
 * Elementwise hyperbolic tangent, e.g. `tanh(add(matmul(x, w), b))`.
 * @example
 * const h = tanh(add(matmul(x, w), b));
 */
export const tanh = (x: Tensor) => unary('tanh', x);
/**
 * Elementwise logistic function `1 / (1 + e^-x)`, stable for large |x|.
 * @example
 * sigmoid(tensor([0, 100]));                          // [0.5, 1]
 */
export const sigmoid = (x: Tensor) => unary('sigmoid', x);
/**
 * Elementwise absolute value.
 * @example
 * abs(tensor([-1.5, 2]));                             // [1.5, 2]
 */
export const abs = (x: Tensor) => unary('abs', x);
/**
 * Elementwise `1 / x`.
 * @example
 * reciprocal(tensor([2, 4]));                         // [0.5, 0.25]
 */
export const reciprocal = (x: Tensor) => unary('reciprocal', x);
/**
 * Elementwise floor (its gradient is zero).
 * @example
 * floor(tensor([1.7, -1.2]));                         // [1, -2]
 */
export const floor = (x: Tensor) => unary('floor', x);
/**
 * Elementwise sign: -1, 0 or 1.
 * @example
 * sign(tensor([-3, 0, 2]));                           // [-1, 0, 1]
 */
export const sign = (x: Tensor) => unary('sign', x);
/**
 * Elementwise negation of a bool tensor.
 * @example
 * logicalNot(greater(x, 0));                          // x <= 0, or NaN
 */
export const logicalNot = (x: Tensor) => unary('logicalNot', x);
/**
 * Elementwise test for a finite value (bool); `where(isFinite(g), g, 0)` zeroes NaN and infinities.
 * @example
 * const safe = where(isFinite(g), g, 0);              // NaN and infinities become 0
 */
export const isFinite = (x: Tensor) => unary('isFinite', x);

/** Brings two operands (numbers adopt the tensor's dtype) to one broadcast shape. */
function operands(op: string, a: TensorLike, b: TensorLike): [Tensor, Tensor] {
  if (typeof a === 'number' && typeof b === 'number') throw new TreeError(`${op}: both arguments are numbers; at least one must be a Tensor`);
  const ta = typeof a === 'number' ? scalar(a, (b as Tensor).dtype) : expectTensor(op, a, 'argument 0');
  const tb = typeof b === 'number' ? scalar(b, ta.dtype) : expectTensor(op, b, 'argument 1');
  if (ta.dtype !== tb.dtype) {
    throw new DTypeError(`${op}: dtypes differ: ${ta.dtype} ${fmtShape(ta.shape)} and ${tb.dtype} ${fmtShape(tb.shape)}`);
  }
  const shape = broadcastShapes(op, ta.shape, tb.shape);
  return [broadcastTo(ta, shape), broadcastTo(tb, shape)];
}

/**
 * The elementwise binary primitive `fn`, broadcasting `a` and `b` (NumPy rules); `add`, `mul`, ... wrap it.
 * @example
 * const y = binary('add', x, 1);                      // the same node as add(x, 1)
 */
export function binary(fn: BinaryFn, a: TensorLike, b: TensorLike): Tensor {
  const [x, y] = operands(fn, a, b);
  const logical = fn === 'and' || fn === 'or';
  if (logical !== (x.dtype === 'bool') && !(COMPARISONS.has(fn) && (fn === 'eq' || fn === 'ne'))) {
    throw new DTypeError(`${fn}: not defined for ${x.dtype} ${fmtShape(x.shape)}`);
  }
  return node({ op: 'binary', fn }, [x, y], x.shape, COMPARISONS.has(fn) ? 'bool' : x.dtype);
}

/**
 * Elementwise `a + b` with broadcasting, e.g. `add(matmul(x, w), b)`.
 * @example
 * const y = add(matmul(x, w), b);                     // b [n] broadcasts over the rows of [m, n]
 */
export const add = (a: TensorLike, b: TensorLike) => binary('add', a, b);
/**
 * Elementwise `a - b` with broadcasting.
 * @example
 * const err = sub(pred, target);
 */
export const sub = (a: TensorLike, b: TensorLike) => binary('sub', a, b);
/**
 * Elementwise `a * b` with broadcasting, e.g. `mul(g, 0.2)`.
 * @example
 * const g2 = mul(g, 0.2);
 */
export const mul = (a: TensorLike, b: TensorLike) => binary('mul', a, b);
/**
 * Elementwise `a / b` with broadcasting.
 * @example
 * const normalized = div(x, sqrt(add(variance(x), 1e-5)));
 */
export const div = (a: TensorLike, b: TensorLike) => binary('div', a, b);
/**
 * Elementwise `a ** b` with broadcasting.
 * @example
 * pow(tensor([2, 3]), 2);                             // [4, 9]
 */
export const pow = (a: TensorLike, b: TensorLike) => binary('pow', a, b);
/**
 * Elementwise larger of `a` and `b`.
 * @example
 * maximum(tensor([1, 5]), tensor([3, 2]));            // [3, 5]
 */
export const maximum = (a: TensorLike, b: TensorLike) => binary('max', a, b);
/**
 * Elementwise smaller of `a` and `b`.
 * @example
 * minimum(x, 1);                                      // x capped at 1
 */
export const minimum = (a: TensorLike, b: TensorLike) => binary('min', a, b);
/**
 * Elementwise `a < b` (bool).
 * @example
 * less(tensor([1, 5]), 3);                            // bool [true, false]
 */
export const less = (a: TensorLike, b: TensorLike) => binary('lt', a, b);
/**
 * Elementwise `a <= b` (bool).
 * @example
 * lessEqual(tensor([1, 3]), 3);                       // bool [true, true]
 */
export const lessEqual = (a: TensorLike, b: TensorLike) => binary('le', a, b);
/**
 * Elementwise `a > b` (bool), e.g. `where(greater(x, 0), x, 0)`.
 * @example
 * const relu = where(greater(x, 0), x, 0);
 */
export const greater = (a: TensorLike, b: TensorLike) => binary('gt', a, b);
/**
 * Elementwise `a >= b` (bool).
 * @example
 * greaterEqual(tensor([1, 3]), 3);                    // bool [false, true]
 */
export const greaterEqual = (a: TensorLike, b: TensorLike) => binary('ge', a, b);
/**
 * Elementwise `a == b` (bool).
 * @example
 * const correct = mean(cast(equal(predicted, labels), 'float32'));   // accuracy
 */
export const equal = (a: TensorLike, b: TensorLike) => binary('eq', a, b);
/**
 * Elementwise `a != b` (bool).
 * @example
 * notEqual(tensor([1, 2]), 2);                        // bool [true, false]
 */
export const notEqual = (a: TensorLike, b: TensorLike) => binary('ne', a, b);
/**
 * Elementwise `a && b` of bool tensors.
 * @example
 * const inside = logicalAnd(greaterEqual(x, 0), less(x, 1));
 */
export const logicalAnd = (a: TensorLike, b: TensorLike) => binary('and', a, b);
/**
 * Elementwise `a || b` of bool tensors.
 * @example
 * const outside = logicalOr(less(x, 0), greaterEqual(x, 1));
 */
export const logicalOr = (a: TensorLike, b: TensorLike) => binary('or', a, b);

/**
 * Elementwise choice: `cond ? a : b`, broadcasting all three.
 * @example
 * const y = where(greater(x, 0), x, mul(x, 0.1));     // leaky ReLU
 */
export function where(condIn: Tensor, a: TensorLike, b: TensorLike): Tensor {
  const cond = expectTensor('where', condIn, 'condition');
  if (cond.dtype !== 'bool') throw new DTypeError(`where: condition must be bool, got ${cond.dtype} ${fmtShape(cond.shape)}`);
  const [x, y] = operands('where', a, b);
  const shape = broadcastShapes('where', cond.shape, x.shape);
  return node({ op: 'select' }, [broadcastTo(cond, shape), broadcastTo(x, shape), broadcastTo(y, shape)], shape, x.dtype);
}

/**
 * `x` converted to `dtype`, e.g. `cast(mask, 'float32')`.
 * @example
 * const m = cast(greater(x, 0), 'float32');           // 1 where x > 0, else 0
 */
export function cast(xIn: Tensor, dtype: DType): Tensor {
  const x = expectTensor('cast', xIn);
  if (x.dtype === dtype) return x;
  return node({ op: 'cast' }, [x], x.shape, dtype);
}

// ---------------------------------------------------------------- reductions

function reduce(fn: 'sum' | 'max', xIn: Tensor, axes: number | readonly number[] | undefined, keepdims: boolean): Tensor {
  const x = expectTensor(fn, xIn);
  if (x.dtype === 'bool') throw new DTypeError(`${fn}: not defined for bool; cast first`);
  const ax = axes === undefined ? x.shape.map((_, i) => i) : normalizeAxes(fn, typeof axes === 'number' ? [axes] : axes, x.rank);
  if (fn === 'max' && ax.some((a) => x.shape[a] === 0)) {
    throw new ShapeError(`max: reduction over an empty axis of ${fmtShape(x.shape)}`);
  }
  const kept = x.shape.filter((_, i) => !ax.includes(i));
  const out = ax.length === 0 ? x : node({ op: 'reduce', fn, axes: ax }, [x], kept, x.dtype);
  return keepdims ? reshape(out, x.shape.map((d, i) => (ax.includes(i) ? 1 : d))) : out;
}

/**
 * Sum over `axes` (all by default), e.g. `sum(square(x))` or `sum(x, 1, true)`.
 * @example
 * const total = sum(square(x));                       // []
 * const rows = sum(x, 1, true);                       // [m, n] -> [m, 1]
 */
export const sum = (x: Tensor, axes?: number | readonly number[], keepdims = false) => reduce('sum', x, axes, keepdims);
/**
 * Maximum over `axes` (all by default).
 * @example
 * const rowMax = max(x, -1, true);                    // [m, n] -> [m, 1]
 */
export const max = (x: Tensor, axes?: number | readonly number[], keepdims = false) => reduce('max', x, axes, keepdims);

// ---------------------------------------------------------------- movement

/**
 * `x` with a new shape of the same size; one entry may be -1, e.g. `reshape(x, [B, -1])`.
 * @example
 * const flat = reshape(images, [images.shape[0]!, -1]);   // [B, C, H, W] -> [B, C*H*W]
 */
export function reshape(xIn: Tensor, shapeIn: Shape): Tensor {
  const x = expectTensor('reshape', xIn);
  const unknown = shapeIn.filter((d) => d === -1).length;
  if (unknown > 1) throw new ShapeError(`reshape: more than one -1 in ${fmtShape(shapeIn)}`);
  let shape = [...shapeIn];
  if (unknown === 1) {
    const known = sizeOf(shape.filter((d) => d !== -1));
    if (known === 0 || x.size % known !== 0) throw new ShapeError(`reshape: cannot infer -1 reshaping ${fmtShape(x.shape)} to ${fmtShape(shapeIn)}`);
    shape = shape.map((d) => (d === -1 ? x.size / known : d));
  }
  checkShape('reshape', shape);
  if (sizeOf(shape) !== x.size) {
    throw new ShapeError(`reshape: ${fmtShape(x.shape)} (${x.size} elements) cannot become ${fmtShape(shapeIn)} (${sizeOf(shape)} elements)`);
  }
  if (shapesEqual(shape, x.shape)) return x;
  return node({ op: 'reshape' }, [x], shape, x.dtype);
}

/**
 * `x` with its axes reordered: axis i of the result is axis `perm[i]` of `x`, e.g. `permute(x, [0, 2, 3, 1])`.
 * @example
 * const nhwc = permute(x, [0, 2, 3, 1]);              // [N, C, H, W] -> [N, H, W, C]
 */
export function permute(xIn: Tensor, perm: readonly number[]): Tensor {
  const x = expectTensor('permute', xIn);
  if (perm.length !== x.rank || normalizeAxes('permute', perm, x.rank).some((a, i) => a !== i)) {
    throw new ShapeError(`permute: [${perm.join(',')}] is not a permutation of the axes of ${fmtShape(x.shape)}`);
  }
  const p = perm.map((a) => (a < 0 ? a + x.rank : a));
  if (p.every((a, i) => a === i)) return x;
  return node({ op: 'permute', perm: p }, [x], p.map((a) => x.shape[a]!), x.dtype);
}

/**
 * Swaps the last two axes.
 * @example
 * const wt = transpose(w);                            // [..., m, n] -> [..., n, m]
 */
export function transpose(x: Tensor): Tensor {
  if (x.rank < 2) throw new ShapeError(`transpose: needs rank >= 2, got ${fmtShape(x.shape)}`);
  const perm = x.shape.map((_, i) => i);
  [perm[x.rank - 2], perm[x.rank - 1]] = [x.rank - 1, x.rank - 2];
  return permute(x, perm);
}

/**
 * `x` repeated along new leading axes and along axes of size 1 to `shape` (NumPy rules).
 * @example
 * const b = broadcastTo(tensor([1, 2, 3]), [4, 3]);   // the row repeated 4 times
 */
export function broadcastTo(xIn: Tensor, shape: Shape): Tensor {
  const x = expectTensor('broadcastTo', xIn);
  checkShape('broadcastTo', shape);
  const off = shape.length - x.rank;
  if (off < 0 || x.shape.some((d, i) => d !== 1 && d !== shape[off + i])) {
    throw new ShapeError(`broadcastTo: ${fmtShape(x.shape)} cannot be broadcast to ${fmtShape(shape)}`);
  }
  if (shapesEqual(x.shape, shape)) return x;
  return node({ op: 'broadcast' }, [x], shape, x.dtype);
}

/**
 * Python-style slice per axis: [start, end) with a positive step; missing entries take the whole axis.
 * @example
 * const x = tensor([[0, 1, 2, 3], [4, 5, 6, 7]]);
 * slice(x, [0, 1], [2, 3]);                           // [[1, 2], [5, 6]]
 * slice(x, [1, 0], undefined, [1, 2]);                // [[4, 6]]
 */
export function slice(xIn: Tensor, starts: readonly number[], ends?: readonly number[], strides?: readonly number[]): Tensor {
  const x = expectTensor('slice', xIn);
  const st: number[] = [];
  const out: number[] = [];
  const sd: number[] = [];
  for (let i = 0; i < x.rank; i++) {
    const dim = x.shape[i]!;
    const s = starts[i] ?? 0;
    const e = ends?.[i] ?? dim;
    const k = strides?.[i] ?? 1;
    if (!Number.isInteger(k) || k < 1) throw new ShapeError(`slice: stride ${k} on axis ${i} must be an integer >= 1`);
    if (s < 0 || e > dim || s > e) {
      throw new ShapeError(`slice: range [${s}, ${e}) on axis ${i} is outside ${fmtShape(x.shape)}`);
    }
    st.push(s);
    sd.push(k);
    out.push(Math.ceil((e - s) / k));
  }
  if (starts.length > x.rank || (ends?.length ?? 0) > x.rank) throw new ShapeError(`slice: more ranges than axes of ${fmtShape(x.shape)}`);
  if (shapesEqual(out, x.shape)) return x;
  return node({ op: 'slice', starts: st, strides: sd }, [x], out, x.dtype);
}

/**
 * Pads each axis with `lo`/`hi` elements of `value`, and `interior` between neighbours.
 * @example
 * pad(tensor([1, 2]), [1], [2]);                      // [0, 1, 2, 0, 0]
 * pad(tensor([1, 2]), [0], [0], 0, [1]);              // [1, 0, 2]
 */
export function pad(xIn: Tensor, lo: readonly number[], hi: readonly number[], value = 0, interior?: readonly number[]): Tensor {
  const x = expectTensor('pad', xIn);
  const inter = interior ?? x.shape.map(() => 0);
  if (lo.length !== x.rank || hi.length !== x.rank || inter.length !== x.rank) {
    throw new ShapeError(`pad: need ${x.rank} entries per side for ${fmtShape(x.shape)}, got lo [${lo}], hi [${hi}]`);
  }
  if ([...lo, ...hi, ...inter].some((p) => !Number.isInteger(p) || p < 0)) {
    throw new ShapeError(`pad: amounts must be integers >= 0, got lo [${lo}], hi [${hi}], interior [${inter}]`);
  }
  const shape = x.shape.map((d, i) => lo[i]! + d + Math.max(d - 1, 0) * inter[i]! + hi[i]!);
  if (shapesEqual(shape, x.shape)) return x;
  return node({ op: 'pad', lo: [...lo], hi: [...hi], interior: [...inter], value: coerceScalar(value, x.dtype) }, [x], shape, x.dtype);
}

/**
 * Tensors joined along `axis`; all other axes must agree, e.g. `concat([x, coords], 1)`.
 * @example
 * const withCoords = concat([x, coords], 1);          // [N, C, H, W] and [N, 2, H, W] -> [N, C + 2, H, W]
 */
export function concat(xsIn: readonly Tensor[], axis = 0): Tensor {
  if (!Array.isArray(xsIn) || xsIn.length === 0) throw new ShapeError('concat: needs a non-empty array of tensors');
  const xs = xsIn.map((x, i) => expectTensor('concat', x, `element ${i}`));
  const first = xs[0]!;
  const ax = normalizeAxis('concat', axis, first.rank);
  for (const x of xs) {
    if (x.dtype !== first.dtype) throw new DTypeError(`concat: dtypes differ: ${first.dtype} and ${x.dtype}`);
    if (x.rank !== first.rank || x.shape.some((d, i) => i !== ax && d !== first.shape[i])) {
      throw new ShapeError(`concat: shapes differ off axis ${ax}: ${xs.map((t) => fmtShape(t.shape)).join(', ')}`);
    }
  }
  if (xs.length === 1) return first;
  const shape = first.shape.map((d, i) => (i === ax ? xs.reduce((s, x) => s + x.shape[ax]!, 0) : d));
  return node({ op: 'concat', axis: ax }, xs, shape, first.dtype);
}

/**
 * Tensors of one shape stacked along a new `axis`.
 * @example
 * stack([tensor([1, 2]), tensor([3, 4])]);            // [[1, 2], [3, 4]]
 * stack([tensor([1, 2]), tensor([3, 4])], 1);         // [[1, 3], [2, 4]]
 */
export function stack(xs: readonly Tensor[], axis = 0): Tensor {
  if (xs.length === 0) throw new ShapeError('stack: needs a non-empty array of tensors');
  const rank = xs[0]!.rank + 1;
  const ax = normalizeAxis('stack', axis, rank);
  return concat(xs.map((x) => reshape(x, [...x.shape.slice(0, ax), 1, ...x.shape.slice(ax)])), ax);
}

// ---------------------------------------------------------------- linear algebra

/**
 * Batched matrix product; batch dimensions broadcast (NumPy `matmul` rule for rank >= 2).
 * @example
 * const y = matmul(random.normal(random.key(0), [8, 3]), ones([3, 5]));   // [8, 5]
 * const batched = matmul(q, transpose(k));           // [B, L, D] x [B, D, L] -> [B, L, L]
 */
export function matmul(aIn: Tensor, bIn: Tensor): Tensor {
  const a = expectTensor('matmul', aIn, 'argument 0');
  const b = expectTensor('matmul', bIn, 'argument 1');
  if (a.rank < 2 || b.rank < 2) throw new ShapeError(`matmul: operands need rank >= 2: ${fmtShape(a.shape)} x ${fmtShape(b.shape)}`);
  if (a.dtype !== b.dtype || !isFloat(a.dtype)) throw new DTypeError(`matmul: needs two float tensors of one dtype, got ${a.dtype} and ${b.dtype}`);
  const [m, k] = a.shape.slice(-2) as [number, number];
  const [k2, n] = b.shape.slice(-2) as [number, number];
  if (k !== k2) throw new ShapeError(`matmul: inner dimensions differ: ${fmtShape(a.shape)} x ${fmtShape(b.shape)}`);
  const batch = broadcastShapes('matmul', a.shape.slice(0, -2), b.shape.slice(0, -2));
  const ab = broadcastTo(a, [...batch, m, k]);
  const bb = broadcastTo(b, [...batch, k, n]);
  return node({ op: 'matmul' }, [ab, bb], [...batch, m, n], a.dtype);
}

/** Stride, padding and dilation (a number or one per spatial axis) and groups of a convolution. */
export interface ConvOptions {
  stride?: number | readonly [number, number];
  padding?: number | readonly [number, number];
  dilation?: number | readonly [number, number];
  groups?: number;
}

function pair(op: string, name: string, v: number | readonly [number, number] | undefined, dflt: number, min: number): [number, number] {
  const p: [number, number] = v === undefined ? [dflt, dflt] : typeof v === 'number' ? [v, v] : [v[0], v[1]];
  if (p.some((x) => !Number.isInteger(x) || x < min)) throw new ShapeError(`${op}: ${name} must be integers >= ${min}, got [${p}]`);
  return p;
}

/**
 * Checks a convolution's options and fills in the defaults (stride 1, padding 0, dilation 1, groups 1).
 * @example
 * convAttrs('myConv', { stride: 2, padding: [1, 0] });
 * // { stride: [2, 2], padding: [1, 0], dilation: [1, 1], groups: 1 }
 */
export function convAttrs(op: string, o: ConvOptions = {}): ConvAttrs {
  const groups = o.groups ?? 1;
  if (!Number.isInteger(groups) || groups < 1) throw new ShapeError(`${op}: groups must be an integer >= 1, got ${groups}`);
  return {
    stride: pair(op, 'stride', o.stride, 1, 1),
    padding: pair(op, 'padding', o.padding, 0, 0),
    dilation: pair(op, 'dilation', o.dilation, 1, 1),
    groups,
  };
}

/**
 * The output size of a convolution along one spatial axis.
 * @example
 * convOutSize(32, 3, 2, 1, 1);                        // 16: a 3x3 kernel, stride 2, padding 1
 */
export function convOutSize(inSize: number, k: number, stride: number, pad: number, dil: number): number {
  return Math.floor((inSize + 2 * pad - dil * (k - 1) - 1) / stride) + 1;
}

function checkConv(op: string, x: Shape, w: Shape, a: ConvAttrs, dtype: DType): number[] {
  if (x.length !== 4 || w.length !== 4) throw new ShapeError(`${op}: expects x [N,C,H,W] and w [O,C/groups,KH,KW], got ${fmtShape(x)} and ${fmtShape(w)}`);
  if (!isFloat(dtype)) throw new DTypeError(`${op}: needs float tensors, got ${dtype}`);
  const [n, c, h, wd] = x as [number, number, number, number];
  const [o, cg, kh, kw] = w as [number, number, number, number];
  if (c % a.groups !== 0 || o % a.groups !== 0) throw new ShapeError(`${op}: channels ${c} in / ${o} out are not divisible by groups ${a.groups}`);
  if (cg * a.groups !== c) throw new ShapeError(`${op}: weight ${fmtShape(w)} expects ${cg * a.groups} input channels, x ${fmtShape(x)} has ${c}`);
  const oh = convOutSize(h, kh, a.stride[0], a.padding[0], a.dilation[0]);
  const ow = convOutSize(wd, kw, a.stride[1], a.padding[1], a.dilation[1]);
  if (oh < 1 || ow < 1) throw new ShapeError(`${op}: kernel ${fmtShape(w)} does not fit input ${fmtShape(x)} with padding [${a.padding}] and dilation [${a.dilation}]`);
  return [n, o, oh, ow];
}

/**
 * 2-D convolution, NCHW input and OIHW weight (PyTorch's layout), symmetric zero padding.
 * @example
 * const x = random.normal(random.key(0), [8, 3, 32, 32]);   // NCHW
 * const w = random.normal(random.key(1), [16, 3, 3, 3]);    // OIHW
 * const y = conv2d(x, w, { padding: 1 });                   // [8, 16, 32, 32]
 * const down = conv2d(x, w, { stride: 2, padding: 1 });     // [8, 16, 16, 16]
 */
export function conv2d(xIn: Tensor, wIn: Tensor, options: ConvOptions = {}): Tensor {
  const x = expectTensor('conv2d', xIn, 'input');
  const w = expectTensor('conv2d', wIn, 'weight');
  if (x.dtype !== w.dtype) throw new DTypeError(`conv2d: dtypes differ: ${x.dtype} and ${w.dtype}`);
  const a = convAttrs('conv2d', options);
  return node({ op: 'conv2d', ...a }, [x, w], checkConv('conv2d', x.shape, w.shape, a, x.dtype), x.dtype);
}

/**
 * The adjoint of conv2d in its input: maps dy [N,O,OH,OW] to [N,C,H,W] = `inputShape`. With stride > 1
 * this is the transposed ("fractionally strided") convolution used for upsampling.
 * @example
 * const w = random.normal(random.key(0), [16, 8, 3, 3]);
 * const dy = random.normal(random.key(1), [2, 16, 8, 8]);
 * const up = conv2dGradInput(dy, w, [2, 8, 16, 16], { stride: 2, padding: 1 });   // a transposed conv: [2, 8, 16, 16]
 */
export function conv2dGradInput(dyIn: Tensor, wIn: Tensor, inputShape: Shape, options: ConvOptions = {}): Tensor {
  const dy = expectTensor('conv2dGradInput', dyIn, 'output gradient');
  const w = expectTensor('conv2dGradInput', wIn, 'weight');
  const a = convAttrs('conv2dGradInput', options);
  const expected = checkConv('conv2dGradInput', inputShape, w.shape, a, w.dtype);
  if (!shapesEqual(expected, dy.shape) || dy.dtype !== w.dtype) {
    throw new ShapeError(`conv2dGradInput: dy ${fmtShape(dy.shape)} does not match conv2d of ${fmtShape(inputShape)} with weight ${fmtShape(w.shape)} (expects ${fmtShape(expected)})`);
  }
  return node({ op: 'conv2dGradInput', ...a }, [dy, w], inputShape, w.dtype);
}

/**
 * The adjoint of conv2d in its weight: maps x and dy to a gradient of shape `weightShape`.
 * @example
 * const x = random.normal(random.key(0), [2, 3, 8, 8]);
 * const dy = random.normal(random.key(1), [2, 4, 8, 8]);
 * const dw = conv2dGradWeight(x, dy, [4, 3, 3, 3], { padding: 1 });   // what grad gives for conv2d's weight
 */
export function conv2dGradWeight(xIn: Tensor, dyIn: Tensor, weightShape: Shape, options: ConvOptions = {}): Tensor {
  const x = expectTensor('conv2dGradWeight', xIn, 'input');
  const dy = expectTensor('conv2dGradWeight', dyIn, 'output gradient');
  const a = convAttrs('conv2dGradWeight', options);
  const expected = checkConv('conv2dGradWeight', x.shape, weightShape, a, x.dtype);
  if (!shapesEqual(expected, dy.shape) || dy.dtype !== x.dtype) {
    throw new ShapeError(`conv2dGradWeight: dy ${fmtShape(dy.shape)} does not match conv2d of ${fmtShape(x.shape)} with weight ${fmtShape(weightShape)} (expects ${fmtShape(expected)})`);
  }
  return node({ op: 'conv2dGradWeight', ...a }, [x, dy], weightShape, x.dtype);
}

/**
 * Takes entries of `x` along `axis` at int32 `indices` (out-of-range indices are clamped).
 * @example
 * const table = tensor([[1, 1], [2, 2], [3, 3]]);
 * gather(table, tensor([2, 0], undefined, 'int32'));  // [[3, 3], [1, 1]]
 */
export function gather(xIn: Tensor, indicesIn: Tensor, axis = 0): Tensor {
  const x = expectTensor('gather', xIn, 'input');
  const idx = expectTensor('gather', indicesIn, 'indices');
  if (idx.dtype !== 'int32') throw new DTypeError(`gather: indices must be int32, got ${idx.dtype}`);
  const ax = normalizeAxis('gather', axis, x.rank);
  if (x.shape[ax] === 0 && idx.size > 0) throw new ShapeError(`gather: cannot take from empty axis ${ax} of ${fmtShape(x.shape)}`);
  const shape = [...x.shape.slice(0, ax), ...idx.shape, ...x.shape.slice(ax + 1)];
  return node({ op: 'gather', axis: ax }, [x, idx], shape, x.dtype);
}

// ---------------------------------------------------------------- randomness

/**
 * Raw Threefry-2x32 bits (as int32) for `shape` from a key of shape [2]; see `Prim` for the counter layout.
 * @example
 * const bits = randomBits(random.key(0), [4]);        // int32 [4]
 * const u = uniformFromBits(bits);                    // float32 in [0, 1)
 */
export function randomBits(keyIn: Tensor, shape: Shape, offset = 0): Tensor {
  const key = expectTensor('randomBits', keyIn, 'key');
  if (key.dtype !== 'int32' || !shapesEqual(key.shape, [2])) {
    throw new ShapeError(`randomBits: key must be int32 [2], got ${key.dtype} ${fmtShape(key.shape)}`);
  }
  checkShape('randomBits', shape);
  if (!Number.isInteger(offset) || offset < 0 || offset > 0x7fffffff) throw new ShapeError(`randomBits: offset ${offset} must be an integer in [0, 2^31)`);
  return node({ op: 'randomBits', offset }, [key], shape, 'int32');
}

/**
 * Uniform floats in [0, 1) from `randomBits`' int32 bits; `random.uniform` uses it.
 * @example
 * const u = uniformFromBits(randomBits(random.key(0), [2, 3]));   // float32 [2, 3] in [0, 1)
 */
export const uniformFromBits = (bits: Tensor) => unary('uniformFromBits', bits);

// ---------------------------------------------------------------- markers

/**
 * An identity node carrying `marker` (see `Marker`): the value of `inputs[0]`, with the further
 * inputs recorded as dependences. Transformations build these; `buildProgram` strips them.
 * @example
 * const frozen = markNode({ kind: 'stopGradient' }, [x]);   // what stopGradient(x) builds
 */
export function markNode(marker: Marker, inputs: readonly Tensor[]): Tensor {
  const x = expectTensor(`markNode(${marker.kind})`, inputs[0], 'first input');
  return new Tensor({ op: 'reshape' }, inputs, x.shape, x.dtype, undefined, marker);
}

/**
 * `x` itself, through which no gradient flows: `grad` sees a constant (JAX's `lax.stop_gradient`).
 * Non-tensor leaves of a tree pass unchanged, so `stopGradient(params)` freezes a whole tree.
 * @example
 * const target = stopGradient(mul(ema, 0.5));         // grad treats it as a constant
 * const frozen = stopGradient(params.encoder);        // a whole subtree
 */
export function stopGradient<T>(x: T): T {
  if (isTensor(x)) return markNode({ kind: 'stopGradient' }, [x]) as T;
  if (Array.isArray(x)) return x.map((v) => stopGradient(v)) as T;
  if (x !== null && typeof x === 'object' && !ArrayBuffer.isView(x) && (Object.getPrototypeOf(x) === Object.prototype || Object.getPrototypeOf(x) === null)) {
    return Object.fromEntries(Object.entries(x).map(([k, v]) => [k, stopGradient(v)])) as T;
  }
  return x;
}
