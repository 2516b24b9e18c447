/**
 * A small WebAssembly binary encoder for the kernels the CPU backend generates at run time: a module
 * of functions over one imported shared memory (`env.memory`), and a function-body builder with the
 * instructions kernels use (integer and float scalars, SIMD128 over f32x4 and i32x4, structured
 * control flow, memory access). Opcodes live in tables keyed by their text-format names, so a
 * kernel reads like the text format: `f.get(acc).get(a).get(b).op('f32x4.mul').op('f32x4.add').set(acc)`.
 *
 * Only what Node 20 (V8 11.3) runs without flags: SIMD128, no relaxed SIMD (so no FMA).
 * Binary format: https://webassembly.github.io/spec/core/binary/index.html.
 */

export type ValType = 'i32' | 'i64' | 'f32' | 'f64' | 'v128';

const VALTYPE: Record<ValType, number> = { i32: 0x7f, i64: 0x7e, f32: 0x7d, f64: 0x7c, v128: 0x7b };

/** SIMD instructions are the prefix byte 0xfd followed by their opcode as unsigned LEB128. */
const SIMD = 0x10000;
const simd = (code: number) => SIMD + code;
/** Saturating truncations and other "misc" instructions are the prefix byte 0xfc and a LEB128 opcode. */
const MISC = 0x20000;
const misc = (code: number) => MISC + code;

