/**
 * Fused elementwise and reduction kernels as WebAssembly, vectorised over four consecutive outputs.
 * The kernel arrives as text in the `WASM` dialect (kernelText.ts, parsed there); this file compiles
 * it to one Wasm function twice over:
 *
 *  - **vector** (elementwise kernels): four consecutive output indices per iteration. Every integer
 *    index is tracked as *uniform* (the same in all four lanes), *contiguous* (lane l is base + l) or
 *    a general i32x4 vector, from the loop index (contiguous, and a multiple of 4) through `+ - * / %`:
 *    e.g. `gi / 256` is uniform and `gi % 256` contiguous, so a per-channel bias is one scalar load
 *    and a splat, and a same-shape operand one `v128.load`. Values are f32x4/i32x4; exp and sigmoid
 *    use an f64x2 port of the reference's own exp (exp.ts), and what else SIMD128 has no instruction
 *    for (log, sin, ...) is computed per lane by the reference's function, imported from `math.js`.
 *    A branch on a value that differs between lanes (a pad along the innermost axis) makes the vector
 *    form impossible, and the kernel is compiled scalar only.
 *  - **scalar**: one output per iteration: the tail of a vector loop, and reductions whose rows do
 *    not start side by side (their sums accumulate in f64 in the reference's order).
 *
 * Every operation rounds as the reference stores it: f32 `+ - * / sqrt` are the correctly rounded
 * results the reference gets from a double and one rounding; rsqrt is computed in f64 and rounded
 * once, as the reference does; imported functions see the same doubles. So the kernels are
 * bit-identical to the reference, as the JavaScript ones are. What this compiler does not support
 * (int32 division and powers, among others) throws `Unsupported`, and the caller keeps the
 * JavaScript kernel for it.
 */
import type { DType } from '../../core/dtype.ts';
import { THREEFRY_PARITY, THREEFRY_ROTATIONS } from '../../core/threefry.ts';
import type { BinaryFn, UnaryFn } from '../../core/tensor.ts';
import { EXP_FAST_LIMIT, emitExpF64x2 } from './exp.ts';
import { parseKernel, Unsupported, type Expr, type KernelText, type Stmt } from './kernelText.ts';
import { type FunctionBody, type FunctionRef, type Local, ModuleBuilder, type PlainOp } from './wasm.ts';

/** A kernel whose vector form would branch per lane; it is compiled scalar. */
class NotUniform extends Error {}

// ---- Values --------------------------------------------------------------------------------

type Lane = 'i32' | 'f32' | 'f64';

/**
 * A value as the generated code holds it: uniform (one scalar for every lane; `c` when it is a known
 * constant, `m4` when it is known to be a multiple of 4), contiguous (an i32 base; lane l holds
 * base + l; `al` when the base is a multiple of 4), or a v128 vector of four i32/f32 lanes.
 */
type Val =
  | { readonly r: 'u'; readonly t: Lane; readonly l?: Local; readonly c?: number; readonly m4: boolean }
  | { readonly r: 'c'; readonly l: Local; readonly al: boolean }
  | { readonly r: 'v'; readonly t: 'i32' | 'f32'; readonly l: Local }
  /** Four f64 lanes (a vector reduction's sums): lanes 0 and 1 in `lo`, 2 and 3 in `hi`. */
  | { readonly r: 'w'; readonly lo: Local; readonly hi: Local };

type Uniform = Extract<Val, { r: 'u' }>;
type Vector = Extract<Val, { r: 'v' }>;

/** Narrows out four f64 lanes, which only a reduction's accumulator and its rounding see. */
function notWide(v: Val): Exclude<Val, { r: 'w' }> {
  if (v.r === 'w') throw new Error('simd: four f64 lanes where a value was expected');
  return v;
}

const int = (c: number): Val => ({ r: 'u', t: 'i32', c: c | 0, m4: (c | 0) % 4 === 0 });

function laneOf(dtype: string): 'i32' | 'f32' {
  if (dtype === 'float32') return 'f32';
  if (dtype === 'int32' || dtype === 'bool') return 'i32';
  throw new Unsupported(`${dtype} values`);
}

const MATH_UNARY = new Set(['exp', 'log', 'sin', 'cos', 'tanh', 'sign', 'sigmoid']);

/** Builds one function body from parsed statements, in vector or scalar form. */
class Codegen {
  private readonly env = new Map<string, Val>();
  /** Mutable `let` variables: their local and lane type (vectors in vector form). */
  private readonly vars = new Map<string, { readonly l: Local; readonly t: Lane; readonly hi?: Local }>();

  constructor(
    private readonly f: FunctionBody,
    private readonly vector: boolean,
    private readonly math: ReadonlyMap<string, FunctionRef>,
    bindings: ReadonlyMap<string, Val>,
    /** Whether the vector form may load lanes one by one (else such a kernel compiles scalar). */
    private readonly gathers = true,
  ) {
    bindings.forEach((v, k) => this.env.set(k, v));
  }

  bind(name: string, v: Val): void {
    this.env.set(name, v);
  }

  stmts(list: readonly Stmt[]): void {
    for (const s of list) this.stmt(s);
  }

