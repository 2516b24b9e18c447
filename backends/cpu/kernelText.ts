/**
 * The text form of a fused kernel for the WebAssembly compiler (simd.ts): the `WASM` dialect in
 * which the shared expression generator (kernel/emitter.ts) spells a kernel, and its parser. The
 * dialect is a small typed statement language: `const`, typed `let`, assignment, `if`/`else`,
 * `for (i in a .. b)` (and `for (i in a .. b by n)`, see simd.ts), infix integer index arithmetic, and `@op(...)` calls for everything typed
 * (loads, stores, unaries, binaries, casts, random bits). Constants carry their exact bits
 * (`$f3e800000`, `$i-1`). `TESSERA_DEBUG=wasm` prints kernels in it.
 */
import type { DType } from '../../core/dtype.ts';
import type { Dialect } from '../kernel/emitter.ts';

/** A kernel this compiler cannot express; the caller falls back to JavaScript. */
export class Unsupported extends Error {}

/** f32 bits in hex: exact for every value, NaN payloads and -0 included. */
function f32Bits(x: number): string {
  return (new Uint32Array(new Float32Array([x]).buffer)[0]! >>> 0).toString(16);
}

function constant(value: number, dtype: DType): string {
  switch (dtype) {
    case 'float32':
      return `$f${f32Bits(value)}`;
    case 'int32':
      return `$i${value | 0}`;
    case 'bool':
      return `$i${value ? 1 : 0}`;
    default:
      throw new Unsupported(`${dtype} constant`);
  }
}

/** The emitter's spelling for this compiler (see the header). */
export const WASM: Dialect = {
  uint: (n) => String(n),
  int: (n) => String(n),
  quotient: (index, divisor) => `@q(${index}, ${divisor})`,
  remainder: (index, divisor) => `(${index} % ${divisor})`,
  let: (name, expr) => `const ${name} = ${expr};`,
  var: (name, dtype, init) => `let ${name}:${dtype} = ${init ?? constant(0, dtype)};`,
  load: (dtype, buffer, index) => `@load.${dtype}(${buffer}, ${index})`,
  constant,
  unary: (fn, inDtype, outDtype, x) => `@u.${fn}.${inDtype}.${outDtype}(${x})`,
  binary: (fn, inDtype, outDtype, a, b) => `@b.${fn}.${inDtype}.${outDtype}(${a}, ${b})`,
  cast: (from, to, x) => `@cast.${from}.${to}(${x})`,
  select: (cond, ifTrue, ifFalse) => `@select(${cond}, ${ifTrue}, ${ifFalse})`,
  signed: (index) => `(${index})`,
  unsigned: (int) => `(${int})`,
  clampIndex: (int, max) => `@clamp(${int}, ${max})`,
  randomBits: (key0, key1, offset, index) => `@random(${key0}, ${key1}, ${offset}, ${index})`,
};

// ---- Parsing -------------------------------------------------------------------------------

export type Expr =
  | { readonly k: 'int'; readonly v: number }
  | { readonly k: 'f32'; readonly v: number }
  | { readonly k: 'name'; readonly name: string }
  | { readonly k: 'call'; readonly fn: string; readonly args: readonly Expr[] }
  | { readonly k: 'bin'; readonly op: string; readonly a: Expr; readonly b: Expr }
  | { readonly k: 'neg'; readonly a: Expr };

export type Stmt =
  | { readonly k: 'const'; readonly name: string; readonly e: Expr }
  | { readonly k: 'let'; readonly name: string; readonly type: string; readonly e: Expr }
  | { readonly k: 'set'; readonly name: string; readonly e: Expr }
  | { readonly k: 'if'; readonly cond: Expr; readonly then: readonly Stmt[]; readonly else?: readonly Stmt[] }
  /** `for (v in from .. to)`; with `by n`, v steps by n and stands for the four indices v .. v + 3 (simd.ts). */
  | { readonly k: 'for'; readonly v: string; readonly from: Expr; readonly to: Expr; readonly by?: number; readonly body: readonly Stmt[] }
  | { readonly k: 'do'; readonly e: Expr };

const TOKEN = /\s*(\$f[0-9a-f]+|\$i-?\d+|@[A-Za-z0-9_.]+|[A-Za-z_][A-Za-z0-9_]*|\d+|\.\.|&&|<=|>=|==|!=|[-+*/%<>=(),;{}:])/y;

function tokenize(src: string): string[] {
  const out: string[] = [];
  TOKEN.lastIndex = 0;
  for (;;) {
    const at = TOKEN.lastIndex;
    if (/^\s*$/.test(src.slice(at))) return out;
    const m = TOKEN.exec(src);
    if (m === null) throw new Unsupported(`cannot read kernel text at ${JSON.stringify(src.slice(at, at + 30))}`);
    out.push(m[1]!);
  }
}

