/**
 * Reductions (sum, max) with their prologue (the fused expression they read) and epilogue (the
 * same-index chain from the reduction to the kernel's root). Usually one invocation per output
 * element; only for fewer than 64 long rows (where that would leave the device idle) one workgroup
 * per output, strided partial results combined by a tree in workgroup memory. Barrier trees are
 * slow to compile and run on lavapipe, so they are kept to the case that needs them.
 */
import type { Program } from '../../core/program.ts';
import { sizeOf } from '../../core/shape.ts';
import type { Emitter } from '../kernel/emitter.ts';
import { reductionRuns, runOffset } from '../kernel/reduce.ts';
import type { KernelBody } from './kernel.ts';
import { reduceIdentity, reduceStep, valueType } from './wgsl.ts';

const THREAD_WG = 64;
const TREE_WG = 128;

export function reduceBody(program: Program, root: number, heavy: number): KernelBody {
  const h = program.nodes[heavy]!;
  if (h.prim.op !== 'reduce') throw new Error('reduceBody: not a reduction');
  const { fn, axes } = h.prim;
  const input = h.inputs[0]!;
  const inShape = program.nodes[input]!.shape;
  const outSize = sizeOf(h.shape);
  const rowSize = sizeOf(axes.map((a) => inShape[a]!));
  const { kept, reduced } = reductionRuns(inShape, axes);
  const t = valueType(h.dtype);
  const identity = reduceIdentity(fn, h.dtype);
  const tree = outSize < 64 && rowSize >= 256;

  const accumulate = (em: Emitter, base: string, start: string, step: number): void => {
    em.line(`var acc: ${t} = ${identity};`);
    if (rowSize === 0) return;
    // The bound is a value computed once, before the loop (not a uniform read per iteration).
    em.line(`let rows = ${em.dialect.uint(rowSize)} * one;`);
    em.block(`for (var r = ${start}; r < rows; r += ${step}u)`, () => {
      const j = em.index(`${base} + ${runOffset(em, 'r', reduced)}`);
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
        em.line(`if (o >= ${em.dialect.uint(outSize)}) { return; }`);
        const base = em.index(runOffset(em, 'o', kept));
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
      const base = em.index(runOffset(em, 'o', kept));
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