/** Instructions without immediates: they only pop and push operands. */
const PLAIN = {
  unreachable: 0x00,
  nop: 0x01,
  return: 0x0f,
  drop: 0x1a,
  select: 0x1b,
  'i32.eqz': 0x45,
  'i32.eq': 0x46,
  'i32.ne': 0x47,
  'i32.lt_s': 0x48,
  'i32.lt_u': 0x49,
  'i32.gt_s': 0x4a,
  'i32.gt_u': 0x4b,
  'i32.le_s': 0x4c,
  'i32.le_u': 0x4d,
  'i32.ge_s': 0x4e,
  'i32.ge_u': 0x4f,
  'f32.eq': 0x5b,
  'f32.ne': 0x5c,
  'f32.lt': 0x5d,
  'f32.gt': 0x5e,
  'f32.le': 0x5f,
  'f32.ge': 0x60,
  'f64.eq': 0x61,
  'f64.ne': 0x62,
  'f64.lt': 0x63,
  'f64.gt': 0x64,
  'f64.le': 0x65,
  'f64.ge': 0x66,
  'i32.clz': 0x67,
  'i32.ctz': 0x68,
  'i32.popcnt': 0x69,
  'i32.add': 0x6a,
  'i32.sub': 0x6b,
  'i32.mul': 0x6c,
  'i32.div_s': 0x6d,
  'i32.div_u': 0x6e,
  'i32.rem_s': 0x6f,
  'i32.rem_u': 0x70,
  'i32.and': 0x71,
  'i32.or': 0x72,
  'i32.xor': 0x73,
  'i32.shl': 0x74,
  'i32.shr_s': 0x75,
  'i32.shr_u': 0x76,
  'i32.rotl': 0x77,
  'i32.rotr': 0x78,
  'f32.abs': 0x8b,
  'f32.neg': 0x8c,
  'f32.ceil': 0x8d,
  'f32.floor': 0x8e,
  'f32.trunc': 0x8f,
  'f32.nearest': 0x90,
  'f32.sqrt': 0x91,
  'f32.add': 0x92,
  'f32.sub': 0x93,
  'f32.mul': 0x94,
  'f32.div': 0x95,
  'f32.min': 0x96,
  'f32.max': 0x97,
  'f32.copysign': 0x98,
  'f64.abs': 0x99,
  'f64.neg': 0x9a,
  'f64.floor': 0x9c,
  'f64.sqrt': 0x9f,
  'f64.add': 0xa0,
  'f64.sub': 0xa1,
  'f64.mul': 0xa2,
  'f64.div': 0xa3,
  'f64.min': 0xa4,
  'f64.max': 0xa5,
  'i32.trunc_f32_s': 0xa8,
  'i32.trunc_f32_u': 0xa9,
  'f32.convert_i32_s': 0xb2,
  'f32.convert_i32_u': 0xb3,
  'f32.demote_f64': 0xb6,
  'f64.convert_i32_s': 0xb7,
  'f64.convert_i32_u': 0xb8,
  'f64.promote_f32': 0xbb,
  'i32.trunc_sat_f32_s': misc(0x00),
  'i32.trunc_sat_f64_s': misc(0x02),
  'i32.reinterpret_f32': 0xbc,
  'f32.reinterpret_i32': 0xbe,
  'i8x16.swizzle': simd(0x0e),
  'i32x4.splat': simd(0x11),
  'f32x4.splat': simd(0x13),
  'f64x2.splat': simd(0x14),
  'i32x4.eq': simd(0x37),
  'i32x4.ne': simd(0x38),
  'i32x4.lt_s': simd(0x39),
  'i32x4.lt_u': simd(0x3a),
  'i32x4.gt_s': simd(0x3b),
  'i32x4.gt_u': simd(0x3c),
  'i32x4.le_s': simd(0x3d),
  'i32x4.le_u': simd(0x3e),
  'i32x4.ge_s': simd(0x3f),
  'i32x4.ge_u': simd(0x40),
  'f32x4.eq': simd(0x41),
  'f32x4.ne': simd(0x42),
  'f32x4.lt': simd(0x43),
  'f32x4.gt': simd(0x44),
  'f32x4.le': simd(0x45),
  'f32x4.ge': simd(0x46),
  'f64x2.eq': simd(0x47),
  'f64x2.ne': simd(0x48),
  'f64x2.lt': simd(0x49),
  'f64x2.gt': simd(0x4a),
  'f64x2.le': simd(0x4b),
  'f64x2.ge': simd(0x4c),
  'v128.not': simd(0x4d),
  'v128.and': simd(0x4e),
  'v128.andnot': simd(0x4f),
  'v128.or': simd(0x50),
  'v128.xor': simd(0x51),
  'v128.bitselect': simd(0x52),
  'v128.any_true': simd(0x53),
  'f32x4.demote_f64x2_zero': simd(0x5e),
  'f64x2.promote_low_f32x4': simd(0x5f),
  'f32x4.ceil': simd(0x67),
  'f32x4.floor': simd(0x68),
  'f32x4.trunc': simd(0x69),
  'f32x4.nearest': simd(0x6a),
  'i16x8.extend_low_i8x16_u': simd(0x89),
  'i32x4.extend_low_i16x8_u': simd(0xa9),
  'i64x2.extend_low_i32x4_s': simd(0xc7),
  'i64x2.shl': simd(0xcb),
  'i64x2.add': simd(0xce),
  'i32x4.trunc_sat_f64x2_s_zero': simd(0xfc),
  'f64x2.convert_low_i32x4_s': simd(0xfe),
  'i32x4.abs': simd(0xa0),
  'i32x4.neg': simd(0xa1),
  'i32x4.all_true': simd(0xa3),
  'i32x4.bitmask': simd(0xa4),
  'i32x4.shl': simd(0xab),
  'i32x4.shr_s': simd(0xac),
  'i32x4.shr_u': simd(0xad),
  'i32x4.add': simd(0xae),
  'i32x4.sub': simd(0xb1),
  'i32x4.mul': simd(0xb5),
  'i32x4.min_s': simd(0xb6),
  'i32x4.min_u': simd(0xb7),
  'i32x4.max_s': simd(0xb8),
  'i32x4.max_u': simd(0xb9),
  'f32x4.abs': simd(0xe0),
  'f32x4.neg': simd(0xe1),
  'f32x4.sqrt': simd(0xe3),
  'f32x4.add': simd(0xe4),
  'f32x4.sub': simd(0xe5),
  'f32x4.mul': simd(0xe6),
  'f32x4.div': simd(0xe7),
  'f32x4.min': simd(0xe8),
  'f32x4.max': simd(0xe9),
  'f32x4.pmin': simd(0xea),
  'f32x4.pmax': simd(0xeb),
  'i32x4.trunc_sat_f32x4_s': simd(0xf8),
  'i32x4.trunc_sat_f32x4_u': simd(0xf9),
  'f32x4.convert_i32x4_s': simd(0xfa),
  'f32x4.convert_i32x4_u': simd(0xfb),
  'f64x2.abs': simd(0xec),
  'f64x2.neg': simd(0xed),
  'f64x2.sqrt': simd(0xef),
  'f64x2.add': simd(0xf0),
  'f64x2.sub': simd(0xf1),
  'f64x2.mul': simd(0xf2),
  'f64x2.div': simd(0xf3),
  'f64x2.min': simd(0xf4),
  'f64x2.max': simd(0xf5),
} as const;

