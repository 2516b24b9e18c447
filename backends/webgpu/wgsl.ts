/**
 * WGSL spellings of dtypes, constants and the scalar functions of the primitive set. Storage: float32
 * as f32, int32 as i32, bool as u32 (0 or 1), so that every element is 4 bytes wide.
 */
import type { DType } from '../../core/dtype.ts';
import { BackendError } from '../../core/errors.ts';
import type { BinaryFn, UnaryFn } from '../../core/tensor.ts';
import type { Dialect } from '../kernel/emitter.ts';

export type GpuDType = Exclude<DType, 'float64'>;

export function checkDType(dtype: DType, where: string): GpuDType {
  if (dtype === 'float64') throw new BackendError(`${where}: the WebGPU backend has no float64; use the cpu backend`);
  return dtype;
}

/** The type of a value inside a kernel. */
export function valueType(dtype: DType): string {
  switch (dtype) {
    case 'float32':
      return 'f32';
    case 'int32':
      return 'i32';
    case 'bool':
      return 'bool';
    case 'float64':
      throw new BackendError('WebGPU: float64 is not supported');
    default:
      return dtype satisfies never;
  }
}

/** The element type of a storage buffer. */
export function storageType(dtype: DType): string {
  return dtype === 'bool' ? 'u32' : valueType(dtype);
}

/** Converts a loaded storage element to a value. */
export function fromStorage(dtype: DType, e: string): string {
  return dtype === 'bool' ? `(${e} != 0u)` : e;
}

/** Converts a value to its storage element. */
export function toStorage(dtype: DType, v: string): string {
  return dtype === 'bool' ? `select(0u, 1u, ${v})` : v;
}

/** The bits of `x` rounded to float32, as a u32. */
const f32Bits = (x: number): number => new Uint32Array(new Float32Array([x]).buffer)[0]!;

/** An exact constant of a dtype (floats by bit pattern when the decimal would not round-trip, or is not finite). */
export function constant(value: number, dtype: DType): string {
  switch (dtype) {
    case 'float32': {
      const f = Math.fround(value);
      if (Number.isFinite(f) && !Object.is(f, -0)) {
        const s = String(f);
        if (Math.fround(Number(s)) === f) return `f32(${s.includes('e') || s.includes('.') ? s : s + '.0'})`;
      }
      return `f32_bits(0x${f32Bits(f).toString(16)}u)`;
    }
    case 'int32': {
      const i = value | 0;
      return i >= 0 ? `${i}i` : `bitcast<i32>(${i >>> 0}u)`;
    }
    case 'bool':
      return value ? 'true' : 'false';
    case 'float64':
      throw new BackendError('WebGPU: float64 is not supported');
    default:
      return dtype satisfies never;
  }
}

/** The identity of a reduction, as a value of `dtype`. */
export function reduceIdentity(fn: 'sum' | 'max', dtype: DType): string {
  if (fn === 'sum') return constant(0, dtype);
  return dtype === 'float32' ? constant(-Infinity, dtype) : constant(-2147483648, dtype);
}

export function reduceStep(fn: 'sum' | 'max', dtype: DType, acc: string, v: string): string {
  return fn === 'sum' ? `${acc} + ${v}` : dtype === 'float32' ? `max_f32(${acc}, ${v})` : `max(${acc}, ${v})`;
}