  private stmt(s: Stmt): void {
    const f = this.f;
    switch (s.k) {
      case 'const':
        this.env.set(s.name, this.expr(s.e));
        return;
      case 'let': {
        // f64x4: four f64 lanes in any form (the partial sums of an inner vector loop).
        const wide = s.type === 'f64x4' || (this.vector && s.type === 'f64');
        const t: Lane = s.type === 'f64' || s.type === 'f64x4' ? 'f64' : laneOf(s.type);
        const l = f.local(this.vector || wide ? 'v128' : t);
        const v = { l, t, hi: wide ? f.local('v128') : undefined };
        this.vars.set(s.name, v);
        this.assign(v, this.expr(s.e));
        return;
      }
      case 'set': {
        const v = this.vars.get(s.name);
        if (v === undefined) throw new Unsupported(`assignment to ${s.name}, which is not a variable`);
        this.assign(v, this.expr(s.e));
        return;
      }
      case 'if': {
        const c = this.expr(s.cond);
        if (c.r !== 'u') throw new NotUniform('a branch that differs between lanes');
        if (c.c !== undefined) {
          this.stmts(c.c !== 0 ? s.then : (s.else ?? []));
          return;
        }
        this.push(c);
        f.if(
          () => this.stmts(s.then),
          s.else === undefined ? undefined : () => this.stmts(s.else!),
        );
        return;
      }
      case 'for': {
        const from = this.expr(s.from);
        const to = this.expr(s.to);
        if (from.r !== 'u' || to.r !== 'u') throw new NotUniform('a loop bound that differs between lanes');
        const i = f.local('i32');
        const bound = to.c !== undefined ? to.c : to.l!;
        if (s.by !== undefined) {
          // An inner vector loop: i steps by `by` and stands for the four indices i .. i + 3. In a
          // kernel already vectorized over its outputs the lanes are taken.
          if (this.vector) throw new NotUniform('an inner vector loop in a kernel vectorized over its outputs');
          if (from.c === undefined || s.by % 4 !== 0) throw new Error('simd: an inner vector loop starts at a constant and steps by a multiple of 4');
          this.env.set(s.v, { r: 'c', l: i, al: from.c % 4 === 0 });
          f.for(i, from.c, bound, () => this.stmts(s.body), s.by);
          return;
        }
        this.env.set(s.v, { r: 'u', t: 'i32', l: i, m4: false });
        f.for(i, from.c !== undefined ? from.c : from.l!, bound, () => this.stmts(s.body));
        return;
      }
      case 'do':
        this.expr(s.e);
        return;
      default:
        return s satisfies never;
    }
  }

  /** Stores `v` into a variable (four f64 lanes are two locals). */
  private assign(w: { readonly l: Local; readonly t: Lane; readonly hi?: Local }, v: Val): void {
    if (w.hi === undefined) {
      this.store(w.l, w.t, v);
      return;
    }
    const f = this.f;
    if (v.r === 'w') {
      f.get(v.lo).set(w.l).get(v.hi).set(w.hi);
      return;
    }
    if (v.r !== 'u' || v.t !== 'f32') throw new Error('simd: an f64 variable takes an f32 constant or four f64 lanes');
    this.push(v);
    f.op('f64.promote_f32').op('f64x2.splat').set(w.l);
    f.get(w.l).set(w.hi);
  }

  /** Stores `v` into a variable's local (a vector local in vector form). */
  private store(l: Local, t: Lane, v: Val): void {
    if (this.vector) {
      this.pushVector(v, t as 'i32' | 'f32');
    } else {
      this.push(v);
      const from = v.r === 'u' ? v.t : 'i32';
      if (t === 'f64' && from === 'f32') this.f.op('f64.promote_f32');
      else if (from !== t) throw new Error(`simd: a ${from} value stored in a ${t} variable`);
    }
    this.f.set(l);
  }

  // -- pushing values onto the stack --

  /** Pushes a uniform value as its scalar. */
  private push(v: Val): void {
    if (v.r !== 'u') throw new Error('simd: a lane-varying value where a scalar was expected');
    if (v.c !== undefined) {
      if (v.t === 'i32') this.f.i32(v.c);
      else if (v.t === 'f32') this.f.f32(v.c);
      else this.f.f64(v.c);
    } else {
      this.f.get(v.l!);
    }
  }

  /** Pushes any value as a v128 of lane type `t`. */
  private pushVector(w: Val, t: 'i32' | 'f32'): void {
    const f = this.f;
    const v = notWide(w);
    if (v.r === 'v') {
      f.get(v.l);
      return;
    }
    if (v.r === 'c') {
      f.get(v.l).op('i32x4.splat').i32x4([0, 1, 2, 3]).op('i32x4.add');
      return;
    }
    if (v.t === 'f64') throw new Unsupported('an f64 value in vector form');
    this.push(v);
    f.op(v.t === 'f32' ? 'f32x4.splat' : 'i32x4.splat');
    if (v.t !== t) throw new Error(`simd: a ${v.t} value used as ${t}`);
  }

  private toLocal(t: Lane | 'v128', build: () => void): Local {
    const l = this.f.local(t);
    build();
    this.f.set(l);
    return l;
  }

  private uniform(t: Lane, build: () => void, m4 = false): Uniform {
    return { r: 'u', t, l: this.toLocal(t, build), m4 };
  }

  private vec(t: 'i32' | 'f32', build: () => void): Vector {
    return { r: 'v', t, l: this.toLocal('v128', build) };
  }

  /** Four scalar results, one per lane: `lane(k)` pushes lane k's scalar of type `t`. */
  private perLane(t: 'i32' | 'f32', lane: (k: number) => void): Vector {
    const f = this.f;
    return this.vec(t, () => {
      f.i32x4([0, 0, 0, 0]);
      for (let k = 0; k < 4; k++) {
        lane(k);
        f.lane(t === 'f32' ? 'f32x4.replace_lane' : 'i32x4.replace_lane', k);
      }
    });
  }

  /** Pushes lane k of `v` as a scalar of type `t`. */
  private pushLane(w: Val, t: 'i32' | 'f32', k: number): void {
    const v = notWide(w);
    if (v.r === 'u') this.push(v);
    else if (v.r === 'c') this.f.get(v.l).i32(k).op('i32.add');
    else this.f.get(v.l).lane(t === 'f32' ? 'f32x4.extract_lane' : 'i32x4.extract_lane', k);
  }

  // -- expressions --