/** Memory accesses, with the log2 of their natural alignment (the alignment hint they are given). */
const MEMORY = {
  'i32.load': [0x28, 2],
  'f32.load': [0x2a, 2],
  'i32.load8_s': [0x2c, 0],
  'i32.load8_u': [0x2d, 0],
  'i32.load16_s': [0x2e, 1],
  'i32.load16_u': [0x2f, 1],
  'i32.store': [0x36, 2],
  'f32.store': [0x38, 2],
  'i32.store8': [0x3a, 0],
  'i32.store16': [0x3b, 1],
  'f64.load': [0x2b, 3],
  'f64.store': [0x39, 3],
  'v128.load': [simd(0x00), 4],
  'v128.load32_splat': [simd(0x09), 2],
  'v128.load64_splat': [simd(0x0a), 3],
  'v128.store': [simd(0x0b), 4],
  'v128.load32_zero': [simd(0x5c), 2],
  'v128.load64_zero': [simd(0x5d), 3],
} as const;

/** Instructions with a lane index immediate. */
const LANE = {
  'i32x4.extract_lane': simd(0x1b),
  'i32x4.replace_lane': simd(0x1c),
  'f32x4.extract_lane': simd(0x1f),
  'f32x4.replace_lane': simd(0x20),
  'f64x2.extract_lane': simd(0x21),
  'f64x2.replace_lane': simd(0x22),
} as const;

/** Memory accesses of one lane: a memory immediate, then the lane index. */
const MEMORY_LANE = {
  'v128.load32_lane': [simd(0x56), 2],
  'v128.store32_lane': [simd(0x5a), 2],
} as const;

const CONTROL = { block: 0x02, loop: 0x03, if: 0x04, else: 0x05, end: 0x0b, br: 0x0c, br_if: 0x0d, call: 0x10 } as const;
const VARIABLE = { 'local.get': 0x20, 'local.set': 0x21, 'local.tee': 0x22 } as const;
const CONST = { 'i32.const': 0x41, 'f32.const': 0x43, 'f64.const': 0x44, 'v128.const': simd(0x0c) } as const;
const SHUFFLE = simd(0x0d);
/** The block type of a block that takes and leaves nothing on the stack. */
const EMPTY_BLOCK = 0x40;

export type PlainOp = keyof typeof PLAIN;
export type MemoryOp = keyof typeof MEMORY;
export type LaneOp = keyof typeof LANE;
export type MemoryLaneOp = keyof typeof MEMORY_LANE;

/** Unsigned LEB128 of a non-negative integer below 2^32. */
export function uleb(n: number): number[] {
  if (!Number.isInteger(n) || n < 0 || n > 0xffffffff) throw new RangeError(`uleb: ${n} is not a u32`);
  const out: number[] = [];
  do {
    const byte = n % 128;
    n = Math.floor(n / 128);
    out.push(n > 0 ? byte | 0x80 : byte);
  } while (n > 0);
  return out;
}

