/**
 * The expression generator behind fusion, shared by the fast backends. `value(node, index)` emits
 * statements computing a node's element at a flat (row-major, non-negative integer) index,
 * recursing through every node that is not materialized: elementwise ops keep the index, movement
 * ops (broadcast, reshape, permute, slice, pad, concat, gather) remap it, and iota, literals and
 * random bits are computed in place. So a chain of such nodes becomes straight-line code in one
 * kernel, whatever kind of kernel hosts it. The index maps are written once, here; a `Dialect`
 * spells them in the backend's language (WGSL for WebGPU, JavaScript for the CPU).
 */
import type { DType } from '../../core/dtype.ts';
import type { ProgramNode } from '../../core/program.ts';
import type { Shape } from '../../core/shape.ts';
import { sizeOf, stridesOf } from '../../core/shape.ts';
import { BackendError } from '../../core/errors.ts';
import type { BinaryFn, UnaryFn } from '../../core/tensor.ts';

/**
 * How a backend's kernel language spells statements and scalar expressions. Indices are
 * non-negative integers below 2^31 (u32 in WGSL); `signed`/`unsigned` convert between them and
 * signed integers (i32), which pad coordinates need.
 */
export interface Dialect {
  /** An index literal. */
  uint(n: number): string;
  /** A signed integer literal (i32 in WGSL), compared with or added to signed coordinates. */
  int(n: number): string;
  /** The integer quotient of a non-negative index by a positive constant. */
  quotient(index: string, divisor: number): string;
  /** The remainder of a non-negative index by a positive constant. */
  remainder(index: string, divisor: number): string;
  /** Declares an immutable value. */
  let(name: string, expr: string): string;
  /** Declares a mutable value of `dtype`, initialised to `init` when given. */
  var(name: string, dtype: DType, init?: string): string;
  /** Reads element `index` of the buffer named `buffer` holding `dtype`. */
  load(dtype: DType, buffer: string, index: string): string;
  constant(value: number, dtype: DType): string;
  /** `inDtype` is the operand's dtype, `outDtype` the result's. */
  unary(fn: UnaryFn, inDtype: DType, outDtype: DType, x: string): string;
  binary(fn: BinaryFn, inDtype: DType, outDtype: DType, a: string, b: string): string;
  cast(from: DType, to: DType, x: string): string;
  select(cond: string, ifTrue: string, ifFalse: string): string;
  signed(index: string): string;
  unsigned(int: string): string;
  /** A signed integer value clamped to [0, max], as an index. */
  clampIndex(int: string, max: number): string;
  /** Word `index mod 2` of Threefry-2x32 at counter (0, offset + index / 2), as an int32 value. */
  randomBits(key0: string, key1: string, offset: number, index: string): string;
}

/** Distinct indices at which one node may be recomputed in a kernel before fusion materializes it. */
const MAX_INDICES_PER_NODE = 8;
/** Ops whose recomputation costs arithmetic (movement ops only cost index math). */
const COMPUTING: ReadonlySet<string> = new Set(['unary', 'binary', 'select', 'cast', 'pad', 'concat', 'gather', 'randomBits']);

export class Emitter {
  private readonly out: string[] = [];
  private depth = 1;
  private readonly scopes: Map<string, string>[] = [new Map()];
  private counter = 0;
  /** Nodes asked for at too many distinct indices: fusion should materialize them. */
  readonly overused = new Set<number>();
  private readonly indicesOf = new Map<number, Set<string>>();

  /**
   * @param nodes the program's nodes
   * @param buffer the binding that holds a node's value, when it is materialized (or a program input)
   */
  constructor(
    readonly nodes: readonly ProgramNode[],
    private readonly buffer: (node: number) => string | undefined,
    readonly dialect: Dialect,
  ) {}

  fresh(prefix = 't'): string {
    return `${prefix}${this.counter++}`;
  }

  line(s: string): void {
    this.out.push('  '.repeat(this.depth) + s);
  }

  /** Emits `header { body }` with its own scope: values computed inside are not visible after it. */
  block(header: string, body: () => void): void {
    this.line(`${header} {`);
    this.depth++;
    this.scopes.push(new Map());
    body();
    this.scopes.pop();
    this.depth--;
    this.line('}');
  }

  /** Declares that `node` at `index` is the expression `expr` (e.g. a reduction's accumulator). */
  define(node: number, index: string, expr: string): void {
    this.scopes[this.scopes.length - 1]!.set(`${node}@${index}`, expr);
  }