  expr(e: Expr): Val {
    switch (e.k) {
      case 'int':
        return int(e.v);
      case 'f32':
        return { r: 'u', t: 'f32', c: e.v, m4: false };
      case 'name': {
        const v = this.env.get(e.name);
        if (v !== undefined) return v;
        const w = this.vars.get(e.name);
        if (w === undefined) throw new Unsupported(`unknown name ${e.name}`);
        if (w.hi !== undefined) return { r: 'w', lo: w.l, hi: w.hi };
        return this.vector ? { r: 'v', t: w.t as 'i32' | 'f32', l: w.l } : { r: 'u', t: w.t, l: w.l, m4: false };
      }
      case 'neg':
        return this.index('-', int(0), this.expr(e.a));
      case 'bin':
        return this.index(e.op, this.expr(e.a), this.expr(e.b));
      case 'call':
        return this.call(e.fn, e.args);
      default:
        return e satisfies never;
    }
  }

  /** Integer index arithmetic and comparisons (JavaScript's results on values below 2^31). */
  private index(op: string, a: Val, b: Val): Val {
    const f = this.f;
    if (a.r === 'u' && b.r === 'u') {
      if (a.t !== 'i32' || b.t !== 'i32') throw new Unsupported(`index operator ${op} on ${a.t} and ${b.t}`);
      if (a.c !== undefined && b.c !== undefined) return int(foldIndex(op, a.c, b.c));
      if (op === '*' && (a.c === 1 || b.c === 1)) return a.c === 1 ? b : a;
      if (op === '+' && (a.c === 0 || b.c === 0)) return a.c === 0 ? b : a;
      const m4 = op === '+' || op === '-' ? a.m4 && b.m4 : op === '*' ? a.m4 || b.m4 : false;
      return this.uniform('i32', () => {
        this.push(a);
        this.push(b);
        f.op(SCALAR_INDEX_OP[op] ?? unsupported(`index operator ${op}`));
      }, m4);
    }
    // Contiguous forms that stay cheap.
    if (a.r === 'c' && b.r === 'u') {
      if (op === '+' || op === '-') {
        if (b.c === 0) return a;
        return { r: 'c', al: a.al && b.m4, l: this.toLocal('i32', () => { f.get(a.l); this.push(b); f.op(op === '+' ? 'i32.add' : 'i32.sub'); }) };
      }
      if (op === '*' && b.c === 1) return a;
      if ((op === '/' || op === '%') && a.al && b.c !== undefined && b.c > 0 && b.c % 4 === 0) {
        const base = this.uniform('i32', () => { f.get(a.l).i32(b.c!).op(op === '/' ? 'i32.div_s' : 'i32.rem_s'); });
        return op === '/' ? base : { r: 'c', al: true, l: base.l! };
      }
    }
    if (a.r === 'u' && b.r === 'c' && op === '+') return this.index('+', b, a);
    // General: i32x4 lanes.
    const vop = VECTOR_INDEX_OP[op];
    if (vop !== undefined) {
      const v = this.vec('i32', () => {
        this.pushVector(a, 'i32');
        this.pushVector(b, 'i32');
        f.op(vop);
        if (COMPARISON.has(op)) f.i32x4([1, 1, 1, 1]).op('v128.and');
      });
      return v;
    }
    const sop = SCALAR_INDEX_OP[op] ?? unsupported(`index operator ${op}`);
    return this.perLane('i32', (k) => {
      this.pushLane(a, 'i32', k);
      this.pushLane(b, 'i32', k);
      f.op(sop);
    });
  }

  private call(fn: string, args: readonly Expr[]): Val {
    const [head, ...rest] = fn.split('.');
    const f = this.f;
    switch (head) {
      case 'q':
        return this.index('/', this.expr(args[0]!), this.expr(args[1]!));
      case 'clamp': {
        const x = this.expr(args[0]!);
        const max = this.expr(args[1]!);
        if (x.r === 'u') {
          return this.uniform('i32', () => {
            // x < 0 ? 0 : x > max ? max : x
            this.push(int(0));
            this.push(max);
            this.push(x);
            this.push(x);
            this.push(max);
            f.op('i32.gt_s').op('select');
            this.push(x);
            this.push(int(0));
            f.op('i32.lt_s').op('select');
          });
        }
        return this.vec('i32', () => {
          this.pushVector(x, 'i32');
          this.pushVector(max, 'i32');
          f.op('i32x4.min_s');
          this.pushVector(int(0), 'i32');
          f.op('i32x4.max_s');
        });
      }
      case 'load':
        return this.load(rest[0]!, this.expr(args[0]!), this.expr(args[1]!));
      case 'store':
        this.storeElement(rest[0]!, this.expr(args[0]!), this.expr(args[1]!), this.expr(args[2]!));
        return int(0);
      case 'u':
        return this.unary(rest[0] as UnaryFn, rest[1] as DType, rest[2] as DType, this.expr(args[0]!));
      case 'b':
        return this.binary(rest[0] as BinaryFn, rest[1] as DType, rest[2] as DType, this.expr(args[0]!), this.expr(args[1]!));
      case 'cast':
        return this.cast(rest[0] as DType, rest[1] as DType, this.expr(args[0]!));
      case 'select': {
        const c = this.expr(args[0]!);
        const a = this.expr(args[1]!);
        const b = this.expr(args[2]!);
        const na = notWide(a);
        const t = na.r === 'u' ? na.t : na.r === 'c' ? 'i32' : na.t;
        if (t === 'f64') throw new Unsupported('f64 select');
        if (c.r === 'u' && a.r === 'u' && b.r === 'u') {
          return this.uniform(t, () => {
            this.push(a);
            this.push(b);
            this.push(c);
            f.op('select');
          });
        }
        return this.vec(t, () => {
          this.pushVector(a, t);
          this.pushVector(b, t);
          this.pushVector(c, 'i32');
          this.pushVector(int(0), 'i32');
          f.op('i32x4.ne').op('v128.bitselect');
        });
      }
      case 'random':
        return this.random(this.expr(args[0]!), this.expr(args[1]!), this.expr(args[2]!), this.expr(args[3]!));
      case 'acc':
        if (rest[0] === 'add') return this.addF64(this.expr(args[0]!), this.expr(args[1]!));
        if (rest[0] === 'lanes') return this.sumLanes(this.expr(args[0]!));
        return this.accumulate(rest[0]!, rest[1]!, this.expr(args[0]!), this.expr(args[1]!));
      case 'fround': {
        const x = this.expr(args[0]!);
        if (x.r === 'w') {
          return this.vec('f32', () => {
            f.get(x.lo).op('f32x4.demote_f64x2_zero').get(x.hi).op('f32x4.demote_f64x2_zero');
            f.shuffle([0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23]);
          });
        }
        return this.uniform('f32', () => {
          this.push(x);
          f.op('f32.demote_f64');
        });
      }
      default:
        throw new Unsupported(`@${fn}`);
    }
  }

