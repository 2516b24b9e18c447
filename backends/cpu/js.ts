/**
 * The CPU backend's kernel language for fused elementwise code: JavaScript compiled at run time
 * (`new Function`), which V8 turns into machine code. Values are plain numbers rounded exactly as
 * the reference interpreter stores them (float32 through Math.fround once per node, int32 wrapped
 * with `| 0`, bool as 0 or 1), so fused kernels match the reference bit for bit. Buffers are
 * element offsets into the shared memory's views `f32`, `i32` (int32) and `u8` (bool).
 */
import type { DType } from '../../core/dtype.ts';
import { BackendError } from '../../core/errors.ts';
import type { BinaryFn, UnaryFn } from '../../core/tensor.ts';
import { THREEFRY_JS } from '../../core/threefry.ts';
import type { Dialect } from '../kernel/emitter.ts';

/** The heap view that holds a dtype. */
export function viewOf(dtype: DType): 'f32' | 'i32' | 'u8' {
  switch (dtype) {
    case 'float32':
      return 'f32';
    case 'int32':
      return 'i32';
    case 'bool':
      return 'u8';
    case 'float64':
      throw new BackendError('cpu: float64 is not supported by the compiled CPU backend; use the reference backend');
    default:
      return dtype satisfies never;
  }
}

/** Bytes per element in the shared memory. */
export function elementBytes(dtype: DType): number {
  return dtype === 'bool' ? 1 : 4;
}

/** The value of `expr` as a node of `dtype` stores it. */
function round(dtype: DType, expr: string): string {
  if (dtype === 'float32') return `Math.fround(${expr})`;
  if (dtype === 'int32') return `(${expr} | 0)`;
  return expr;
}

const bool = (cond: string): string => `(${cond} ? 1 : 0)`;

function unary(fn: UnaryFn, inDtype: DType, outDtype: DType, x: string): string {
  const r = (e: string): string => round(outDtype, e);
  switch (fn) {
    case 'neg':
      return r(`-${x}`);
    case 'exp':
    case 'log':
    case 'sin':
    case 'cos':
    case 'sqrt':
    case 'tanh':
    case 'abs':
    case 'floor':
    case 'sign':
      return r(`Math.${fn}(${x})`);
    case 'rsqrt':
      return r(`1 / Math.sqrt(${x})`);
    case 'sigmoid':
      return r(`sigmoid(${x})`);
    case 'reciprocal':
      return r(`1 / ${x}`);
    case 'logicalNot':
      return bool(`${x} === 0`);
    case 'isFinite':
      return bool(`Number.isFinite(${x})`);
    case 'uniformFromBits':
      return `((${x} >>> 8) * 5.9604644775390625e-8)`;
    default:
      return fn satisfies never;
  }
}

function binary(fn: BinaryFn, inDtype: DType, outDtype: DType, a: string, b: string): string {
  const int = inDtype === 'int32';
  const r = (e: string): string => round(outDtype, e);
  switch (fn) {
    case 'add':
      return r(`${a} + ${b}`);
    case 'sub':
      return r(`${a} - ${b}`);
    case 'mul':
      return int ? `Math.imul(${a}, ${b})` : r(`${a} * ${b}`);
    case 'div':
      return int ? `idiv(${a}, ${b})` : r(`${a} / ${b}`);
    case 'pow':
      return int ? `f2i(Math.pow(${a}, ${b}))` : r(`Math.pow(${a}, ${b})`);
    case 'max':
      return `Math.max(${a}, ${b})`;
    case 'min':
      return `Math.min(${a}, ${b})`;
    case 'lt':
      return bool(`${a} < ${b}`);
    case 'le':
      return bool(`${a} <= ${b}`);
    case 'gt':
      return bool(`${a} > ${b}`);
    case 'ge':
      return bool(`${a} >= ${b}`);
    case 'eq':
      return bool(`${a} === ${b}`);
    case 'ne':
      return bool(`${a} !== ${b}`);
    case 'and':
      return bool(`${a} !== 0 && ${b} !== 0`);
    case 'or':
      return bool(`${a} !== 0 || ${b} !== 0`);
    default:
      return fn satisfies never;
  }
}

function cast(from: DType, to: DType, x: string): string {
  if (from === to) return x;
  if (to === 'bool') return bool(`${x} !== 0`);
  if (to === 'int32') return from === 'float32' || from === 'float64' ? `f2i(${x})` : x;
  return round(to, x);
}

function constant(value: number, dtype: DType): string {
  if (dtype === 'bool') return value ? '1' : '0';
  if (dtype === 'int32') return String(value | 0);
  const v = dtype === 'float32' ? Math.fround(value) : value;
  return Object.is(v, -0) ? '-0' : String(v);
}

export const JS: Dialect = {
  uint: (n) => String(n),
  int: (n) => String(n),
  quotient: (index, divisor) => `((${index} / ${divisor}) | 0)`,
  remainder: (index, divisor) => `(${index} % ${divisor})`,
  let: (name, expr) => `const ${name} = ${expr};`,
  var: (name, dtype, init) => `let ${name} = ${init ?? constant(0, dtype)};`,
  load: (dtype, buffer, index) => `${viewOf(dtype)}[${buffer} + ${index}]`,
  constant,
  unary,
  binary,
  cast,
  select: (cond, ifTrue, ifFalse) => `(${cond} !== 0 ? ${ifTrue} : ${ifFalse})`,
  signed: (index) => index,
  unsigned: (int) => `(${int} | 0)`,
  clampIndex: (int, max) => `(${int} < 0 ? 0 : ${int} > ${max} ? ${max} : ${int})`,
  randomBits: (key0, key1, offset, index) => `threefryWord(${key0}, ${key1}, (${offset} + (${index} >>> 1)) >>> 0, ${index} & 1)`,
};

/** Scalar helpers that generated code calls, by name (the reference's definitions, as source). */
const HELPERS: Record<string, string> = {
  sigmoid: 'function sigmoid(x) { if (x >= 0) return 1 / (1 + Math.exp(-x)); const e = Math.exp(x); return e / (1 + e); }',
  idiv: 'function idiv(a, b) { return b === 0 ? a : (a / b) | 0; }',
  f2i: 'function f2i(x) { if (x !== x) return 0; if (x >= 2147483647) return 2147483647; if (x <= -2147483648) return -2147483648; return Math.trunc(x); }',
  threefryWord: THREEFRY_JS,
};

/** Definitions of the helpers `code` calls. */
export function helpersFor(code: string): string {
  return Object.entries(HELPERS)
    .filter(([name]) => new RegExp(`\\b${name}\\(`).test(code))
    .map(([, src]) => src)
    .join('\n');
}
