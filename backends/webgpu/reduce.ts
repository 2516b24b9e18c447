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

/**
 * `members`: the kernel's reductions in output order (one, or several of one structure from
 * `groupSiblings`: one loop over their shared index space with an accumulator each, `acc0`, `acc1`, ...).
 */
export function reduceBody(program: Program, members: readonly { readonly root: number; readonly heavy: number }[]): KernelBody {
  const h = program.nodes[members[0]!.heavy]!;
  if (h.prim.op !== 'reduce') throw new Error('reduceBody: not a reduction');
  const { fn, axes } = h.prim;
  const inShape = program.nodes[h.inputs[0]!]!.shape;
  const outSize = sizeOf(h.shape);
  const rowSize = sizeOf(axes.map((a) => inShape[a]!));
  const { kept, reduced } = reductionRuns(inShape, axes);
  const t = valueType(h.dtype);
  const identity = reduceIdentity(fn, h.dtype);
  const tree = outSize < 64 && rowSize >= 256;
  const inputs = members.map((m) => program.nodes[m.heavy]!.inputs[0]!);

  const accumulate = (em: Emitter, base: string, start: string, step: number): void => {
    members.forEach((_, i) => em.line(`var acc${i}: ${t} = ${identity};`));
    if (rowSize === 0) return;
    // The bound is a value computed once, before the loop (not a uniform read per iteration).
    em.line(`let rows = ${em.dialect.uint(rowSize)} * one;`);
    em.block(`for (var r = ${start}; r < rows; r += ${step}u)`, () => {
      const j = em.index(`${base} + ${runOffset(em, 'r', reduced)}`);
      inputs.forEach((input, i) => em.line(`acc${i} = ${reduceStep(fn, h.dtype, `acc${i}`, em.value(input, j))};`));
    });
  };
  /** Defines each reduction at `o` as `value(i)` and stores each output, siblings first (as elementwise kernels). */
  const finish = (em: Emitter, store: (index: string, value: string, output?: number) => void, value: (i: number) => string): void => {
    members.forEach((m, i) => em.define(m.heavy, 'o', value(i)));
    for (let i = members.length - 1; i >= 0; i--) store('o', em.value(members[i]!.root, 'o'), i);
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
        finish(em, store, (i) => `acc${i}`);
      },
    };
  }
  return {
    kind: 'reduce',
    workgroupSize: TREE_WG,
    opaqueOne: true,
    workgroups: outSize,
    decls: members.map((_, i) => `var<workgroup> partial${i}: array<${t}, ${TREE_WG}>;`).join('\n'),
    emit(em, store) {
      em.line('let o = wid;');
      const base = em.index(runOffset(em, 'o', kept));
      accumulate(em, base, 'li', TREE_WG);
      members.forEach((_, i) => em.line(`partial${i}[li] = acc${i};`));
      em.line('workgroupBarrier();');
      em.block(`for (var s = ${TREE_WG / 2}u; s > 0u; s = s >> 1u)`, () => {
        em.block('if (li < s)', () => members.forEach((_, i) => em.line(`partial${i}[li] = ${reduceStep(fn, h.dtype, `partial${i}[li]`, `partial${i}[li + s]`)};`)));
        em.line('workgroupBarrier();');
      });
      em.block('if (li == 0u)', () => {
        members.forEach((_, i) => em.line(`let total${i} = partial${i}[0];`));
        finish(em, store, (i) => `total${i}`);
      });
    },
  };
}