const HELPER_SOURCE = /* wgsl */ `
// Not a constant expression, so infinities and NaN survive WGSL's constant evaluation.
fn f32_bits(b: u32) -> f32 {
  return bitcast<f32>(b);
}
fn is_nan_f32(x: f32) -> bool {
  return (bitcast<u32>(x) & 0x7fffffffu) > 0x7f800000u;
}
fn is_finite_f32(x: f32) -> bool {
  return (bitcast<u32>(x) & 0x7f800000u) != 0x7f800000u;
}
fn max_f32(a: f32, b: f32) -> f32 {
  if (is_nan_f32(a) || is_nan_f32(b)) { return f32_bits(0x7fc00000u); }
  return max(a, b);
}
fn min_f32(a: f32, b: f32) -> f32 {
  if (is_nan_f32(a) || is_nan_f32(b)) { return f32_bits(0x7fc00000u); }
  return min(a, b);
}
fn sign_f32(x: f32) -> f32 {
  if (x == 0.0 || is_nan_f32(x)) { return x; }
  return sign(x);
}
fn sigmoid_f32(x: f32) -> f32 {
  if (x >= 0.0) { return 1.0 / (1.0 + exp(-x)); }
  let e = exp(x);
  return e / (1.0 + e);
}
fn tanh_f32(x: f32) -> f32 {
  if (abs(x) > 9.0) { return sign(x); }
  if (abs(x) < 0.0004) { return x; }
  let e = exp(2.0 * x);
  return (e - 1.0) / (e + 1.0);
}
fn pow_f32(a: f32, b: f32) -> f32 {
  if (b == 0.0) { return 1.0; }
  if (is_nan_f32(a) || is_nan_f32(b)) { return f32_bits(0x7fc00000u); }
  let m = pow(abs(a), b);
  if (a >= 0.0) { return m; }
  if (floor(b) != b) { return f32_bits(0x7fc00000u); }
  let odd = abs(b) < 16777216.0 && (i32(abs(b)) & 1) == 1;
  return select(m, -m, odd);
}
fn pow_i32(a: i32, b: i32) -> i32 {
  if (b < 0) {
    if (a == 0) { return 2147483647; }
    if (a == 1) { return 1; }
    if (a == -1) { return select(-1, 1, (b & 1) == 0); }
    return 0;
  }
  var r = 1;
  var x = a;
  var e = b;
  loop {
    if (e == 0) { break; }
    if ((e & 1) == 1) { r = r * x; }
    x = x * x;
    e = e >> 1u;
  }
  return r;
}
// The high word of a * b (WGSL has no 64-bit integers): 16-bit halves, every partial sum below 2^32.
fn mulhi(a: u32, b: u32) -> u32 {
  let a0 = a & 0xffffu;
  let a1 = a >> 16u;
  let b0 = b & 0xffffu;
  let b1 = b >> 16u;
  let lo = a0 * b0;
  let m1 = a1 * b0;
  let m2 = a0 * b1;
  let mid = (lo >> 16u) + (m1 & 0xffffu) + (m2 & 0xffffu);
  return a1 * b1 + (m1 >> 16u) + (m2 >> 16u) + (mid >> 16u);
}
// n / d for n < 2^31, by divisionMagic(d)'s multiplier m and shift s (no vector integer division).
fn udiv(n: u32, m: u32, s: u32) -> u32 {
  return mulhi(n, m) >> s;
}
fn urem(n: u32, m: u32, s: u32, d: u32) -> u32 {
  return n - udiv(n, m, s) * d;
}
fn f32_to_i32(x: f32) -> i32 {
  if (is_nan_f32(x)) { return 0; }
  if (x >= 2147483647.0) { return 2147483647i; }
  if (x <= -2147483648.0) { return bitcast<i32>(0x80000000u); }
  return i32(x);
}
`;

/** Helper functions that expressions call, by name. */
const HELPER_FNS: Record<string, string> = {};
for (const f of HELPER_SOURCE.split(/\n(?=fn )/)) {
  const name = /^fn (\w+)/.exec(f.trim())?.[1];
  if (name !== undefined) HELPER_FNS[name] = f.trim();
}

/**
 * The helpers `code` calls, with the helpers they call in turn (compiling unused ones costs
 * lavapipe real time).
 */
export function helpersFor(code: string): string {
  const used = new Set<string>();
  const visit = (text: string): void => {
    for (const [name, src] of Object.entries(HELPER_FNS)) {
      if (!used.has(name) && new RegExp(`\\b${name}\\(`).test(text)) {
        used.add(name);
        visit(src.slice(src.indexOf('{')));
      }
    }
  };
  visit(code);
  return Object.keys(HELPER_FNS).filter((n) => used.has(n)).map((n) => HELPER_FNS[n]).join('\n');
}

export function unaryExpr(fn: UnaryFn, dtype: DType, x: string): string {
  const isF = dtype === 'float32';
  switch (fn) {
    case 'neg':
      return `(-${x})`;
    case 'exp':
      return `exp(${x})`;
    case 'log':
      return `log(${x})`;
    case 'sin':
      return `sin(${x})`;
    case 'cos':
      return `cos(${x})`;
    case 'sqrt':
      return `sqrt(${x})`;
    case 'rsqrt':
      return `(1.0 / sqrt(${x}))`;
    case 'tanh':
      return `tanh_f32(${x})`;
    case 'sigmoid':
      return `sigmoid_f32(${x})`;
    case 'abs':
      return `abs(${x})`;
    case 'reciprocal':
      return `(1.0 / ${x})`;
    case 'floor':
      return `floor(${x})`;
    case 'sign':
      return isF ? `sign_f32(${x})` : `sign(${x})`;
    case 'logicalNot':
      return `(!${x})`;
    case 'isFinite':
      return `is_finite_f32(${x})`;
    case 'uniformFromBits':
      return `(f32(bitcast<u32>(${x}) >> 8u) * 5.9604644775390625e-8)`;
    default:
      return fn satisfies never;
  }
}