  private address(buf: Val, index: Val | number, width: number): void {
    this.push(buf);
    if (typeof index === 'number') this.f.i32(index);
    else if (index.r === 'c') this.f.get(index.l);
    else this.push(index);
    if (width > 1) this.f.i32(Math.log2(width)).op('i32.shl');
    this.f.op('i32.add');
  }

  private load(dtype: string, buf: Val, w: Val): Val {
    const idx = notWide(w);
    const f = this.f;
    const t = laneOf(dtype);
    const width = dtype === 'bool' ? 1 : 4;
    const scalarLoad = dtype === 'bool' ? 'i32.load8_u' : dtype === 'float32' ? 'f32.load' : 'i32.load';
    if (idx.r === 'u') {
      return this.uniform(t, () => {
        this.address(buf, idx, width);
        f.mem(scalarLoad);
      });
    }
    if (idx.r === 'c') {
      return this.vec(t, () => {
        this.address(buf, idx, width);
        if (width === 4) f.mem('v128.load', 0, 2);
        else f.mem('v128.load32_zero', 0, 0).op('i16x8.extend_low_i8x16_u').op('i32x4.extend_low_i16x8_u');
      });
    }
    if (!this.gathers) throw new NotUniform('a load gathered lane by lane');
    const lanes = this.toLocal('v128', () => f.get(idx.l));
    return this.perLane(t, (k) => {
      this.push(buf);
      f.get(lanes).lane('i32x4.extract_lane', k);
      if (width > 1) f.i32(2).op('i32.shl');
      f.op('i32.add').mem(scalarLoad);
    });
  }

  private storeElement(dtype: string, buf: Val, idx: Val, value: Val): void {
    const f = this.f;
    const t = laneOf(dtype);
    if (idx.r === 'u') {
      this.address(buf, idx, dtype === 'bool' ? 1 : 4);
      this.push(value);
      f.mem(dtype === 'bool' ? 'i32.store8' : dtype === 'float32' ? 'f32.store' : 'i32.store');
      return;
    }
    if (idx.r !== 'c') throw new Unsupported('a store at lane-varying indices');
    if (dtype !== 'bool') {
      this.address(buf, idx, 4);
      this.pushVector(value, t);
      f.mem('v128.store', 0, 2);
      return;
    }
    const v = value.r === 'v' ? value.l : this.toLocal('v128', () => this.pushVector(value, 'i32'));
    for (let k = 0; k < 4; k++) {
      this.address(buf, idx, 1);
      f.get(v).lane('i32x4.extract_lane', k).mem('i32.store8', k);
    }
  }

  /** An instruction on `t` lanes: `scalar` when every operand is uniform, else `vector`. */
  private laneOp(t: 'i32' | 'f32', args: readonly Val[], scalar: PlainOp, vector: PlainOp): Val {
    if (args.every((a) => a.r === 'u')) {
      return this.uniform(t, () => {
        args.forEach((a) => this.push(a));
        this.f.op(scalar);
      });
    }
    return this.vec(t, () => {
      args.forEach((a) => this.pushVector(a, t));
      this.f.op(vector);
    });
  }

  private floatOp(args: readonly Val[], scalar: PlainOp, vector: PlainOp): Val {
    return this.laneOp('f32', args, scalar, vector);
  }

  private intOp(args: readonly Val[], scalar: PlainOp, vector: PlainOp): Val {
    return this.laneOp('i32', args, scalar, vector);
  }

  /** A comparison giving a bool (0 or 1). */
  private compare(t: 'i32' | 'f32', a: Val, b: Val, scalar: PlainOp, vector: PlainOp): Val {
    if (a.r === 'u' && b.r === 'u') {
      return this.uniform('i32', () => {
        this.push(a);
        this.push(b);
        this.f.op(scalar);
      });
    }
    return this.vec('i32', () => {
      this.pushVector(a, t);
      this.pushVector(b, t);
      this.f.op(vector).i32x4([1, 1, 1, 1]).op('v128.and');
    });
  }

  /** An f64 -> f64 function applied to each f32 lane (promoted exactly), rounded back to f32. */
  private viaF64(args: readonly Val[], body: () => void): Uniform | Vector {
    const f = this.f;
    if (args.every((a) => a.r === 'u')) {
      return this.uniform('f32', () => {
        args.forEach((a) => {
          this.push(a);
          f.op('f64.promote_f32');
        });
        body();
        f.op('f32.demote_f64');
      });
    }
    const locals = args.map((a) => (a.r === 'v' ? a.l : this.toLocal('v128', () => this.pushVector(a, 'f32'))));
    return this.perLane('f32', (k) => {
      locals.forEach((l) => f.get(l).lane('f32x4.extract_lane', k).op('f64.promote_f32'));
      body();
      f.op('f32.demote_f64');
    });
  }

