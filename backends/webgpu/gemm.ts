/**
 * Matmul and the three convolutions as one register-tiled GEMM. Each contraction is described by
 * loaders: `a(batch, row, k)` and `b(batch, k, column)` emit the operand elements (for convolutions,
 * the implicit im2col gather, so no patch matrix is ever materialized), and `out(batch, row, col)`
 * gives the flat output index where the epilogue (the root's fused same-index chain) is evaluated.
 *
 * A workgroup of 64 invocations computes RM rows by 64 * RN columns. The rows (and k) are the same
 * for the whole workgroup, so A's elements are uniform loads broadcast to every lane, and each
 * lane reads B at consecutive columns; per-column index arithmetic (the im2col coordinates) is
 * hoisted out of the k loop. No workgroup memory and no barriers: on lavapipe (where "lanes" are a
 * CPU core's SIMD registers and workgroup memory is ordinary memory) staging tiles only costs, and
 * barriers make shaders slow to compile and to run.
 */
import type { Program, ProgramNode } from '../../core/program.ts';
import type { ConvAttrs } from '../../core/tensor.ts';
import { sizeOf } from '../../core/shape.ts';
import { BackendError } from '../../core/errors.ts';
import type { Emitter } from '../kernel/emitter.ts';
import type { KernelBody } from './kernel.ts';
import { WGSL } from './wgsl.ts';

/** Invocations per workgroup. */
const LANES = 64;

export interface Tile {
  /** Rows per workgroup (uniform across its lanes). */
  readonly rm: number;
  /** Columns per invocation: adjacent when `adjacent`, else 64 apart. */
  readonly rn: number;
  readonly adjacent?: boolean;
}

interface Contraction {
  readonly kind: string;
  readonly batch: number;
  readonly m: number;
  readonly n: number;
  readonly k: number;
  /** Per-row offset into A, computed once before the k loop and passed to `a`. */
  row(em: Emitter, b: string, row: string): string;
  a(em: Emitter, b: string, k: string, row: string): string;
  /** Per-column values, computed once before the k loop and passed to `b`. */
  col(em: Emitter, b: string, col: string): string[];
  b(em: Emitter, b: string, k: string, col: readonly string[]): string;
  out(em: Emitter, b: string, row: string, col: string): string;
}

/**
 * A size, stride or offset of the contraction by its role (`role`, e.g. 'Cg * KH * KW'), in the
 * kernel's dialect: in a shape-generic kernel, one uniform word per role, so the loaders of every
 * row and column spell their shared terms alike (and the shader compiler computes them once).
 */
const roleWords = new WeakMap<Emitter, Map<string, string>>();
function u(em: Emitter, role: string, n: number, spell = (x: number) => em.dialect.uint(x)): string {
  let words = roleWords.get(em);
  if (words === undefined) roleWords.set(em, (words = new Map()));
  let w = words.get(role);
  if (w === undefined) words.set(role, (w = spell(n)));
  return w;
}

/** The same for a signed number (compared with signed coordinates). */
const int = (em: Emitter, role: string, n: number): string => u(em, `int ${role}`, n, (x) => em.dialect.int(x));

/** x's element at `index` when `cond` holds, else 0, without a divergent branch. */
function guarded(em: Emitter, cond: string, index: string, node: number): string {
  const ok = em.fresh('ok');
  em.line(`let ${ok} = ${cond};`);
  const v = em.value(node, em.index(`select(0u, ${index}, ${ok})`));
  return `select(0.0, ${v}, ${ok})`;
}

function matmulContraction(nodes: readonly ProgramNode[], h: ProgramNode): Contraction {
  const [aN, bN] = [h.inputs[0]!, h.inputs[1]!];
  const r = h.shape.length;
  const m = h.shape[r - 2]!;
  const n = h.shape[r - 1]!;
  const k = nodes[aN]!.shape[r - 1]!;
  return {
    kind: 'matmul',
    batch: sizeOf(h.shape.slice(0, -2)),
    m,
    n,
    k,
    row: (em, b, row) => em.index(`${b} * ${u(em, 'm * k', m * k)} + ${row} * ${u(em, 'k', k)}`),
    a: (em, _b, kk, row) => em.value(aN, em.index(`${row} + ${kk}`)),
    col: (em, b, col) => [em.index(`${b} * ${u(em, 'k * n', k * n)} + ${col}`)],
    b: (em, _b, kk, [base]) => em.value(bN, em.index(`${base} + ${kk} * ${u(em, 'n', n)}`)),
    out: (em, b, row, col) => `${b} * ${u(em, 'm * n', m * n)} + ${row} * ${u(em, 'n', n)} + ${col}`,
  };
}

