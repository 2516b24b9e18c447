/**
 * Elementwise semantics: the scalar function each unary, binary and cast computes, per dtype. These
 * definitions are the reference the WebGPU backend must match.
 *
 * Values are computed as JS doubles and rounded once when stored into the output array: a float32
 * result is the double result rounded to float32 (for + - * / sqrt this is exactly the IEEE float32
 * operation), int32 results wrap modulo 2^32 on store, bool results are 0 or 1.
 */
import type { DType, TypedArray } from '../../core/dtype.ts';
import type { BinaryFn, UnaryFn } from '../../core/tensor.ts';
import { uniformFromBitsScalar } from '../../core/threefry.ts';

type Scalar1 = (x: number) => number;
type Scalar2 = (a: number, b: number) => number;

const INT32_MIN = -2147483648;
const INT32_MAX = 2147483647;

/** Float to int32: truncate toward zero, saturate to the int32 range, NaN to 0. */
export function floatToInt32(x: number): number {
  if (x !== x) return 0;
  if (x >= INT32_MAX) return INT32_MAX;
  if (x <= INT32_MIN) return INT32_MIN;
  return Math.trunc(x);
}

/** Logistic function without overflow: exp is only taken of a non-positive number. */
function sigmoid(x: number): number {
  if (x >= 0) return 1 / (1 + Math.exp(-x));
  const e = Math.exp(x);
  return e / (1 + e);
}

/**
 * The unaries on any dtype ops.ts admits for them (most are float-only; neg, abs and sign also take
 * int32, whose results wrap on store). Math.sign keeps -0 and NaN, as WGSL's sign does for floats.
 */
const UNARY: Record<UnaryFn, Scalar1> = {
  neg: (x) => -x,
  exp: Math.exp,
  log: Math.log,
  sin: Math.sin,
  cos: Math.cos,
  sqrt: Math.sqrt,
  rsqrt: (x) => 1 / Math.sqrt(x),
  tanh: Math.tanh,
  sigmoid,
  abs: Math.abs,
  reciprocal: (x) => 1 / x,
  floor: Math.floor,
  sign: Math.sign,
  logicalNot: (x) => (x === 0 ? 1 : 0),
  isFinite: (x) => (Number.isFinite(x) ? 1 : 0),
  uniformFromBits: uniformFromBitsScalar,
};

/** int32 division truncates toward zero; as WGSL, x / 0 = x and INT32_MIN / -1 = INT32_MIN (wraps on store). */
function intDiv(a: number, b: number): number {
  return b === 0 ? a : Math.trunc(a / b);
}

/** max and min propagate NaN (WGSL's max/min return the other operand: kernels must test for NaN). */
const FLOAT_BINARY: Record<BinaryFn, Scalar2> = {
  add: (a, b) => a + b,
  sub: (a, b) => a - b,
  mul: (a, b) => a * b,
  div: (a, b) => a / b,
  pow: Math.pow,
  max: Math.max,
  min: Math.min,
  lt: (a, b) => (a < b ? 1 : 0),
  le: (a, b) => (a <= b ? 1 : 0),
  gt: (a, b) => (a > b ? 1 : 0),
  ge: (a, b) => (a >= b ? 1 : 0),
  eq: (a, b) => (a === b ? 1 : 0),
  ne: (a, b) => (a !== b ? 1 : 0),
  and: (a, b) => (a !== 0 && b !== 0 ? 1 : 0),
  or: (a, b) => (a !== 0 || b !== 0 ? 1 : 0),
};

/** int32: + - wrap on store; * wraps exactly (Math.imul); pow is Math.pow cast back to int32. */
const INT_BINARY: Record<BinaryFn, Scalar2> = {
  ...FLOAT_BINARY,
  mul: Math.imul,
  div: intDiv,
  pow: (a, b) => floatToInt32(Math.pow(a, b)),
};

export function unaryScalar(fn: UnaryFn): Scalar1 {
  return UNARY[fn];
}

export function binaryScalar(fn: BinaryFn, inDtype: DType): Scalar2 {
  return inDtype === 'float32' || inDtype === 'float64' ? FLOAT_BINARY[fn] : INT_BINARY[fn];
}

/**
 * Conversion of one value to `to`: to a float, the value (rounded on store); to int32, floats
 * truncate and saturate (NaN is 0); to bool, x != 0 (so NaN is true); bool reads as 0 or 1.
 */
export function castScalar(from: DType, to: DType): Scalar1 {
  switch (to) {
    case 'float32':
    case 'float64':
      return (x) => x;
    case 'int32':
      return from === 'float32' || from === 'float64' ? floatToInt32 : (x) => x;
    case 'bool':
      return (x) => (x !== 0 ? 1 : 0);
    default:
      return to satisfies never;
  }
}

export function map1(f: Scalar1, x: TypedArray, out: TypedArray): void {
  for (let i = 0; i < out.length; i++) out[i] = f(x[i]!);
}

export function map2(f: Scalar2, a: TypedArray, b: TypedArray, out: TypedArray): void {
  for (let i = 0; i < out.length; i++) out[i] = f(a[i]!, b[i]!);
}

export function select(cond: TypedArray, a: TypedArray, b: TypedArray, out: TypedArray): void {
  for (let i = 0; i < out.length; i++) out[i] = cond[i] !== 0 ? a[i]! : b[i]!;
}
