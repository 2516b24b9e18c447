/**
 * Walking a graph of lazy tensors, for the transformations that rewrite one (grad, vmap).
 */
import type { Tensor } from '../core/tensor.ts';

/**
 * Every node below `outputs` in post-order (inputs first), not descending below nodes for which
 * `isStop` holds (they are listed, their inputs are not). Iterative: graphs are deep.
 */
export function postOrder(outputs: readonly Tensor[], isStop: (t: Tensor) => boolean): Tensor[] {
  const order: Tensor[] = [];
  const seen = new Set<Tensor>();
  const stack: { t: Tensor; expanded: boolean }[] = outputs.map((t) => ({ t, expanded: false }));
  while (stack.length > 0) {
    const top = stack[stack.length - 1]!;
    if (top.expanded) {
      stack.pop();
      order.push(top.t);
      continue;
    }
    if (seen.has(top.t)) {
      stack.pop();
      continue;
    }
    seen.add(top.t);
    top.expanded = true;
    if (isStop(top.t)) continue;
    for (const inp of top.t.inputs) if (!seen.has(inp)) stack.push({ t: inp, expanded: false });
  }
  return order;
}
