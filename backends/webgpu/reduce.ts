/**
 * Reductions (sum, max) with their prologue (the fused expression they read) and epilogue (the
 * same-index chain from the reduction to the kernel's root). Usually one invocation per output
 * element; only for fewer than 64 long rows (where that would leave the device idle) one workgroup
 * per output, strided partial results combined by a tree in workgroup memory. Barrier trees are
 * slow to compile and run on lavapipe, so they are kept to the case that needs them.
 */
import type { Program } from '../../core/program.ts';
import { sizeOf, stridesOf } from '../../core/shape.ts';
import type { Emitter } from './codegen.ts';
import type { KernelBody } from './kernel.ts';
import { reduceIdentity, reduceStep, valueType } from './wgsl.ts';

const THREAD_WG = 64;
const TREE_WG = 128;

interface Run {
  readonly size: number;
  readonly inStride: number;
}

/** Runs of adjacent kept or reduced axes, each with its input stride. */
function runs(shape: readonly number[], axes: readonly number[]): { kept: Run[]; reduced: Run[] } {
  const strides = stridesOf(shape);
  const kept: Run[] = [];
  const reduced: Run[] = [];
  let prev: boolean | undefined;
  shape.forEach((d, a) => {
    if (d === 1) return;
    const isRed = axes.includes(a);
    const list = isRed ? reduced : kept;
    const last = list[list.length - 1];
    if (prev === isRed && last !== undefined) list[list.length - 1] = { size: last.size * d, inStride: strides[a]! };
    else list.push({ size: d, inStride: strides[a]! });
    prev = isRed;
  });
  return { kept, reduced };
}

/** The input offset of flat index `idx` over `rs` (row-major over the runs). */
function offset(em: Emitter, idx: string, rs: readonly Run[]): string {
  const total = rs.reduce((s, r) => s * r.size, 1);
  let stride = total;
  const terms = rs.map((r) => {
    stride /= r.size;
    const c = em.coord(idx, stride, r.size, total);
    return r.inStride === 1 ? c : `${c} * ${r.inStride}u`;
  });
  return terms.length === 0 ? '0u' : terms.join(' + ');
}

export function reduceBody(program: Program, root: number, heavy: number): KernelBody {
  const h = program.nodes[heavy]!;
  if (h.prim.op !== 'reduce') throw new Error('reduceBody: not a reduction');
  const { fn, axes } = h.prim;
  const input = h.inputs[0]!;
  const inShape = program.nodes[input]!.shape;
  const outSize = sizeOf(h.shape);
  const rowSize = sizeOf(axes.map((a) => inShape[a]!));
  const { kept, reduced } = runs(inShape, axes);
  const t = valueType(h.dtype);
  const identity = reduceIdentity(fn, h.dtype);
  const tree = outSize < 64 && rowSize >= 256;

  const accumulate = (em: Emitter, base: string, start: string, step: number): void => {
    em.line(`var acc: ${t} = ${identity};`);
    if (rowSize === 0) return;
    em.block(`for (var r = ${start}; r < ${rowSize}u * one; r += ${step}u)`, () => {
      const j = em.index(`${base} + ${offset(em, 'r', reduced)}`);
      em.line(`acc = ${reduceStep(fn, h.dtype, 'acc', em.value(input, j))};`);
    });
  };

  if (!tree) {
    return {
      kind: 'reduce',
      workgroupSize: THREAD_WG,
      opaqueOne: true,
      workgroups: Math.ceil(outSize / THREAD_WG),
      emit(em, store) {
        em.line(`let o = wid * ${THREAD_WG}u + li;`);
        em.line(`if (o >= ${outSize}u) { return; }`);
        const base = em.index(offset(em, 'o', kept));
        accumulate(em, base, '0u', 1);
        em.define(heavy, 'o', 'acc');
        store('o', em.value(root, 'o'));
      },
    };
  }
  return {
    kind: 'reduce',
    workgroupSize: TREE_WG,
    opaqueOne: true,
    workgroups: outSize,
    decls: `var<workgroup> partial: array<${t}, ${TREE_WG}>;`,
    emit(em, store) {
      em.line('let o = wid;');
      const base = em.index(offset(em, 'o', kept));
      accumulate(em, base, 'li', TREE_WG);
      em.line('partial[li] = acc;');
      em.line('workgroupBarrier();');
      em.block(`for (var s = ${TREE_WG / 2}u; s > 0u; s = s >> 1u)`, () => {
        em.line(`if (li < s) { partial[li] = ${reduceStep(fn, h.dtype, 'partial[li]', 'partial[li + s]')}; }`);
        em.line('workgroupBarrier();');
      });
      em.block('if (li == 0u)', () => {
        em.line('let total = partial[0];');
        em.define(heavy, 'o', 'total');
        store('o', em.value(root, 'o'));
      });
    },
  };
}
