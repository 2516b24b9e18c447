/**
 * The elementwise kernel: one invocation per output element, whose value is the fused expression
 * of everything inlined below the root (movement ops included, as index remapping).
 */
import type { ProgramNode } from '../../core/program.ts';
import { sizeOf } from '../../core/shape.ts';
import type { KernelBody } from './kernel.ts';

const WORKGROUP = 64;

/**
 * `writes`: the root, then any siblings (a multi-output kernel): each is computed at the same index
 * and stored, siblings first (the root may be computed from them, each once per invocation).
 */
export function elementwiseBody(writes: readonly number[], node: ProgramNode): KernelBody {
  const size = sizeOf(node.shape);
  return {
    kind: 'elementwise',
    workgroupSize: WORKGROUP,
    workgroups: Math.ceil(size / WORKGROUP),
    emit(em, store) {
      em.line(`let gi = wid * ${WORKGROUP}u + li;`);
      em.line(`if (gi >= ${em.dialect.uint(size)}) { return; }`);
      writes.forEach((n, i) => {
        if (i > 0) store('gi', em.value(n, 'gi'), i);
      });
      store('gi', em.value(writes[0]!, 'gi'));
    },
  };
}
