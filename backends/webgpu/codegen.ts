/**
 * The expression generator behind fusion. `value(node, index)` emits WGSL statements computing a
 * node's element at a flat (row-major, u32) index, recursing through every node that is not
 * materialized: elementwise ops keep the index, movement ops (broadcast, reshape, permute, slice,
 * pad, concat, gather) remap it, and iota, literals and random bits are computed in place. So a
 * chain of such nodes becomes straight-line code in one kernel, whatever kind of kernel hosts it.
 */
import type { ProgramNode } from '../../core/program.ts';
import type { Shape } from '../../core/shape.ts';
import { sizeOf, stridesOf } from '../../core/shape.ts';
import { BackendError } from '../../core/errors.ts';
import { binaryExpr, castExpr, constant, fromStorage, unaryExpr, valueType } from './wgsl.ts';

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

  /** Declares that `node` at `index` is the WGSL expression `expr` (e.g. a reduction's accumulator). */
  define(node: number, index: string, expr: string): void {
    this.scopes[this.scopes.length - 1]!.set(`${node}@${index}`, expr);
  }

  code(): string {
    return this.out.join('\n');
  }

  /** A u32 variable holding `expr`. */
  index(expr: string): string {
    if (/^[A-Za-z_][A-Za-z0-9_]*$/.test(expr) || /^\d+u$/.test(expr)) return expr;
    const v = this.fresh('j');
    this.line(`let ${v} = ${expr};`);
    return v;
  }

  /** The WGSL expression (a name or a constant) for `node`'s element at flat index `idx`. */
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
      expr = fromStorage(node.dtype, `${buf}[${idx}]`);
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
    this.line(`let ${v} = ${expr};`);
    this.define(n, idx, v);
    return v;
  }

  private countUse(n: number, idx: string): void {
    let set = this.indicesOf.get(n);
    if (set === undefined) this.indicesOf.set(n, (set = new Set()));
    set.add(idx);
    if (set.size > MAX_INDICES_PER_NODE) this.overused.add(n);
  }

  /** Coordinate `axis` of a flat index into a (collapsed) shape. */
  coord(idx: string, stride: number, size: number, total: number): string {
    if (size === 1) return '0u';
    const q = stride === 1 ? idx : `(${idx} / ${stride}u)`;
    return stride * size >= total ? q : `(${q} % ${size}u)`;
  }

  private compute(n: number, node: ProgramNode, idx: string): { expr: string; cheap?: boolean } {
    const p = node.prim;
    const ins = node.inputs;
    const inNode = (i: number): ProgramNode => this.nodes[ins[i]!]!;
    switch (p.op) {
      case 'input':
      case 'const':
        throw new BackendError(`codegen: node ${n} (${p.op}) has no buffer`);
      case 'literal':
        return { expr: constant(p.value, node.dtype), cheap: true };
      case 'unary':
        return { expr: unaryExpr(p.fn, inNode(0).dtype, this.value(ins[0]!, idx)) };
      case 'binary':
        return { expr: binaryExpr(p.fn, inNode(0).dtype, this.value(ins[0]!, idx), this.value(ins[1]!, idx)) };
      case 'select':
        return { expr: `select(${this.value(ins[2]!, idx)}, ${this.value(ins[1]!, idx)}, ${this.value(ins[0]!, idx)})` };
      case 'cast':
        return { expr: castExpr(inNode(0).dtype, node.dtype, this.value(ins[0]!, idx)) };
      case 'reshape':
        return { expr: this.value(ins[0]!, idx), cheap: true };
      case 'iota': {
        const c = this.coord(idx, stridesOf(node.shape)[p.axis]!, node.shape[p.axis]!, sizeOf(node.shape));
        return { expr: castExpr('int32', node.dtype, `i32(${c})`) };
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
        node.shape.forEach((d, a) => {
          base += p.starts[a]! * inStrides[a]!;
          if (d > 1) terms.push(`${this.coord(idx, outStrides[a]!, d, total)} * ${p.strides[a]! * inStrides[a]!}u`);
        });
        return { expr: this.value(ins[0]!, this.index([`${base}u`, ...terms].join(' + '))), cheap: true };
      }
      case 'pad':
        return { expr: this.pad(idx, node, p.lo, p.interior, p.value, ins[0]!) };
      case 'concat':
        return { expr: this.concat(idx, node, p.axis) };
      case 'gather':
        return { expr: this.gather(idx, node, p.axis) };
      case 'randomBits': {
        const k0 = this.value(ins[0]!, '0u');
        const k1 = this.value(ins[0]!, '1u');
        const bits = `threefry2x32(vec2<u32>(bitcast<u32>(${k0}), bitcast<u32>(${k1})), vec2<u32>(0u, ${p.offset}u + ${idx} / 2u))`;
        return { expr: `bitcast<i32>(${bits}[${idx} % 2u])` };
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
      terms.push(inStride === 1 ? c : `${c} * ${inStride}u`);
    }
    return terms.length === 0 ? '0u' : terms.join(' + ');
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
      terms.push(s === 1 ? c : `${c} * ${s}u`);
    }
    return terms.length === 0 ? '0u' : terms.join(' + ');
  }

  private pad(idx: string, node: ProgramNode, lo: readonly number[], interior: readonly number[], fill: number, input: number): string {
    const inShape = this.nodes[input]!.shape;
    const inStrides = stridesOf(inShape);
    const outStrides = stridesOf(node.shape);
    const total = sizeOf(node.shape);
    const conds: string[] = [];
    const terms: string[] = [];
    node.shape.forEach((d, a) => {
      if (inShape[a] === d && lo[a] === 0) {
        if (d > 1) terms.push(`u32(${this.coord(idx, outStrides[a]!, d, total)}) * ${inStrides[a]!}u`);
        return;
      }
      const c = this.fresh('p');
      this.line(`let ${c} = i32(${this.coord(idx, outStrides[a]!, d, total)}) - ${lo[a]!};`);
      const step = interior[a]! + 1;
      conds.push(`${c} >= 0`, `${c} < ${(inShape[a]! - 1) * step + 1}`);
      if (step > 1) conds.push(`${c} % ${step} == 0`);
      terms.push(`u32(${step > 1 ? `${c} / ${step}` : c}) * ${inStrides[a]!}u`);
    });
    const v = this.fresh('v');
    this.line(`var ${v} = ${constant(fill, node.dtype)};`);
    if (sizeOf(inShape) === 0) return v;
    this.block(`if (${conds.join(' && ') || 'true'})`, () => {
      const j = this.index(terms.join(' + ') || '0u');
      this.line(`${v} = ${this.value(input, j)};`);
    });
    return v;
  }

  private concat(idx: string, node: ProgramNode, axis: number): string {
    const outStride = stridesOf(node.shape)[axis]!;
    const total = sizeOf(node.shape);
    const dim = node.shape[axis]!;
    const c = this.index(this.coord(idx, outStride, dim, total));
    const pre = this.index(outStride * dim >= total ? '0u' : `${idx} / ${outStride * dim}u`);
    const post = this.index(outStride === 1 ? '0u' : `${idx} % ${outStride}u`);
    const v = this.fresh('v');
    this.line(`var ${v}: ${valueType(node.dtype)};`);
    let offset = 0;
    const parts = node.inputs.map((inp) => ({ inp, size: this.nodes[inp]!.shape[axis]! })).filter((x) => x.size > 0);
    parts.forEach(({ inp, size }, k) => {
      const start = offset;
      offset += size;
      const header = k === 0 ? `if (${c} < ${offset}u)` : k === parts.length - 1 ? 'else' : `else if (${c} < ${offset}u)`;
      this.block(parts.length === 1 ? 'if (true)' : header, () => {
        const j = this.index(`${pre} * ${size * outStride}u + (${c} - ${start}u) * ${outStride}u + ${post}`);
        this.line(`${v} = ${this.value(inp, j)};`);
      });
    });
    return v;
  }

  private gather(idx: string, node: ProgramNode, axis: number): string {
    const x = this.nodes[node.inputs[0]!]!;
    const ind = this.nodes[node.inputs[1]!]!;
    const post = sizeOf(x.shape.slice(axis + 1));
    const isz = sizeOf(ind.shape);
    const n = x.shape[axis]!;
    const total = sizeOf(node.shape);
    const mid = this.index(this.coord(idx, post, isz, total));
    const k = this.value(node.inputs[1]!, mid);
    const pre = post * isz >= total ? '0u' : `(${idx} / ${post * isz}u)`;
    const p = post === 1 ? '0u' : `(${idx} % ${post}u)`;
    const j = this.index(`(${pre} * ${n}u + u32(clamp(${k}, 0i, ${n - 1}i))) * ${post}u + ${p}`);
    return this.value(node.inputs[0]!, j);
  }
}