/** Signed LEB128 of an integer in [-2^31, 2^32) (values from 2^31 are the i32 of the same bits). */
export function sleb(n: number): number[] {
  if (!Number.isInteger(n) || n < -0x80000000 || n > 0xffffffff) throw new RangeError(`sleb: ${n} is not an i32`);
  let v = n | 0;
  const out: number[] = [];
  for (;;) {
    const byte = v & 0x7f;
    v >>= 7;
    // Done once the rest is all sign bits and the sign bit of this byte agrees with them.
    if ((v === 0 && (byte & 0x40) === 0) || (v === -1 && (byte & 0x40) !== 0)) return [...out, byte];
    out.push(byte | 0x80);
  }
}

function opcode(code: number): number[] {
  if (code >= MISC) return [0xfc, ...uleb(code - MISC)];
  return code >= SIMD ? [0xfd, ...uleb(code - SIMD)] : [code];
}

function name(s: string): number[] {
  const bytes = new TextEncoder().encode(s);
  return [...uleb(bytes.length), ...bytes];
}

/** A vector of items: its length, then the items. */
function vector(items: readonly number[][]): number[] {
  return [...uleb(items.length), ...items.flat()];
}

function section(id: number, content: number[]): number[] {
  return [id, ...uleb(content.length), ...content];
}

/** A parameter or declared local of the function being built. */
export interface Local {
  readonly index: number;
  readonly type: ValType;
}

/** The target of `br`/`br_if`: an enclosing block (jumps past its end) or loop (jumps to its start). */
export interface Label {
  readonly depth: number;
}

/** A function of the module, for `call`. */
export interface FunctionRef {
  readonly index: number;
  readonly name: string;
}

/**
 * The body of one function, built in order. Methods return `this`, so a sequence of instructions
 * reads as one chain; structured instructions take a callback that builds their body and receives
 * their label, and branch depths are computed from labels.
 */
export class FunctionBody {
  private readonly code: number[] = [];
  private readonly declared: ValType[] = [];
  private depth = 0;
  readonly params: readonly Local[];

  constructor(params: readonly ValType[]) {
    this.params = params.map((type, index) => ({ index, type }));
  }

  /** Declares a local (zero-initialised, as every Wasm local is). */
  local(type: ValType): Local {
    this.declared.push(type);
    return { index: this.params.length + this.declared.length - 1, type };
  }

  /** Declares one local of `type` per name: `const { i, n } = f.locals('i32', 'i', 'n')`. */
  locals<N extends string>(type: ValType, ...names: N[]): Record<N, Local> {
    return Object.fromEntries(names.map((n) => [n, this.local(type)])) as Record<N, Local>;
  }

  get(l: Local): this {
    return this.emit(VARIABLE['local.get'], ...uleb(l.index));
  }
  set(l: Local): this {
    return this.emit(VARIABLE['local.set'], ...uleb(l.index));
  }
  tee(l: Local): this {
    return this.emit(VARIABLE['local.tee'], ...uleb(l.index));
  }

  i32(n: number): this {
    return this.emit(CONST['i32.const'], ...sleb(n));
  }
  f32(x: number): this {
    const bytes = new Uint8Array(new Float32Array([x]).buffer);
    return this.emit(CONST['f32.const'], ...bytes);
  }
  f64(x: number): this {
    const bytes = new Uint8Array(new Float64Array([x]).buffer);
    return this.emit(CONST['f64.const'], ...bytes);
  }
  /** A v128 constant of two f64 lanes. */
  f64x2(lanes: readonly [number, number]): this {
    return this.emitCode(CONST['v128.const'], ...new Uint8Array(new Float64Array(lanes).buffer));
  }
  /** A v128 constant of four i32 lanes. */
  i32x4(lanes: readonly [number, number, number, number]): this {
    return this.emitCode(CONST['v128.const'], ...new Uint8Array(new Int32Array(lanes).buffer));
  }
  /** A v128 constant of four f32 lanes. */
  f32x4(lanes: readonly [number, number, number, number]): this {
    return this.emitCode(CONST['v128.const'], ...new Uint8Array(new Float32Array(lanes).buffer));
  }