  code(): string {
    return this.out.join('\n');
  }

  /**
   * An index variable holding `expr`; the same expression asked for again in its scope is the same
   * variable (index expressions read only immutable values).
   */
  index(expr: string): string {
    if (/^[A-Za-z_][A-Za-z0-9_]*$/.test(expr) || /^\d+u?$/.test(expr)) return expr;
    const key = `=${expr}`;
    for (let s = this.scopes.length - 1; s >= 0; s--) {
      const hit = this.scopes[s]!.get(key);
      if (hit !== undefined) return hit;
    }
    const v = this.fresh('j');
    this.line(this.dialect.let(v, expr));
    this.scopes[this.scopes.length - 1]!.set(key, v);
    return v;
  }

  /** The expression (a name or a constant) for `node`'s element at flat index `idx`. */
  value(n: number, idx: string): string {
    const key = `${n}@${idx}`;
    for (let s = this.scopes.length - 1; s >= 0; s--) {
      const hit = this.scopes[s]!.get(key);
      if (hit !== undefined) return hit;
    }
    const node = this.nodes[n]!;
    const buf = this.buffer(n);
    let expr: string;
    if (buf !== undefined) {
      expr = this.dialect.load(node.dtype, buf, idx);
    } else {
      if (COMPUTING.has(node.prim.op)) this.countUse(n, idx);
      const r = this.compute(n, node, idx);
      if (r.cheap) {
        this.define(n, idx, r.expr);
        return r.expr;
      }
      expr = r.expr;
    }
    const v = this.fresh('v');
    this.line(this.dialect.let(v, expr));
    this.define(n, idx, v);
    return v;
  }

  private countUse(n: number, idx: string): void {
    let set = this.indicesOf.get(n);
    if (set === undefined) this.indicesOf.set(n, (set = new Set()));
    set.add(idx);
    if (set.size > MAX_INDICES_PER_NODE) this.overused.add(n);
  }

  /**
   * Coordinate `axis` of a flat index into a (collapsed) shape; `d` spells its numbers (a kernel may
   * spell a structural size, such as a convolution's window, as a literal in a shape-generic kernel).
   */
  coord(idx: string, stride: number, size: number, total: number, d: Dialect = this.dialect): string {
    if (size === 1) return d.uint(0);
    const q = stride === 1 ? idx : d.quotient(idx, stride);
    return stride * size >= total ? q : d.remainder(q, size);
  }

  private compute(n: number, node: ProgramNode, idx: string): { expr: string; cheap?: boolean } {
    const p = node.prim;
    const ins = node.inputs;
    const d = this.dialect;
    const inNode = (i: number): ProgramNode => this.nodes[ins[i]!]!;
    switch (p.op) {
      case 'input':
      case 'const':
        throw new BackendError(`codegen: node ${n} (${p.op}) has no buffer`);
      case 'literal':
        return { expr: d.constant(p.value, node.dtype), cheap: true };
      case 'unary':
        return { expr: d.unary(p.fn, inNode(0).dtype, node.dtype, this.value(ins[0]!, idx)) };
      case 'binary':
        return { expr: d.binary(p.fn, inNode(0).dtype, node.dtype, this.value(ins[0]!, idx), this.value(ins[1]!, idx)) };
      case 'select':
        return { expr: d.select(this.value(ins[0]!, idx), this.value(ins[1]!, idx), this.value(ins[2]!, idx)) };
      case 'cast':
        return { expr: d.cast(inNode(0).dtype, node.dtype, this.value(ins[0]!, idx)) };
      case 'reshape':
        return { expr: this.value(ins[0]!, idx), cheap: true };
      case 'iota': {
        const c = this.coord(idx, stridesOf(node.shape)[p.axis]!, node.shape[p.axis]!, sizeOf(node.shape));
        return { expr: d.cast('int32', node.dtype, d.signed(c)) };
      }
      case 'broadcast':
        return { expr: this.value(ins[0]!, this.index(this.broadcastIndex(idx, inNode(0).shape, node.shape))), cheap: true };
      case 'permute':
        return { expr: this.value(ins[0]!, this.index(this.permuteIndex(idx, inNode(0).shape, p.perm))), cheap: true };
      case 'slice': {
        const inStrides = stridesOf(inNode(0).shape);
        const outStrides = stridesOf(node.shape);
        const total = sizeOf(node.shape);
        let base = 0;
        const terms: string[] = [];
        node.shape.forEach((size, a) => {
          base += p.starts[a]! * inStrides[a]!;
          if (size > 1) terms.push(`${this.coord(idx, outStrides[a]!, size, total)} * ${d.uint(p.strides[a]! * inStrides[a]!)}`);
        });
        return { expr: this.value(ins[0]!, this.index([d.uint(base), ...terms].join(' + '))), cheap: true };
      }
      case 'pad':
        return { expr: this.pad(idx, node, p.lo, p.interior, p.value, ins[0]!) };
      case 'concat':
        return { expr: this.concat(idx, node, p.axis) };
      case 'gather':
        return { expr: this.gather(idx, node, p.axis) };
      case 'randomBits': {
        const k0 = this.value(ins[0]!, d.uint(0));
        const k1 = this.value(ins[0]!, d.uint(1));
        return { expr: d.randomBits(k0, k1, p.offset, idx) };
      }
      case 'reduce':
      case 'matmul':
      case 'conv2d':
      case 'conv2dGradInput':
      case 'conv2dGradWeight':
        throw new BackendError(`codegen: ${p.op} node ${n} must be materialized or hosted by its own kernel`);
      default:
        return p satisfies never;
    }
  }