const PRECEDENCE: Record<string, number> = { '&&': 1, '<': 2, '<=': 2, '>': 2, '>=': 2, '==': 2, '!=': 2, '+': 3, '-': 3, '*': 4, '/': 4, '%': 4 };

/** Parses kernel text written in the `WASM` dialect. */
export function parseKernel(src: string): Stmt[] {
  const t = tokenize(src);
  let p = 0;
  const peek = (): string | undefined => t[p];
  const take = (want?: string): string => {
    const tok = t[p++];
    if (tok === undefined || (want !== undefined && tok !== want)) throw new Unsupported(`kernel text: expected ${want ?? 'a token'}, got ${tok ?? 'the end'} at token ${p - 1}`);
    return tok;
  };
  const primary = (): Expr => {
    const tok = take();
    if (tok === '(') {
      const e = expr(0);
      take(')');
      return e;
    }
    if (tok === '-') return { k: 'neg', a: primary() };
    if (/^\d+$/.test(tok)) return { k: 'int', v: Number(tok) };
    if (tok === 'true') return { k: 'int', v: 1 };
    if (tok.startsWith('$i')) return { k: 'int', v: Number(tok.slice(2)) };
    if (tok.startsWith('$f')) return { k: 'f32', v: new Float32Array(new Uint32Array([parseInt(tok.slice(2), 16)]).buffer)[0]! };
    if (tok.startsWith('@')) {
      take('(');
      const args: Expr[] = [];
      while (peek() !== ')') {
        args.push(expr(0));
        if (peek() === ',') take(',');
      }
      take(')');
      return { k: 'call', fn: tok.slice(1), args };
    }
    return { k: 'name', name: tok };
  };
  const expr = (min: number): Expr => {
    let left = primary();
    for (;;) {
      const op = peek();
      const prec = op === undefined ? undefined : PRECEDENCE[op];
      if (prec === undefined || prec <= min) return left;
      take();
      left = { k: 'bin', op: op!, a: left, b: expr(prec) };
    }
  };
  const block = (): Stmt[] => {
    take('{');
    const body: Stmt[] = [];
    while (peek() !== '}') body.push(stmt());
    take('}');
    return body;
  };
  const stmt = (): Stmt => {
    const tok = take();
    switch (tok) {
      case 'const': {
        const name = take();
        take('=');
        const e = expr(0);
        take(';');
        return { k: 'const', name, e };
      }
      case 'let': {
        const name = take();
        take(':');
        const type = take();
        take('=');
        const e = expr(0);
        take(';');
        return { k: 'let', name, type, e };
      }
      case 'if': {
        take('(');
        const cond = expr(0);
        take(')');
        const then = block();
        if (peek() !== 'else') return { k: 'if', cond, then };
        take('else');
        return { k: 'if', cond, then, else: peek() === 'if' ? [stmt()] : block() };
      }
      case 'for': {
        take('(');
        const v = take();
        take('in');
        const from = expr(0);
        take('..');
        const to = expr(0);
        let by: number | undefined;
        if (peek() === 'by') {
          take('by');
          by = Number(take());
        }
        take(')');
        return by === undefined ? { k: 'for', v, from, to, body: block() } : { k: 'for', v, from, to, by, body: block() };
      }
      default: {
        if (tok.startsWith('@')) {
          p--;
          const e = expr(0);
          take(';');
          return { k: 'do', e };
        }
        take('=');
        const e = expr(0);
        take(';');
        return { k: 'set', name: tok, e };
      }
    }
  };
  const out: Stmt[] = [];
  while (p < t.length) out.push(stmt());
  return out;
}

/** A kernel to compile: its text (in the `WASM` dialect), the loop index's name and its buffers. */
export interface KernelText {
  /** Statements run once per output index, named `index`; they store through `@store`. */
  readonly body: string;
  readonly index: string;
  /** Names of the buffer parameters (byte offsets), in argument order. */
  readonly buffers: readonly string[];
  /** Try four outputs per iteration (with a scalar loop for the rest). */
  readonly vectorize: boolean;
  /**
   * Whether that vector form may gather loads lane by lane. Measured on the 2-core machine: four
   * row sums side by side pay off only when their rows start at adjacent elements (a column sum of
   * [32, 64, 256] over axis 0: 0.31 against 0.76 ns per element scalar); with gathered rows (a sum
   * over axes 0 and 2) the vector form was no faster (0.62 against 0.41 to 0.63 ns over repeated
   * runs, on a loaded machine), so reductions say false.
   */
  readonly gathers: boolean;
}