  op(name: PlainOp): this {
    return this.emitCode(PLAIN[name]);
  }

  /**
   * A load (of the address on the stack) or store (of the value on top, to the address below it),
   * at address + `offset` bytes; `align` (log2) defaults to the natural alignment.
   */
  mem(name: MemoryOp, offset = 0, align?: number): this {
    const [code, natural] = MEMORY[name];
    return this.emitCode(code, ...uleb(align ?? natural), ...uleb(offset));
  }

  lane(name: LaneOp, lane: number): this {
    return this.emitCode(LANE[name], lane);
  }

  /** i8x16.shuffle: byte i of the result is byte `lanes[i]` of the two operands concatenated (0-31). */
  shuffle(lanes: readonly number[]): this {
    if (lanes.length !== 16 || lanes.some((l) => !Number.isInteger(l) || l < 0 || l > 31)) throw new RangeError(`wasm: i8x16.shuffle takes 16 byte indices below 32, got [${lanes}]`);
    return this.emitCode(SHUFFLE, ...lanes);
  }

  memLane(name: MemoryLaneOp, lane: number, offset = 0): this {
    const [code, natural] = MEMORY_LANE[name];
    return this.emitCode(code, ...uleb(natural), ...uleb(offset), lane);
  }

  block(body: (exit: Label) => void): this {
    return this.structured(CONTROL.block, body);
  }
  loop(body: (repeat: Label) => void): this {
    return this.structured(CONTROL.loop, body);
  }
  /** `if` on the i32 on top of the stack, with an optional `else` branch. */
  if(then: (exit: Label) => void, otherwise?: (exit: Label) => void): this {
    this.emit(CONTROL.if, EMPTY_BLOCK);
    const label = { depth: ++this.depth };
    then(label);
    if (otherwise) {
      this.emit(CONTROL.else);
      otherwise(label);
    }
    this.depth--;
    return this.emit(CONTROL.end);
  }
  br(label: Label): this {
    return this.emit(CONTROL.br, ...uleb(this.relative(label)));
  }
  brIf(label: Label): this {
    return this.emit(CONTROL.br_if, ...uleb(this.relative(label)));
  }
  call(fn: FunctionRef): this {
    return this.emit(CONTROL.call, ...uleb(fn.index));
  }

  /** Pushes an i32 operand: a local's value or a constant. */
  push(x: Local | number): this {
    return typeof x === 'number' ? this.i32(x) : this.get(x);
  }

  /**
   * `for (i = from; i < to; i += step) body()` over signed i32 values, the bound read on every
   * iteration; the body runs zero times when `from >= to`.
   */
  for(i: Local, from: Local | number, to: Local | number, body: () => void, step = 1): this {
    this.push(from).set(i);
    return this.block((exit) => {
      this.get(i).push(to).op('i32.ge_s').brIf(exit);
      this.loop((next) => {
        body();
        this.get(i).i32(step).op('i32.add').tee(i).push(to).op('i32.lt_s').brIf(next);
      });
    });
  }

  /** The function's code entry: its locals, grouped by runs of one type, then its instructions. */
  encode(): number[] {
    if (this.depth !== 0) throw new Error('wasm: a block is still open');
    const runs: number[][] = [];
    for (let i = 0; i < this.declared.length; ) {
      let j = i;
      while (j < this.declared.length && this.declared[j] === this.declared[i]) j++;
      runs.push([...uleb(j - i), VALTYPE[this.declared[i]!]]);
      i = j;
    }
    const body = [...vector(runs), ...this.code, CONTROL.end];
    return [...uleb(body.length), ...body];
  }