/**
 * Splits `flat` into coordinates over `sizes` (row-major), as u32 expressions. A convolution's
 * window (KH, KW) is structure, not shape: `window` splits with those numbers spelled out, so the
 * divisions in the k loop stay divisions by constants in a shape-generic kernel too.
 */
function split(em: Emitter, flat: string, sizes: readonly number[], window = false): string[] {
  const total = sizeOf(sizes);
  let stride = total;
  return sizes.map((s) => {
    stride /= s;
    return em.index(em.coord(flat, stride, s, total, window ? WGSL : em.dialect));
  });
}

function convContraction(nodes: readonly ProgramNode[], h: ProgramNode & { prim: ConvAttrs & { op: string } }): Contraction {
  const a = h.prim;
  const [sh, sw] = a.stride;
  const [ph, pw] = a.padding;
  const [dh, dw] = a.dilation;
  const g = a.groups;
  const in0 = h.inputs[0]!;
  const in1 = h.inputs[1]!;
  // Spatial sizes: x [N,C,H,W], w [O,Cg,KH,KW], y [N,O,OH,OW].
  const [xs, ws, ys] =
    h.prim.op === 'conv2d'
      ? [nodes[in0]!.shape, nodes[in1]!.shape, h.shape]
      : h.prim.op === 'conv2dGradInput'
        ? [h.shape, nodes[in1]!.shape, nodes[in0]!.shape]
        : [nodes[in0]!.shape, h.shape, nodes[in1]!.shape];
  const [N, C, H, W] = xs as [number, number, number, number];
  const [O, Cg, KH, KW] = ws as [number, number, number, number];
  const [, , OH, OW] = ys as [number, number, number, number];
  const Og = O / g;
  const HW = H * W;
  switch (h.prim.op) {
    case 'conv2d':
      return {
        kind: 'conv2d',
        batch: g,
        m: Og,
        n: N * OH * OW,
        k: Cg * KH * KW,
        row: (em, b, row) => em.index(`(${b} * ${u(em, 'Og', Og)} + ${row}) * ${u(em, 'Cg * KH * KW', Cg * KH * KW)}`),
        a: (em, _b, kk, row) => em.value(in1, em.index(`${row} + ${kk}`)),
        col: (em, b, col) => {
          const [n, oh, ow] = split(em, col, [N, OH, OW]);
          const ih = em.fresh('h');
          const iw = em.fresh('w');
          em.line(`let ${ih} = i32(${oh} * ${sh}u) - ${ph};`);
          em.line(`let ${iw} = i32(${ow} * ${sw}u) - ${pw};`);
          return [ih, iw, em.index(`(${n} * ${u(em, 'C', C)} + ${b} * ${u(em, 'Cg', Cg)}) * ${u(em, 'HW', HW)}`)];
        },
        b: (em, _b, kk, [ih0, iw0, base]) => {
          const [c, kh, kw] = split(em, kk, [Cg, KH, KW], true);
          const ih = em.fresh('h');
          const iw = em.fresh('w');
          em.line(`let ${ih} = ${ih0} + i32(${kh} * ${dh}u);`);
          em.line(`let ${iw} = ${iw0} + i32(${kw} * ${dw}u);`);
          return guarded(em, `${ih} >= 0 && ${ih} < ${int(em, 'H', H)} && ${iw} >= 0 && ${iw} < ${int(em, 'W', W)}`, `${base} + ${c} * ${u(em, 'HW', HW)} + u32(${ih}) * ${u(em, 'W', W)} + u32(${iw})`, in0);
        },
        out: (em, b, row, col) =>
          `${em.dialect.quotient(col, OH * OW)} * ${u(em, 'O * OH * OW', O * OH * OW)} + (${b} * ${u(em, 'Og', Og)} + ${row}) * ${u(em, 'OH * OW', OH * OW)} + ${em.dialect.remainder(col, OH * OW)}`,
      };
    case 'conv2dGradInput':
      return {
        kind: 'conv2dGradInput',
        batch: g,
        m: Cg,
        n: N * H * W,
        k: Og * KH * KW,
        // ((b * Og + o) * Cg + row) * KH * KW + khw, its row term apart.
        row: (em, _b, row) => em.index(`${row} * ${u(em, 'KH * KW', KH * KW)}`),
        a: (em, b, kk, row) => {
          const [o, khw] = split(em, kk, [Og, KH * KW], true);
          const kp = em.index(`(${b} * ${u(em, 'Og', Og)} + ${o}) * ${u(em, 'Cg * KH * KW', Cg * KH * KW)} + ${khw}`);
          return em.value(in1, em.index(`${kp} + ${row}`));
        },
        col: (em, b, col) => {
          const [n, y, x] = split(em, col, [N, H, W]);
          const th = em.fresh('h');
          const tw = em.fresh('w');
          em.line(`let ${th} = i32(${y}) + ${ph};`);
          em.line(`let ${tw} = i32(${x}) + ${pw};`);
          return [th, tw, em.index(`(${n} * ${u(em, 'O', O)} + ${b} * ${u(em, 'Og', Og)}) * ${u(em, 'OH * OW', OH * OW)}`)];
        },
        b: (em, _b, kk, [th0, tw0, base]) => {
          const [o, kh, kw] = split(em, kk, [Og, KH, KW], true);
          const th = em.fresh('h');
          const tw = em.fresh('w');
          em.line(`let ${th} = ${th0} - i32(${kh} * ${dh}u);`);
          em.line(`let ${tw} = ${tw0} - i32(${kw} * ${dw}u);`);
          const ok = [`${th} >= 0`, `${tw} >= 0`, `${th} < ${int(em, 'OH * sh', OH * sh)}`, `${tw} < ${int(em, 'OW * sw', OW * sw)}`];
          if (sh > 1) ok.push(`${th} % ${sh} == 0`);
          if (sw > 1) ok.push(`${tw} % ${sw} == 0`);
          return guarded(em, ok.join(' && '), `${base} + ${o} * ${u(em, 'OH * OW', OH * OW)} + u32(${th} / ${sh}) * ${u(em, 'OW', OW)} + u32(${tw} / ${sw})`, in0);
        },
        out: (em, b, row, col) =>
          `${em.dialect.quotient(col, HW)} * ${u(em, 'C * HW', C * HW)} + (${b} * ${u(em, 'Cg', Cg)} + ${row}) * ${u(em, 'HW', HW)} + ${em.dialect.remainder(col, HW)}`,
      };
    case 'conv2dGradWeight':
      return {
        kind: 'conv2dGradWeight',
        batch: g,
        m: Og,
        n: Cg * KH * KW,
        k: N * OH * OW,
        // (n * O + b * Og + row) * OH * OW + ohw, its row term apart.
        row: (em, b, row) => em.index(`(${b} * ${u(em, 'Og', Og)} + ${row}) * ${u(em, 'OH * OW', OH * OW)}`),
        a: (em, _b, kk, row) => {
          const [n, ohw] = split(em, kk, [N, OH * OW]);
          const kp = em.index(`${n} * ${u(em, 'O * OH * OW', O * OH * OW)} + ${ohw}`);
          return em.value(in1, em.index(`${kp} + ${row}`));
        },
        col: (em, b, col) => {
          const [c, kh, kw] = split(em, col, [Cg, KH, KW], true);
          const ih = em.fresh('h');
          const iw = em.fresh('w');
          em.line(`let ${ih} = i32(${kh} * ${dh}u) - ${ph};`);
          em.line(`let ${iw} = i32(${kw} * ${dw}u) - ${pw};`);
          return [ih, iw, em.index(`(${b} * ${u(em, 'Cg', Cg)} + ${c}) * ${u(em, 'HW', HW)}`)];
        },
        b: (em, _b, kk, [ih0, iw0, base]) => {
          const [n, oh, ow] = split(em, kk, [N, OH, OW]);
          const ih = em.fresh('h');
          const iw = em.fresh('w');
          em.line(`let ${ih} = ${ih0} + i32(${oh} * ${sh}u);`);
          em.line(`let ${iw} = ${iw0} + i32(${ow} * ${sw}u);`);
          return guarded(em, `${ih} >= 0 && ${ih} < ${int(em, 'H', H)} && ${iw} >= 0 && ${iw} < ${int(em, 'W', W)}`, `${n} * ${u(em, 'C * HW', C * HW)} + ${base} + u32(${ih}) * ${u(em, 'W', W)} + u32(${iw})`, in0);
        },
        out: (em, b, row, col) => `(${b} * ${u(em, 'Og', Og)} + ${row}) * ${u(em, 'Cg * KH * KW', Cg * KH * KW)} + ${col}`,
      };
    default:
      throw new BackendError(`gemm: ${h.prim.op} is not a convolution`);
  }
}