  /**
   * exp or the reference's sigmoid (x >= 0 ? 1 / (1 + exp(-x)) : e / (1 + e), e = exp(x)) in
   * f64, rounded once: inline (exp.ts, two lanes at a time) when every lane is in exp's fast range,
   * else through Math.exp per lane (overflow, underflow, NaN: rare).
   */
  private expLike(fn: 'exp' | 'sigmoid', x: Val): Val {
    const f = this.f;
    const uniform = x.r === 'u';
    const out = f.local(uniform ? 'f32' : 'v128');
    const xs = uniform ? x.l ?? this.toLocal('f32', () => this.push(x)) : x.r === 'v' ? x.l : this.toLocal('v128', () => this.pushVector(x, 'f32'));
    // All lanes |x| < EXP_FAST_LIMIT (false for NaN).
    if (uniform) {
      f.get(xs).op('f32.abs').f32(EXP_FAST_LIMIT).op('f32.lt');
    } else {
      f.get(xs).op('f32x4.abs').f32(EXP_FAST_LIMIT).op('f32x4.splat').op('f32x4.lt').op('i32x4.all_true');
    }
    /** f(two f64 lanes in `h`), as f64x2 on the stack. */
    const body = (h: Local): void => {
      if (fn === 'exp') {
        emitExpF64x2(f, h);
        return;
      }
      const nonneg = this.toLocal('v128', () => f.get(h).f64x2([0, 0]).op('f64x2.ge'));
      const u = this.toLocal('v128', () => f.get(h).op('f64x2.neg').get(h).get(nonneg).op('v128.bitselect'));
      const e = this.toLocal('v128', () => emitExpF64x2(f, u));
      // The numerator is chosen before the one division: 1 or e, over 1 + e.
      f.f64x2([1, 1]).get(e).get(nonneg).op('v128.bitselect');
      f.f64x2([1, 1]).get(e).op('f64x2.add').op('f64x2.div');
    };
    const half = this.f.local('v128');
    f.if(
      () => {
        if (uniform) {
          f.get(xs).op('f64.promote_f32').op('f64x2.splat').set(half);
          body(half);
          f.lane('f64x2.extract_lane', 0).op('f32.demote_f64').set(out);
          return;
        }
        f.get(xs).op('f64x2.promote_low_f32x4').set(half);
        body(half);
        f.op('f32x4.demote_f64x2_zero');
        f.get(xs).get(xs).shuffle([8, 9, 10, 11, 12, 13, 14, 15, 8, 9, 10, 11, 12, 13, 14, 15]).op('f64x2.promote_low_f32x4').set(half);
        body(half);
        f.op('f32x4.demote_f64x2_zero');
        f.shuffle([0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23]).set(out);
      },
      () => {
        const slow = this.viaF64([uniform ? { r: 'u', t: 'f32', l: xs, m4: false } : { r: 'v', t: 'f32', l: xs }], () => this.callMath(fn));
        f.get(slow.l!).set(out);
      },
    );
    return uniform ? { r: 'u', t: 'f32', l: out, m4: false } : { r: 'v', t: 'f32', l: out };
  }

  private callMath(name: string): void {
    const fn = this.math.get(name);
    if (fn === undefined) throw new Error(`simd: math.${name} is not imported`);
    this.f.call(fn);
  }

  private unary(fn: UnaryFn, inDtype: DType, outDtype: DType, x: Val): Val {
    const f = this.f;
    if (inDtype === 'float32' && outDtype === 'float32') {
      switch (fn) {
        case 'neg':
          return this.floatOp([x], 'f32.neg', 'f32x4.neg');
        case 'abs':
          return this.floatOp([x], 'f32.abs', 'f32x4.abs');
        case 'sqrt':
          return this.floatOp([x], 'f32.sqrt', 'f32x4.sqrt');
        case 'floor':
          return this.floatOp([x], 'f32.floor', 'f32x4.floor');
        case 'reciprocal':
          return this.floatOp([{ r: 'u', t: 'f32', c: 1, m4: false }, x], 'f32.div', 'f32x4.div');
        case 'rsqrt':
          // 1 / sqrt(x) in double, rounded once (as the reference), two lanes at a time.
          if (x.r === 'u') return this.uniform('f32', () => { f.f64(1); this.push(x); f.op('f64.promote_f32').op('f64.sqrt').op('f64.div').op('f32.demote_f64'); });
          return this.vec('f32', () => {
            const v = this.toLocal('v128', () => this.pushVector(x, 'f32'));
            const half = (hi: boolean): void => {
              f.f64(1).op('f64x2.splat').get(v);
              if (hi) f.get(v).shuffle([8, 9, 10, 11, 12, 13, 14, 15, 8, 9, 10, 11, 12, 13, 14, 15]);
              f.op('f64x2.promote_low_f32x4').op('f64x2.sqrt').op('f64x2.div').op('f32x4.demote_f64x2_zero');
            };
            half(false);
            half(true);
            f.shuffle([0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23]);
          });
        case 'isFinite':
        case 'logicalNot':
        case 'uniformFromBits':
          break;
        case 'exp':
        case 'sigmoid':
          return this.expLike(fn, x);
        default:
          if (MATH_UNARY.has(fn)) return this.viaF64([x], () => this.callMath(fn));
      }
    }
    if (fn === 'isFinite' && inDtype === 'float32') {
      // x - x is 0 exactly when x is finite (inf - inf and NaN give NaN).
      const d = this.floatOp([x, x], 'f32.sub', 'f32x4.sub');
      return this.compare('f32', d, { r: 'u', t: 'f32', c: 0, m4: false }, 'f32.eq', 'f32x4.eq');
    }
    if (fn === 'logicalNot') {
      const t = laneOf(inDtype);
      return this.compare(t, x, t === 'f32' ? { r: 'u', t: 'f32', c: 0, m4: false } : int(0), t === 'f32' ? 'f32.eq' : 'i32.eq', t === 'f32' ? 'f32x4.eq' : 'i32x4.eq');
    }
    if (fn === 'uniformFromBits' && inDtype === 'int32' && outDtype === 'float32') {
      // (bits >>> 8) * 2^-24: exact in f32.
      if (x.r === 'u') return this.uniform('f32', () => { this.push(x); f.i32(8).op('i32.shr_u').op('f32.convert_i32_u').f32(5.9604644775390625e-8).op('f32.mul'); });
      return this.vec('f32', () => { this.pushVector(x, 'i32'); f.i32(8).op('i32x4.shr_u').op('f32x4.convert_i32x4_u').f32(5.9604644775390625e-8).op('f32x4.splat').op('f32x4.mul'); });
    }
    if (inDtype === 'int32' && outDtype === 'int32') {
      if (fn === 'neg') return this.intOp([int(0), x], 'i32.sub', 'i32x4.sub');
      if (fn === 'abs' && x.r !== 'u') return this.vec('i32', () => { this.pushVector(x, 'i32'); f.op('i32x4.abs'); });
      if (fn === 'abs') {
        return this.uniform('i32', () => {
          this.push(x);
          f.i32(0);
          this.push(x);
          f.op('i32.sub');
          this.push(x);
          f.i32(0).op('i32.ge_s').op('select');
        });
      }
    }
    throw new Unsupported(`${fn} on ${inDtype} -> ${outDtype}`);
  }