  /** Input flat index of a broadcast, with runs of kept or expanded axes merged. */
  private broadcastIndex(idx: string, inShape: Shape, outShape: Shape): string {
    const off = outShape.length - inShape.length;
    const groups: { size: number; kept: boolean }[] = [];
    outShape.forEach((d, a) => {
      if (d === 1) return;
      const kept = a >= off && inShape[a - off] === d;
      const last = groups[groups.length - 1];
      if (last !== undefined && last.kept === kept) last.size *= d;
      else groups.push({ size: d, kept });
    });
    const total = sizeOf(outShape);
    const terms: string[] = [];
    let outStride = total;
    let inStride = groups.filter((g) => g.kept).reduce((s, g) => s * g.size, 1);
    for (const g of groups) {
      outStride /= g.size;
      if (!g.kept) continue;
      inStride /= g.size;
      const c = this.coord(idx, outStride, g.size, total);
      terms.push(inStride === 1 ? c : `${c} * ${this.dialect.uint(inStride)}`);
    }
    return terms.length === 0 ? this.dialect.uint(0) : terms.join(' + ');
  }

  /** Input flat index of a permutation (out axis a is input axis perm[a]), runs of adjacent axes merged. */
  private permuteIndex(idx: string, inShape: Shape, perm: readonly number[]): string {
    const groups: { size: number; first: number; last: number }[] = [];
    perm.forEach((ax) => {
      const d = inShape[ax]!;
      if (d === 1) return;
      const g = groups[groups.length - 1];
      // Adjacent in the output and (skipping size-1 axes) in the input: one run.
      if (g !== undefined && ax > g.last && inShape.slice(g.last + 1, ax).every((x) => x === 1)) {
        g.size *= d;
        g.last = ax;
      } else {
        groups.push({ size: d, first: ax, last: ax });
      }
    });
    const total = sizeOf(inShape);
    const byIn = [...groups].sort((a, b) => a.first - b.first);
    const inStride = new Map<(typeof groups)[number], number>();
    let acc = 1;
    for (let i = byIn.length - 1; i >= 0; i--) {
      inStride.set(byIn[i]!, acc);
      acc *= byIn[i]!.size;
    }
    const terms: string[] = [];
    let outStride = total;
    for (const g of groups) {
      outStride /= g.size;
      const c = this.coord(idx, outStride, g.size, total);
      const s = inStride.get(g)!;
      terms.push(s === 1 ? c : `${c} * ${this.dialect.uint(s)}`);
    }
    return terms.length === 0 ? this.dialect.uint(0) : terms.join(' + ');
  }