function contraction(nodes: readonly ProgramNode[], heavy: number): Contraction {
  const h = nodes[heavy]!;
  if (h.prim.op === 'matmul') return matmulContraction(nodes, h);
  if (h.prim.op === 'conv2d' || h.prim.op === 'conv2dGradInput' || h.prim.op === 'conv2dGradWeight') {
    return convContraction(nodes, h as ProgramNode & { prim: ConvAttrs & { op: string } });
  }
  throw new BackendError(`gemm: node ${heavy} (${h.prim.op}) is not a contraction`);
}

/** The problem sizes a tile choice depends on. */
export function gemmShape(program: Program, heavy: number): { batch: number; m: number; n: number; k: number } {
  const c = contraction(program.nodes, heavy);
  return { batch: c.batch, m: c.m, n: c.n, k: c.k };
}

export function gemmBody(program: Program, root: number, heavy: number, tile: Tile): KernelBody {
  const c = contraction(program.nodes, heavy);
  const { rm, rn } = tile;
  const rowTiles = Math.ceil(c.m / rm);
  const colTiles = Math.ceil(c.n / (LANES * rn));
  const rows = Array.from({ length: rm }, (_, i) => i);
  const cols = Array.from({ length: rn }, (_, j) => j);
  return {
    kind: c.kind,
    workgroupSize: LANES,
    opaqueOne: true,
    workgroups: c.batch * rowTiles * colTiles,
    emit(em, store) {
      // Consecutive workgroups share a column block (B's columns stay in cache) and walk the rows.
      const d = em.dialect;
      const tiles = rowTiles * colTiles;
      em.line(`let bt = ${tiles === 1 ? 'wid' : d.quotient('wid', tiles)};`);
      em.line(`let tile = ${tiles === 1 ? '0u' : d.remainder('wid', tiles)};`);
      em.line(`let m0 = ${rowTiles === 1 ? '0u' : d.remainder('tile', rowTiles)} * ${rm}u;`);
      const [laneStep, colStep] = tile.adjacent === true ? [rn, 1] : [1, LANES];
      em.line(`let n0 = ${rowTiles === 1 ? 'tile' : d.quotient('tile', rowTiles)} * ${LANES * rn}u + li * ${laneStep}u;`);
      // Loads use clamped rows and columns (always in range); the epilogue drops the extra ones.
      for (const i of rows) em.line(`let row${i} = min(m0 + ${i}u, ${u(em, 'rows - 1', c.m - 1)});`);
      for (const j of cols) em.line(`let col${j} = min(n0 + ${j * colStep}u, ${u(em, 'cols - 1', c.n - 1)});`);
      for (const i of rows) for (const j of cols) em.line(`var acc${i}_${j} = 0.0;`);
      // An empty contraction (k = 0) leaves zeros; its loaders would index empty tensors.
      if (c.k > 0) {
        const ctx = cols.map((j) => c.col(em, 'bt', `col${j}`));
        const rowBase = rows.map((i) => c.row(em, 'bt', `row${i}`));
        // Loop bounds are values computed once, before the loop (not a uniform read per iteration).
        em.line(`let depth = ${u(em, 'depth', c.k)} * one;`);
        em.block('for (var k = 0u; k < depth; k++)', () => {
          const as = rows.map((i) => c.a(em, 'bt', 'k', rowBase[i]!));
          const bs = cols.map((j) => c.b(em, 'bt', 'k', ctx[j]!));
          for (const i of rows) for (const j of cols) em.line(`acc${i}_${j} = fma(${as[i]}, ${bs[j]}, acc${i}_${j});`);
        });
      }
      if (rm * rn === 1) {
        em.block(`if (m0 < ${u(em, 'rows', c.m)} && n0 < ${u(em, 'cols', c.n)})`, () => {
          const oi = em.index(c.out(em, 'bt', 'row0', 'col0'));
          em.define(heavy, oi, 'acc0_0');
          store(oi, em.value(root, oi));
        });
        return;
      }
      // The epilogue (the stores, and any fused same-index chain) is emitted once, in a loop over the
      // tile's outputs that the compiler does not unroll: sixteen copies of it made the kernel
      // several times longer and its compilation (lavapipe compiles at first dispatch) slower.
      em.line(`let outputs = ${rm * rn}u * one;`);
      em.block('for (var t = 0u; t < outputs; t++)', () => {
        em.line(`let row = m0 + t / ${rn}u;`);
        em.line(`let col = n0 + (t % ${rn}u) * ${colStep}u;`);
        em.block(`if (row < ${u(em, 'rows', c.m)} && col < ${u(em, 'cols', c.n)})`, () => {
          // The accumulator of output t, by a tree of selects on t's bits: a chain nested rm * rn deep
          // passed WGSL's limit on nesting ("maximum parser recursive depth") at 128 outputs (16x8).
          let level = rows.flatMap((i) => cols.map((j) => `acc${i}_${j}`));
          for (let bit = 0; level.length > 1; bit++) {
            level = Array.from({ length: Math.ceil(level.length / 2) }, (_, p) => {
              if (2 * p + 1 >= level.length) return level[2 * p]!;
              const s = em.fresh('s');
              em.line(`let ${s} = select(${level[2 * p]}, ${level[2 * p + 1]}, (t & ${1 << bit}u) != 0u);`);
              return s;
            });
          }
          em.line(`let acc = ${level[0]};`);
          const oi = em.index(c.out(em, 'bt', 'row', 'col'));
          em.define(heavy, oi, 'acc');
          store(oi, em.value(root, oi));
        });
      });
    },
  };
}