  private binary(fn: BinaryFn, inDtype: DType, outDtype: DType, a: Val, b: Val): Val {
    if (inDtype === 'float32') {
      const arith = F32_ARITHMETIC[fn];
      if (arith !== undefined) return this.floatOp([a, b], ...arith);
      const cmp = F32_COMPARE[fn];
      if (cmp !== undefined) return this.compare('f32', a, b, ...cmp);
      if (fn === 'pow') return this.viaF64([a, b], () => this.callMath('pow'));
      throw new Unsupported(`${fn} on float32`);
    }
    if (inDtype !== 'int32' && inDtype !== 'bool') throw new Unsupported(`${fn} on ${inDtype}`);
    const cmp = I32_COMPARE[fn];
    if (cmp !== undefined) return this.compare('i32', a, b, ...cmp);
    const arith = I32_ARITHMETIC[fn];
    if (arith !== undefined) {
      if (outDtype !== 'int32') throw new Unsupported(`${fn} on ${inDtype} -> ${outDtype}`);
      return this.intOp([a, b], ...arith);
    }
    switch (fn) {
      case 'max':
      case 'min': {
        if (a.r === 'u' && b.r === 'u') {
          return this.uniform('i32', () => {
            this.push(a);
            this.push(b);
            this.push(a);
            this.push(b);
            this.f.op(fn === 'max' ? 'i32.gt_s' : 'i32.lt_s').op('select');
          });
        }
        return this.vec('i32', () => {
          this.pushVector(a, 'i32');
          this.pushVector(b, 'i32');
          this.f.op(fn === 'max' ? 'i32x4.max_s' : 'i32x4.min_s');
        });
      }
      case 'and':
      case 'or': {
        const na = this.compare('i32', a, int(0), 'i32.ne', 'i32x4.ne');
        const nb = this.compare('i32', b, int(0), 'i32.ne', 'i32x4.ne');
        return this.intOp([na, nb], fn === 'and' ? 'i32.and' : 'i32.or', fn === 'and' ? 'v128.and' : 'v128.or');
      }
      default:
        throw new Unsupported(`${fn} on ${inDtype}`);
    }
  }

  private cast(from: DType, to: DType, x: Val): Val {
    if (from === to) return x;
    if (to === 'bool') {
      return from === 'float32' ? this.compare('f32', x, { r: 'u', t: 'f32', c: 0, m4: false }, 'f32.ne', 'f32x4.ne') : this.compare('i32', x, int(0), 'i32.ne', 'i32x4.ne');
    }
    if (to === 'int32') {
      if (from === 'bool') return x;
      if (from === 'float32') return this.intOpFrom(x, 'i32.trunc_sat_f32_s', 'i32x4.trunc_sat_f32x4_s');
    }
    if (to === 'float32' && (from === 'int32' || from === 'bool')) {
      if (x.r === 'u') return this.uniform('f32', () => { this.push(x); this.f.op('f32.convert_i32_s'); });
      return this.vec('f32', () => { this.pushVector(x, 'i32'); this.f.op('f32x4.convert_i32x4_s'); });
    }
    throw new Unsupported(`cast ${from} -> ${to}`);
  }

  private intOpFrom(x: Val, scalar: PlainOp, vector: PlainOp): Val {
    if (x.r === 'u') return this.uniform('i32', () => { this.push(x); this.f.op(scalar); });
    return this.vec('i32', () => { this.pushVector(x, 'f32'); this.f.op(vector); });
  }

  /**
   * Word `index & 1` of Threefry-2x32 under key (k0, k1) at counter (0, offset + (index >>> 1)), as
   * core/threefry.ts defines it: 20 rounds with a key injection after every 4, in i32 (wrapping)
   * arithmetic; four counters at once in vector form.
   */
  private random(k0: Val, k1: Val, offset: Val, index: Val): Val {
    const f = this.f;
    const vector = [k0, k1, offset, index].some((v) => v.r !== 'u');
    const t: Lane | 'v128' = vector ? 'v128' : 'i32';
    const put = (v: Val): void => (vector ? this.pushVector(v, 'i32') : this.push(v));
    const op = vector
      ? { add: 'i32x4.add', xor: 'v128.xor', or: 'v128.or', and: 'v128.and', shl: 'i32x4.shl', shr: 'i32x4.shr_u', eq: 'i32x4.eq' } as const
      : { add: 'i32.add', xor: 'i32.xor', or: 'i32.or', and: 'i32.and', shl: 'i32.shl', shr: 'i32.shr_u', eq: 'i32.eq' } as const;
    const konst = (c: number): void => {
      f.i32(c);
      if (vector) f.op('i32x4.splat');
    };
    const ks = [this.toLocal(t, () => put(k0)), this.toLocal(t, () => put(k1)), f.local(t)] as const;
    konst(THREEFRY_PARITY);
    f.get(ks[0]).op(op.xor).get(ks[1]).op(op.xor).set(ks[2]);
    const a = this.toLocal(t, () => f.get(ks[0]));
    // b = offset + (index >>> 1) + k1
    const b = this.toLocal(t, () => {
      put(offset);
      put(index);
      f.i32(1).op(op.shr).op(op.add).get(ks[1]).op(op.add);
    });
    for (let round = 0; round < 20; round++) {
      const r = THREEFRY_ROTATIONS[round % 8]!;
      f.get(a).get(b).op(op.add).set(a);
      f.get(b).i32(r).op(op.shl).get(b).i32(32 - r).op(op.shr).op(op.or).get(a).op(op.xor).set(b);
      if (round % 4 === 3) {
        const inj = (round + 1) / 4;
        f.get(a).get(ks[inj % 3]!).op(op.add).set(a);
        f.get(b).get(ks[(inj + 1) % 3]!).op(op.add);
        konst(inj);
        f.op(op.add).set(b);
      }
    }
    // index & 1 ? b : a
    return (vector ? (build: () => void) => this.vec('i32', build) : (build: () => void) => this.uniform('i32', build))(() => {
      f.get(a).get(b);
      put(index);
      konst(1);
      f.op(op.and);
      konst(0);
      f.op(op.eq);
      f.op(vector ? 'v128.bitselect' : 'select');
    });
  }