  private structured(code: number, body: (label: Label) => void): this {
    this.emit(code, EMPTY_BLOCK);
    body({ depth: ++this.depth });
    this.depth--;
    return this.emit(CONTROL.end);
  }

  private relative(label: Label): number {
    if (label.depth > this.depth) throw new Error('wasm: branch to a label that is not open');
    return this.depth - label.depth;
  }

  private emitCode(code: number, ...immediates: number[]): this {
    return this.emit(...opcode(code), ...immediates);
  }

  private emit(...bytes: number[]): this {
    for (const b of bytes) this.code.push(b);
    return this;
  }
}

interface FunctionDef {
  readonly name: string;
  readonly type: number;
  readonly body: FunctionBody;
  readonly exported: boolean;
}

/**
 * A module whose functions share one imported memory, `env.memory`: shared (limits flag 0x03), at
 * least 0 and at most 65536 pages, so that it links against any shared memory a `Parallel` made.
 */
export class ModuleBuilder {
  private readonly types: string[] = [];
  private readonly functions: FunctionDef[] = [];
  private readonly imports: { readonly module: string; readonly field: string; readonly type: number }[] = [];

  private typeIndex(params: readonly ValType[], results: readonly ValType[]): number {
    const signature = [0x60, ...vector(params.map((t) => [VALTYPE[t]])), ...vector(results.map((t) => [VALTYPE[t]]))];
    const key = signature.join(',');
    const type = this.types.indexOf(key);
    return type >= 0 ? type : this.types.push(key) - 1;
  }

  /**
   * Imports function `module.field` (imported functions come first in the index space, so every
   * import is declared before the first `func`).
   */
  importFunc(module: string, field: string, params: readonly ValType[], results: readonly ValType[]): FunctionRef {
    if (this.functions.length > 0) throw new Error(`wasm: import ${module}.${field} after a function was defined`);
    const index = this.imports.push({ module, field, type: this.typeIndex(params, results) }) - 1;
    return { index, name: `${module}.${field}` };
  }

  /**
   * Adds a function built by `build` (given the body and its parameters). Functions are numbered in
   * the order they are added, so a callee is added before its callers.
   */
  func(name: string, params: readonly ValType[], results: readonly ValType[], build: (f: FunctionBody, ...params: Local[]) => void, options: { readonly exported: boolean }): FunctionRef {
    const type = this.typeIndex(params, results);
    const body = new FunctionBody(params);
    build(body, ...body.params);
    const index = this.imports.length + this.functions.push({ name, type, body, exported: options.exported }) - 1;
    return { index, name };
  }

  encode(): Uint8Array {
    const FUNCTION_IMPORT = 0x00;
    const MEMORY_IMPORT = 0x02;
    const SHARED_WITH_MAXIMUM = 0x03;
    const FUNCTION_EXPORT = 0x00;
    const types = this.types.map((key) => key.split(',').map(Number));
    const memoryImport = [...name('env'), ...name('memory'), MEMORY_IMPORT, SHARED_WITH_MAXIMUM, ...uleb(0), ...uleb(65536)];
    const funcImports = this.imports.map((im) => [...name(im.module), ...name(im.field), FUNCTION_IMPORT, ...uleb(im.type)]);
    const base = this.imports.length;
    const exports = this.functions.flatMap((f, i) => (f.exported ? [[...name(f.name), FUNCTION_EXPORT, ...uleb(base + i)]] : []));
    return new Uint8Array([
      ...[0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00],
      ...section(1, vector(types)),
      ...section(2, vector([memoryImport, ...funcImports])),
      ...section(3, vector(this.functions.map((f) => uleb(f.type)))),
      ...section(7, vector(exports)),
      ...section(10, vector(this.functions.map((f) => f.body.encode()))),
    ]);
  }
}