  private pad(idx: string, node: ProgramNode, lo: readonly number[], interior: readonly number[], fill: number, input: number): string {
    const d = this.dialect;
    const inShape = this.nodes[input]!.shape;
    const inStrides = stridesOf(inShape);
    const outStrides = stridesOf(node.shape);
    const total = sizeOf(node.shape);
    const conds: string[] = [];
    const terms: string[] = [];
    node.shape.forEach((size, a) => {
      if (inShape[a] === size && lo[a] === 0) {
        if (size > 1) terms.push(`${this.coord(idx, outStrides[a]!, size, total)} * ${d.uint(inStrides[a]!)}`);
        return;
      }
      const c = this.fresh('p');
      this.line(d.let(c, `${d.signed(this.coord(idx, outStrides[a]!, size, total))} - ${d.int(lo[a]!)}`));
      const step = interior[a]! + 1;
      conds.push(`${c} >= 0`, `${c} < ${d.int((inShape[a]! - 1) * step + 1)}`);
      if (step > 1) conds.push(`${c} % ${step} == 0`);
      terms.push(`${d.unsigned(step > 1 ? `${c} / ${step}` : c)} * ${d.uint(inStrides[a]!)}`);
    });
    const v = this.fresh('v');
    this.line(d.var(v, node.dtype, d.constant(fill, node.dtype)));
    if (sizeOf(inShape) === 0) return v;
    this.block(`if (${conds.join(' && ') || 'true'})`, () => {
      const j = this.index(terms.join(' + ') || d.uint(0));
      this.line(`${v} = ${this.value(input, j)};`);
    });
    return v;
  }

  private concat(idx: string, node: ProgramNode, axis: number): string {
    const d = this.dialect;
    const outStride = stridesOf(node.shape)[axis]!;
    const total = sizeOf(node.shape);
    const dim = node.shape[axis]!;
    const c = this.index(this.coord(idx, outStride, dim, total));
    const pre = this.index(outStride * dim >= total ? d.uint(0) : d.quotient(idx, outStride * dim));
    const post = this.index(outStride === 1 ? d.uint(0) : d.remainder(idx, outStride));
    const v = this.fresh('v');
    this.line(d.var(v, node.dtype));
    let offset = 0;
    const parts = node.inputs.map((inp) => ({ inp, size: this.nodes[inp]!.shape[axis]! })).filter((x) => x.size > 0);
    parts.forEach(({ inp, size }, k) => {
      const start = offset;
      offset += size;
      const header = k === 0 ? `if (${c} < ${d.uint(offset)})` : k === parts.length - 1 ? 'else' : `else if (${c} < ${d.uint(offset)})`;
      this.block(parts.length === 1 ? 'if (true)' : header, () => {
        const j = this.index(`${pre} * ${d.uint(size * outStride)} + (${c} - ${d.uint(start)}) * ${d.uint(outStride)} + ${post}`);
        this.line(`${v} = ${this.value(inp, j)};`);
      });
    });
    return v;
  }

  private gather(idx: string, node: ProgramNode, axis: number): string {
    const d = this.dialect;
    const x = this.nodes[node.inputs[0]!]!;
    const ind = this.nodes[node.inputs[1]!]!;
    const post = sizeOf(x.shape.slice(axis + 1));
    const isz = sizeOf(ind.shape);
    const n = x.shape[axis]!;
    const total = sizeOf(node.shape);
    const mid = this.index(this.coord(idx, post, isz, total));
    const k = this.value(node.inputs[1]!, mid);
    const pre = post * isz >= total ? d.uint(0) : d.quotient(idx, post * isz);
    const p = post === 1 ? d.uint(0) : d.remainder(idx, post);
    const j = this.index(`(${pre} * ${d.uint(n)} + ${d.clampIndex(k, n - 1)}) * ${d.uint(post)} + ${p}`);
    return this.value(node.inputs[0]!, j);
  }
}

/** The binding of a kernel's output `i`: `out` for its root, `out1`, `out2`, ... for its siblings. */
export const outputBinding = (i: number): string => (i === 0 ? 'out' : `out${i}`);

/**
 * The buffers a kernel writing `writes` (its root, then any siblings) reads, named `${prefix}0`,
 * `${prefix}1`, ... in the order the generator meets them: `name(n)` is the name of materialized
 * node `n` (undefined for the nodes the kernel writes, which it computes, and for nodes computed
 * inline), and `reads[i]` the node bound as `${prefix}i`.
 */
export function readBindings(materialized: ReadonlySet<number>, writes: readonly number[], prefix: string): { readonly reads: readonly number[]; name(n: number): string | undefined } {
  const reads: number[] = [];
  const names = new Map<number, string>();
  const own = new Set(writes);
  return {
    reads,
    name(n) {
      if (own.has(n) || !materialized.has(n)) return undefined;
      let name = names.get(n);
      if (name === undefined) {
        name = `${prefix}${reads.length}`;
        names.set(n, name);
        reads.push(n);
      }
      return name;
    },
  };
}
