/**
 * The elementwise kernel: one invocation per output element, whose value is the fused expression
 * of everything inlined below the root (movement ops included, as index remapping).
 */
import type { ProgramNode } from '../../core/program.ts';
import { sizeOf } from '../../core/shape.ts';
import type { KernelBody } from './kernel.ts';

const WORKGROUP = 64;

export function elementwiseBody(root: number, node: ProgramNode): KernelBody {
  const size = sizeOf(node.shape);
  return {
    kind: 'elementwise',
    workgroupSize: WORKGROUP,
    workgroups: Math.ceil(size / WORKGROUP),
    emit(em, store) {
      em.line(`let gi = wid * ${WORKGROUP}u + li;`);
      em.line(`if (gi >= ${size}u) { return; }`);
      store('gi', em.value(root, 'gi'));
    },
  };
}
