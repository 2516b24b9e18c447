/**
 * Matmul and the three convolutions as one tiled, vectorised GEMM. Each contraction is described
 * by loaders: `a(batch, row, k)` and `b(batch, k, col)` emit the operand elements (for convolutions,
 * the implicit im2col gather, so no patch matrix is ever materialized), and `out(batch, row, col)`
 * gives the flat output index where the epilogue (the root's fused same-index chain) is evaluated.
 *
 * A workgroup computes a TM x TN tile, stepping over K by TK: both operand tiles are staged in
 * workgroup memory, and each invocation accumulates an RM x RN block in vec4 registers.
 */
import type { Program, ProgramNode } from '../../core/program.ts';
import type { ConvAttrs } from '../../core/tensor.ts';
import { sizeOf } from '../../core/shape.ts';
import { BackendError } from '../../core/errors.ts';
import type { Emitter } from './codegen.ts';
import type { KernelBody } from './kernel.ts';

export interface Tile {
  readonly tm: number;
  readonly tn: number;
  readonly tk: number;
  /** Rows and columns per invocation (rn a multiple of 4). */
  readonly rm: number;
  readonly rn: number;
}

interface Contraction {
  readonly kind: string;
  readonly batch: number;
  readonly m: number;
  readonly n: number;
  readonly k: number;
  a(em: Emitter, b: string, row: string, k: string): string;
  b(em: Emitter, b: string, k: string, col: string): string;
  out(b: string, row: string, col: string): string;
}

/** `var` holding x's element when `cond` holds, else 0. */
function guarded(em: Emitter, cond: string, index: () => string, node: number): string {
  const v = em.fresh('g');
  em.line(`var ${v} = 0.0;`);
  em.block(`if (${cond})`, () => em.line(`${v} = ${em.value(node, em.index(index()))};`));
  return v;
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
    a: (em, b, row, kk) => em.value(aN, em.index(`${b} * ${m * k}u + ${row} * ${k}u + ${kk}`)),
    b: (em, b, kk, col) => em.value(bN, em.index(`${b} * ${k * n}u + ${kk} * ${n}u + ${col}`)),
    out: (b, row, col) => `${b} * ${m * n}u + ${row} * ${n}u + ${col}`,
  };
}