  /** A reduction step of four outputs at once, each lane summing its own row in the same order. */
  private accumulateLanes(fn: string, dtype: string, acc: Val, v: Val): Val {
    const f = this.f;
    if (fn === 'sum' && dtype === 'float32') {
      if (acc.r !== 'w') throw new Error('simd: a float sum accumulates in four f64 lanes');
      const x = v.r === 'v' ? v.l : this.toLocal('v128', () => this.pushVector(v, 'f32'));
      const lo = this.toLocal('v128', () => f.get(acc.lo).get(x).op('f64x2.promote_low_f32x4').op('f64x2.add'));
      const hi = this.toLocal('v128', () => {
        f.get(acc.hi).get(x).get(x).shuffle([8, 9, 10, 11, 12, 13, 14, 15, 8, 9, 10, 11, 12, 13, 14, 15]);
        f.op('f64x2.promote_low_f32x4').op('f64x2.add');
      });
      return { r: 'w', lo, hi };
    }
    if (fn === 'sum' && dtype === 'int32') return this.intOp([acc, v], 'i32.add', 'i32x4.add');
    const t = dtype === 'float32' ? 'f32' : 'i32';
    if (fn === 'max' && (dtype === 'float32' || dtype === 'int32')) {
      return this.vec(t, () => {
        this.pushVector(v, t);
        this.pushVector(acc, t);
        this.pushVector(v, t);
        this.pushVector(acc, t);
        if (t === 'f32') {
          // v > acc || v !== v
          f.op('f32x4.gt');
          this.pushVector(v, t);
          this.pushVector(v, t);
          f.op('f32x4.ne').op('v128.or');
        } else {
          f.op('i32x4.gt_s');
        }
        f.op('v128.bitselect');
      });
    }
    throw new Unsupported(`${fn} reduction of ${dtype}`);
  }

  /** The f64 sum of two partial sums (`@acc.add.f64`): scalars, or four f64 lanes each. */
  private addF64(a: Val, b: Val): Val {
    const f = this.f;
    if (a.r === 'w' && b.r === 'w') {
      const lo = this.toLocal('v128', () => f.get(a.lo).get(b.lo).op('f64x2.add'));
      const hi = this.toLocal('v128', () => f.get(a.hi).get(b.hi).op('f64x2.add'));
      return { r: 'w', lo, hi };
    }
    if (a.r !== 'u' || b.r !== 'u' || a.t !== 'f64' || b.t !== 'f64') throw new Error('simd: @acc.add.f64 takes two f64 sums');
    return this.uniform('f64', () => {
      this.push(a);
      this.push(b);
      f.op('f64.add');
    });
  }

  /** The scalar f64 sum of four f64 lanes (`@acc.lanes.f64`): (l0 + l1) + (l2 + l3). */
  private sumLanes(w: Val): Val {
    const f = this.f;
    if (w.r !== 'w' || this.vector) throw new Error('simd: @acc.lanes.f64 takes four f64 lanes, outside a kernel vectorized over its outputs');
    return this.uniform('f64', () => {
      f.get(w.lo).lane('f64x2.extract_lane', 0).get(w.lo).lane('f64x2.extract_lane', 1).op('f64.add');
      f.get(w.hi).lane('f64x2.extract_lane', 0).get(w.hi).lane('f64x2.extract_lane', 1).op('f64.add');
      f.op('f64.add');
    });
  }

  /** Reduction steps (scalar form only): float sums in f64, int sums wrap, max keeps NaN. */
  private accumulate(fn: string, dtype: string, acc: Val, v: Val): Val {
    const f = this.f;
    if (acc.r !== 'u' || v.r !== 'u') return this.accumulateLanes(fn, dtype, acc, v);
    if (fn === 'sum' && dtype === 'float32') return this.uniform('f64', () => { this.push(acc); this.push(v); f.op('f64.promote_f32').op('f64.add'); });
    if (fn === 'sum' && dtype === 'int32') return this.uniform('i32', () => { this.push(acc); this.push(v); f.op('i32.add'); });
    if (fn === 'max' && dtype === 'float32') {
      // v > acc || v !== v ? v : acc: the first of equal values is kept, NaN sticks.
      return this.uniform('f32', () => {
        this.push(v);
        this.push(acc);
        this.push(v);
        this.push(acc);
        f.op('f32.gt');
        this.push(v);
        this.push(v);
        f.op('f32.ne').op('i32.or').op('select');
      });
    }
    if (fn === 'max' && dtype === 'int32') return this.uniform('i32', () => { this.push(v); this.push(acc); this.push(v); this.push(acc); f.op('i32.gt_s').op('select'); });
    throw new Unsupported(`${fn} reduction of ${dtype}`);
  }
}

function unsupported(what: string): never {
  throw new Unsupported(what);
}

type OpPair = readonly [scalar: PlainOp, vector: PlainOp];

