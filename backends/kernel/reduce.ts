/**
 * The index maps of a reduction, shared by the backends' reduce kernels: the input is seen as runs
 * of adjacent kept and reduced axes, and an output element's inputs are found from its flat index
 * over the kept runs plus the flat index over the reduced runs (row-major, as the reference sums).
 */
import { stridesOf } from '../../core/shape.ts';
import type { Emitter } from './emitter.ts';

export interface Run {
  readonly size: number;
  readonly inStride: number;
}

/** Runs of adjacent kept or reduced axes, each with its input stride. */
export function reductionRuns(shape: readonly number[], axes: readonly number[]): { kept: Run[]; reduced: Run[] } {
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
export function runOffset(em: Emitter, idx: string, rs: readonly Run[]): string {
  const total = rs.reduce((s, r) => s * r.size, 1);
  let stride = total;
  const terms = rs.map((r) => {
    stride /= r.size;
    const c = em.coord(idx, stride, r.size, total);
    return r.inStride === 1 ? c : `${c} * ${em.dialect.uint(r.inStride)}`;
  });
  return terms.length === 0 ? em.dialect.uint(0) : terms.join(' + ');
}