/** `dtype` is the operands' dtype. */
export function binaryExpr(fn: BinaryFn, dtype: DType, a: string, b: string): string {
  const isF = dtype === 'float32';
  switch (fn) {
    case 'add':
      return `(${a} + ${b})`;
    case 'sub':
      return `(${a} - ${b})`;
    case 'mul':
      return `(${a} * ${b})`;
    case 'div':
      return `(${a} / ${b})`;
    case 'pow':
      return isF ? `pow_f32(${a}, ${b})` : `pow_i32(${a}, ${b})`;
    case 'max':
      return isF ? `max_f32(${a}, ${b})` : `max(${a}, ${b})`;
    case 'min':
      return isF ? `min_f32(${a}, ${b})` : `min(${a}, ${b})`;
    case 'lt':
      return `(${a} < ${b})`;
    case 'le':
      return `(${a} <= ${b})`;
    case 'gt':
      return `(${a} > ${b})`;
    case 'ge':
      return `(${a} >= ${b})`;
    case 'eq':
      return `(${a} == ${b})`;
    case 'ne':
      return `(${a} != ${b})`;
    case 'and':
      return `(${a} && ${b})`;
    case 'or':
      return `(${a} || ${b})`;
    default:
      return fn satisfies never;
  }
}

export function castExpr(from: DType, to: DType, x: string): string {
  if (from === to) return x;
  if (to === 'bool') return from === 'float32' ? `(${x} != 0.0 || is_nan_f32(${x}))` : `(${x} != 0)`;
  if (from === 'bool') return `select(${constant(0, to)}, ${constant(1, to)}, ${x})`;
  if (to === 'int32') return `f32_to_i32(${x})`;
  return `${valueType(to)}(${x})`;
}

/** Threefry's word for `index`, with the stream offset spelled by `uint`. */
const randomBitsWith =
  (uint: (n: number) => string): Dialect['randomBits'] =>
  (key0, key1, offset, index) =>
    `bitcast<i32>(threefry2x32(vec2<u32>(bitcast<u32>(${key0}), bitcast<u32>(${key1})), vec2<u32>(0u, ${uint(offset)} + ${index} / 2u))[${index} % 2u])`;

/** The shared expression generator's statements and scalars, in WGSL (indices are u32), every number spelled out. */
export const WGSL: Dialect = {
  uint: (n) => `${n}u`,
  int: (n) => String(n),
  quotient: (index, divisor) => `(${index} / ${divisor}u)`,
  remainder: (index, divisor) => `(${index} % ${divisor}u)`,
  let: (name, expr) => `let ${name} = ${expr};`,
  var: (name, dtype, init) => (init === undefined ? `var ${name}: ${valueType(dtype)};` : `var ${name} = ${init};`),
  load: (dtype, buffer, index) => fromStorage(dtype, `${buffer}[${index}]`),
  constant,
  unary: (fn, inDtype, _outDtype, x) => unaryExpr(fn, inDtype, x),
  binary: (fn, inDtype, _outDtype, a, b) => binaryExpr(fn, inDtype, a, b),
  cast: castExpr,
  select: (cond, ifTrue, ifFalse) => `select(${ifFalse}, ${ifTrue}, ${cond})`,
  signed: (index) => `i32(${index})`,
  unsigned: (int) => `u32(${int})`,
  clampIndex: (int, max) => `u32(clamp(${int}, 0i, ${max}i))`,
  randomBits: randomBitsWith((n) => `${n}u`),
};

/**
 * The numbers of a shape-generic kernel: sizes, strides, offsets and literal values are read from
 * the kernel's uniform buffer `P` (32-bit words, four to a vec4 as uniform arrays require), so the
 * WGSL text depends only on the kernel's structure and one pipeline serves every shape that has
 * it. Structure stays in the text: 0 and 1 (which change the index maps themselves), whether a
 * divisor is a power of two, tile shapes, convolution strides, paddings and dilations.
 */