/** float32 binaries that are one instruction; max and min propagate NaN and order -0 below +0, as Math.max/min. */
const F32_ARITHMETIC: Partial<Record<BinaryFn, OpPair>> = {
  add: ['f32.add', 'f32x4.add'], sub: ['f32.sub', 'f32x4.sub'], mul: ['f32.mul', 'f32x4.mul'], div: ['f32.div', 'f32x4.div'],
  max: ['f32.max', 'f32x4.max'], min: ['f32.min', 'f32x4.min'],
};
const F32_COMPARE: Partial<Record<BinaryFn, OpPair>> = {
  lt: ['f32.lt', 'f32x4.lt'], le: ['f32.le', 'f32x4.le'], gt: ['f32.gt', 'f32x4.gt'], ge: ['f32.ge', 'f32x4.ge'], eq: ['f32.eq', 'f32x4.eq'], ne: ['f32.ne', 'f32x4.ne'],
};
/** int32 (wrapping) binaries that are one instruction; * is Math.imul. */
const I32_ARITHMETIC: Partial<Record<BinaryFn, OpPair>> = { add: ['i32.add', 'i32x4.add'], sub: ['i32.sub', 'i32x4.sub'], mul: ['i32.mul', 'i32x4.mul'] };
const I32_COMPARE: Partial<Record<BinaryFn, OpPair>> = {
  lt: ['i32.lt_s', 'i32x4.lt_s'], le: ['i32.le_s', 'i32x4.le_s'], gt: ['i32.gt_s', 'i32x4.gt_s'], ge: ['i32.ge_s', 'i32x4.ge_s'], eq: ['i32.eq', 'i32x4.eq'], ne: ['i32.ne', 'i32x4.ne'],
};

const SCALAR_INDEX_OP: Record<string, PlainOp> = {
  '+': 'i32.add', '-': 'i32.sub', '*': 'i32.mul', '/': 'i32.div_s', '%': 'i32.rem_s',
  '<': 'i32.lt_s', '<=': 'i32.le_s', '>': 'i32.gt_s', '>=': 'i32.ge_s', '==': 'i32.eq', '!=': 'i32.ne', '&&': 'i32.and',
};
const VECTOR_INDEX_OP: Record<string, PlainOp> = {
  '+': 'i32x4.add', '-': 'i32x4.sub', '*': 'i32x4.mul',
  '<': 'i32x4.lt_s', '<=': 'i32x4.le_s', '>': 'i32x4.gt_s', '>=': 'i32x4.ge_s', '==': 'i32x4.eq', '!=': 'i32x4.ne', '&&': 'v128.and',
};
const COMPARISON = new Set(['<', '<=', '>', '>=', '==', '!=']);

function foldIndex(op: string, a: number, b: number): number {
  switch (op) {
    case '+': return (a + b) | 0;
    case '-': return (a - b) | 0;
    case '*': return Math.imul(a, b);
    case '/': return b === 0 ? unsupported('index division by zero') : (a / b) | 0;
    case '%': return b === 0 ? unsupported('index remainder by zero') : a % b;
    case '<': return a < b ? 1 : 0;
    case '<=': return a <= b ? 1 : 0;
    case '>': return a > b ? 1 : 0;
    case '>=': return a >= b ? 1 : 0;
    case '==': return a === b ? 1 : 0;
    case '!=': return a !== b ? 1 : 0;
    case '&&': return a !== 0 && b !== 0 ? 1 : 0;
    default: return unsupported(`index operator ${op}`);
  }
}

/** The compiled module: export `k(start, end, ...buffers)`; `vectorized` says whether the vector loop exists. */
export function compileKernel(kernel: KernelText): { readonly module: WebAssembly.Module; readonly vectorized: boolean } {
  const stmts = parseKernel(kernel.body);
  const names = [...new Set(kernel.body.match(/@u\.(\w+)|@b\.pow/g) ?? [])]
    .map((m) => (m === '@b.pow' ? 'pow' : m.slice(3)))
    .filter((n) => MATH_UNARY.has(n) || n === 'pow');
  const build = (vector: boolean): Uint8Array => {
    const mb = new ModuleBuilder();
    const math = new Map<string, FunctionRef>();
    for (const n of names) math.set(n, mb.importFunc('math', n, n === 'pow' ? ['f64', 'f64'] : ['f64'], ['f64']));
    mb.func('k', ['i32', 'i32', ...kernel.buffers.map(() => 'i32' as const)], [], (f, start, end, ...bufs) => {
      const bindings = new Map<string, Val>(kernel.buffers.map((b, i) => [b, { r: 'u', t: 'i32', l: bufs[i]!, m4: false }]));
      const i = f.local('i32');
      const scalarFrom = f.local('i32');
      f.get(start!).set(scalarFrom);
      if (vector) {
        // Four outputs per iteration over [start, start + 4 floor((end - start) / 4)); `start` is a
        // multiple of 4 (the runtime's grain), so `i` is too. The scalar loop finishes the rest.
        const vend = f.local('i32');
        f.get(end!).get(start!).op('i32.sub').i32(-4).op('i32.and').get(start!).op('i32.add').set(vend);
        const g = new Codegen(f, true, math, bindings, kernel.gathers);
        g.bind(kernel.index, { r: 'c', l: i, al: true });
        f.for(i, start!, vend, () => g.stmts(stmts), 4);
        f.get(vend).set(scalarFrom);
      }
      const g = new Codegen(f, false, math, bindings);
      g.bind(kernel.index, { r: 'u', t: 'i32', l: i, m4: false });
      f.for(i, scalarFrom, end!, () => g.stmts(stmts));
    }, { exported: true });
    return mb.encode();
  };
  let bytes: Uint8Array | undefined;
  let vectorized = false;
  if (kernel.vectorize) {
    try {
      bytes = build(true);
      vectorized = true;
    } catch (e) {
      if (!(e instanceof NotUniform) && !(e instanceof Unsupported)) throw e;
    }
  }
  try {
    bytes ??= build(false);
  } catch (e) {
    // Only an inner vector loop makes the scalar form branch per lane: JavaScript takes the kernel.
    if (e instanceof NotUniform) throw new Unsupported(e.message);
    throw e;
  }
  try {
    return { module: new WebAssembly.Module(bytes), vectorized };
  } catch (e) {
    throw new Error(`simd: the generated module does not validate: ${(e as Error).message}\n${kernel.body}`);
  }
}