/** Splits `flat` into coordinates over `sizes` (row-major), as u32 expressions. */
function split(em: Emitter, flat: string, sizes: readonly number[]): string[] {
  const total = sizeOf(sizes);
  let stride = total;
  return sizes.map((s) => {
    stride /= s;
    return em.index(em.coord(flat, stride, s, total));
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
  /** The x element at (n, channel c of group b, ih = oh*s - p + kh*d, iw), or 0 in the padding. */
  const xAt = (em: Emitter, b: string, n: string, c: string, oh: string, ow: string, kh: string, kw: string, x: number): string => {
    const ih = em.fresh('h');
    const iw = em.fresh('w');
    em.line(`let ${ih} = i32(${oh} * ${sh}u + ${kh} * ${dh}u) - ${ph};`);
    em.line(`let ${iw} = i32(${ow} * ${sw}u + ${kw} * ${dw}u) - ${pw};`);
    return guarded(
      em,
      `${ih} >= 0 && ${ih} < ${H} && ${iw} >= 0 && ${iw} < ${W}`,
      () => `((${n} * ${C}u + ${b} * ${Cg}u + ${c}) * ${H}u + u32(${ih})) * ${W}u + u32(${iw})`,
      x,
    );
  };
  switch (h.prim.op) {
    case 'conv2d':
      return {
        kind: 'conv2d',
        batch: g,
        m: Og,
        n: N * OH * OW,
        k: Cg * KH * KW,
        a: (em, b, row, kk) => em.value(in1, em.index(`(${b} * ${Og}u + ${row}) * ${Cg * KH * KW}u + ${kk}`)),
        b: (em, b, kk, col) => {
          const [c, kh, kw] = split(em, kk, [Cg, KH, KW]);
          const [n, oh, ow] = split(em, col, [N, OH, OW]);
          return xAt(em, b, n!, c!, oh!, ow!, kh!, kw!, in0);
        },
        out: (b, row, col) => `(${col} / ${OH * OW}u) * ${O * OH * OW}u + (${b} * ${Og}u + ${row}) * ${OH * OW}u + ${col} % ${OH * OW}u`,
      };
    case 'conv2dGradInput':
      return {
        kind: 'conv2dGradInput',
        batch: g,
        m: Cg,
        n: N * H * W,
        k: Og * KH * KW,
        a: (em, b, row, kk) => {
          const [o, khw] = split(em, kk, [Og, KH * KW]);
          return em.value(in1, em.index(`((${b} * ${Og}u + ${o}) * ${Cg}u + ${row}) * ${KH * KW}u + ${khw}`));
        },
        b: (em, b, kk, col) => {
          const [o, kh, kw] = split(em, kk, [Og, KH, KW]);
          const [n, y, x] = split(em, col, [N, H, W]);
          const th = em.fresh('h');
          const tw = em.fresh('w');
          em.line(`let ${th} = i32(${y}) + ${ph} - i32(${kh} * ${dh}u);`);
          em.line(`let ${tw} = i32(${x}) + ${pw} - i32(${kw} * ${dw}u);`);
          const ok = [`${th} >= 0`, `${tw} >= 0`, `${th} < ${OH * sh}`, `${tw} < ${OW * sw}`];
          if (sh > 1) ok.push(`${th} % ${sh} == 0`);
          if (sw > 1) ok.push(`${tw} % ${sw} == 0`);
          return guarded(em, ok.join(' && '), () => `((${n} * ${O}u + ${b} * ${Og}u + ${o}) * ${OH}u + u32(${th} / ${sh})) * ${OW}u + u32(${tw} / ${sw})`, in0);
        },
        out: (b, row, col) => `(${col} / ${H * W}u) * ${C * H * W}u + (${b} * ${Cg}u + ${row}) * ${H * W}u + ${col} % ${H * W}u`,
      };
    case 'conv2dGradWeight':
      return {
        kind: 'conv2dGradWeight',
        batch: g,
        m: Og,
        n: Cg * KH * KW,
        k: N * OH * OW,
        a: (em, b, row, kk) => {
          const [n, ohw] = split(em, kk, [N, OH * OW]);
          return em.value(in1, em.index(`(${n} * ${O}u + ${b} * ${Og}u + ${row}) * ${OH * OW}u + ${ohw}`));
        },
        b: (em, b, kk, col) => {
          const [c, kh, kw] = split(em, col, [Cg, KH, KW]);
          const [n, oh, ow] = split(em, kk, [N, OH, OW]);
          return xAt(em, b, n!, c!, oh!, ow!, kh!, kw!, in0);
        },
        out: (b, row, col) => `(${b} * ${Og}u + ${row}) * ${Cg * KH * KW}u + ${col}`,
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
  const { tm, tn, tk, rm, rn } = tile;
  const cols = tn / rn;
  const threads = (tm / rm) * cols;
  const tilesM = Math.ceil(c.m / tm);
  const tilesN = Math.ceil(c.n / tn);
  const v4 = rn / 4;
  return {
    kind: c.kind,
    workgroupSize: threads,
    workgroups: c.batch * tilesM * tilesN,
    decls: `var<workgroup> As: array<f32, ${tk * tm}>;\nvar<workgroup> Bs: array<f32, ${tk * tn}>;`,
    emit(em, store) {
      em.line(`let bt = wid / ${tilesM * tilesN}u;`);
      em.line(`let tile = wid % ${tilesM * tilesN}u;`);
      em.line(`let m0 = (tile / ${tilesN}u) * ${tm}u + (li / ${cols}u) * ${rm}u;`);
      em.line(`let n0 = (tile % ${tilesN}u) * ${tn}u + (li % ${cols}u) * ${rn}u;`);
      em.line(`let tm0 = (tile / ${tilesN}u) * ${tm}u;`);
      em.line(`let tn0 = (tile % ${tilesN}u) * ${tn}u;`);
      em.line(`let ar = (li / ${cols}u) * ${rm}u;`);
      em.line(`let bc = (li % ${cols}u) * ${rn}u;`);
      // Accumulators are separate variables: dynamically indexed arrays cost lavapipe seconds to compile.
      for (let i = 0; i < rm; i++) for (let j = 0; j < v4; j++) em.line(`var acc${i}_${j} = vec4<f32>(0.0);`);
      em.block(`for (var k0 = 0u; k0 < ${c.k}u; k0 += ${tk}u)`, () => {
        em.block(`for (var e = li; e < ${tm * tk}u; e += ${threads}u)`, () => {
          em.line(`let am = e / ${tk}u;`);
          em.line(`let ak = e % ${tk}u;`);
          em.line('var av = 0.0;');
          em.block(`if (tm0 + am < ${c.m}u && k0 + ak < ${c.k}u)`, () => em.line(`av = ${c.a(em, 'bt', '(tm0 + am)', '(k0 + ak)')};`));
          em.line(`As[ak * ${tm}u + am] = av;`);
        });
        em.block(`for (var e = li; e < ${tn * tk}u; e += ${threads}u)`, () => {
          em.line(`let bk = e / ${tn}u;`);
          em.line(`let bn = e % ${tn}u;`);
          em.line('var bv = 0.0;');
          em.block(`if (tn0 + bn < ${c.n}u && k0 + bk < ${c.k}u)`, () => em.line(`bv = ${c.b(em, 'bt', '(k0 + bk)', '(tn0 + bn)')};`));
          em.line(`Bs[bk * ${tn}u + bn] = bv;`);
        });
        em.line('workgroupBarrier();');
        em.block(`for (var kk = 0u; kk < ${tk}u; kk++)`, () => {
          em.line(`let bo = kk * ${tn}u + bc;`);
          for (let j = 0; j < v4; j++) em.line(`let b${j} = vec4<f32>(Bs[bo + ${4 * j}u], Bs[bo + ${4 * j + 1}u], Bs[bo + ${4 * j + 2}u], Bs[bo + ${4 * j + 3}u]);`);
          em.line(`let ao = kk * ${tm}u + ar;`);
          for (let i = 0; i < rm; i++) {
            em.line(`let a${i} = vec4<f32>(As[ao + ${i}u]);`);
            for (let j = 0; j < v4; j++) em.line(`acc${i}_${j} = fma(a${i}, b${j}, acc${i}_${j});`);
          }
        });
        em.line('workgroupBarrier();');
      });
      for (let i = 0; i < rm; i++) {
        for (let j = 0; j < rn; j++) {
          em.block(`if (m0 + ${i}u < ${c.m}u && n0 + ${j}u < ${c.n}u)`, () => {
            const oi = em.index(c.out('bt', `(m0 + ${i}u)`, `(n0 + ${j}u)`));
            em.define(heavy, oi, `acc${i}_${Math.floor(j / 4)}.${'xyzw'[j % 4]}`);
            store(oi, em.value(root, oi));
          });
        }
      }
    },
  };
}