export class KernelParams {
  readonly words: number[] = [];
  /** Spellings already made, by what they compute (see `memo`). */
  private readonly made = new Map<string, string>();

  /**
   * A reference to a new word holding `word` (u32 bits). Each number gets its own word even when
   * another of the kernel's numbers is equal: which numbers coincide changes from shape to shape,
   * and the text must not.
   */
  ref(word: number): string {
    const k = this.words.length;
    this.words.push(word >>> 0);
    return `P[${k >> 2}].${'xyzw'[k & 3]}`;
  }

  /**
   * The spelling made before for the same operation on the same operand text, else `make()`'s: a
   * conv's eight row loads split k with one shift and mask (equal text, which the compiler shares),
   * not eight each with its own word.
   */
  memo(key: string, make: () => string): string {
    let hit = this.made.get(key);
    if (hit === undefined) this.made.set(key, (hit = make()));
    return hit;
  }

  /** The uniform's declaration at `binding` (nothing when the kernel has no numbers). */
  declaration(binding: number): string {
    if (this.words.length === 0) return '';
    return `@group(0) @binding(${binding}) var<uniform> P: array<vec4<u32>, ${Math.ceil(this.words.length / 4)}>;`;
  }

  /** The words as uploaded: padded to whole vec4s. */
  data(): Uint32Array {
    const out = new Uint32Array(Math.ceil(this.words.length / 4) * 4);
    out.set(this.words);
    return out;
  }
}

/**
 * The multiplier and shift of an exact division by `d` (2 <= d < 2^31) for numerators below 2^31:
 * n / d = mulhi(n, m) >> s, with m = ceil(2^(31 + l) / d), l = ceil(log2 d), s = l - 1 (Granlund
 * and Montgomery, "Division by invariant integers using multiplication", 1994, theorem 4.2 with
 * N = 31: m * d - 2^(31 + l) < d <= 2^l, and m < 2^32).
 */
export function divisionMagic(d: number): { m: number; s: number } {
  if (!Number.isInteger(d) || d < 2 || d >= 2 ** 31) throw new BackendError(`divisionMagic: divisor ${d} is outside [2, 2^31)`);
  let l = 1;
  while (2 ** l < d) l++;
  const m = ((1n << BigInt(31 + l)) + BigInt(d) - 1n) / BigInt(d);
  return { m: Number(m), s: l - 1 };
}

const isPowerOfTwo = (n: number): boolean => n > 0 && (n & (n - 1)) === 0 && n <= 2 ** 30;

/** The WGSL dialect of a shape-generic kernel: its numbers go to `params` (see KernelParams). */
export function genericWgsl(params: KernelParams): Dialect {
  const uint = (n: number): string => (n === 0 || n === 1 ? `${n}u` : params.ref(n));
  const int = (n: number): string => (n === 0 || n === 1 ? String(n) : `bitcast<i32>(${params.ref(n)})`);
  return {
    ...WGSL,
    uint,
    int,
    quotient: (index, divisor) =>
      params.memo(`${index} / ${divisor}`, () => {
        if (divisor === 1) return index;
        if (isPowerOfTwo(divisor)) return `(${index} >> ${params.ref(Math.log2(divisor))})`;
        const { m, s } = divisionMagic(divisor);
        return `udiv(${index}, ${params.ref(m)}, ${params.ref(s)})`;
      }),
    remainder: (index, divisor) =>
      params.memo(`${index} % ${divisor}`, () => {
        if (divisor === 1) return '0u';
        if (isPowerOfTwo(divisor)) return `(${index} & ${params.ref(divisor - 1)})`;
        const { m, s } = divisionMagic(divisor);
        return `urem(${index}, ${params.ref(m)}, ${params.ref(s)}, ${params.ref(divisor)})`;
      }),
    constant: (value, dtype) => {
      if (dtype === 'bool' || ((value === 0 || value === 1) && !Object.is(value, -0))) return constant(value, dtype);
      if (dtype === 'int32') return `bitcast<i32>(${params.ref(value | 0)})`;
      return `bitcast<f32>(${params.ref(f32Bits(value))})`;
    },
    clampIndex: (value, max) => `u32(clamp(${value}, 0i, ${int(max)}))`,
    randomBits: randomBitsWith(uint),
  };
}
