/**
 * Multiply-add work of a traced program, counted from its contractions (matmul and the three
 * convolutions; elementwise work is left out, as FLOP counts for networks usually do): 2 FLOPs per
 * multiply-add.
 */
import type { Program } from '../core/program.ts';
import { sizeOf } from '../core/shape.ts';

export function programFlops(program: Program): number {
  let flops = 0;
  for (const node of program.nodes) {
    const op = node.prim.op;
    if (op === 'matmul') {
      const a = program.nodes[node.inputs[0]!]!.shape;
      flops += 2 * sizeOf(node.shape) * a[a.length - 1]!;
    } else if (op === 'conv2d' || op === 'conv2dGradInput' || op === 'conv2dGradWeight') {
      // Every output of conv2d (or input of its transposes) takes C/groups * kh * kw multiply-adds.
      const [p, q] = node.inputs.map((i) => program.nodes[i]!.shape) as [readonly number[], readonly number[]];
      const [y, w] = op === 'conv2d' ? [node.shape, q] : op === 'conv2dGradInput' ? [p, q] : [q, node.shape];
      flops += 2 * sizeOf(y) * w[1]! * w[2]! * w[3]!;
    }
  }
  return flops;
}
