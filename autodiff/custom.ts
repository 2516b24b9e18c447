/**
 * Function transformations that change how a function is differentiated, not what it computes:
 * `customVjp` (a user-written backward rule) and `remat` (recompute instead of keeping). Both
 * record each call as identity nodes carrying a `Marker`; the backward pass in grad.ts honours the
 * markers, and `buildProgram` strips them, so backends only ever see f's own primitives.
 */
import { TreeError, fmtShape } from '../core/errors.ts';
import { markNode } from '../core/ops.ts';
import { flatten, leafPaths, unflatten, type PyTree } from '../core/pytree.ts';
import { isTensor, nextTensorId, type CustomVjpCall, type MarkedCall, type Marker, type Tensor } from '../core/tensor.ts';

type Fn = (...args: never[]) => unknown;

function describe(x: unknown): string {
  if (isTensor(x)) return `${x.dtype} ${fmtShape(x.shape)}`;
  if (x === null || typeof x !== 'object') return `${typeof x} ${String(x)}`;
  return Array.isArray(x) ? `an Array of ${x.length}` : (x.constructor?.name ?? 'object');
}

/** Calls `f` and marks each result leaf with `marker(call, j)`; the call record is completed by `extra`. */
function markedCall<F extends Fn>(
  kind: string,
  f: F,
  args: readonly unknown[],
  extra: Record<string, unknown>,
  marker: (call: MarkedCall, output: number) => Marker,
): ReturnType<F> {
  const name = `${kind}(${f.name || 'f'})`;
  const { leaves: argLeaves, def: argDef } = flatten<unknown>(args as PyTree<unknown>);
  const firstId = nextTensorId();
  const result = (f as unknown as (...a: unknown[]) => unknown)(...args);
  const { leaves, def: outDef } = flatten<unknown>(result as PyTree<unknown>);
  const paths = leafPaths(outDef, 'result');
  const values = leaves.map((l, j) => {
    if (!isTensor(l)) throw new TreeError(`${name}: output ${paths[j]} is ${describe(l)}; every leaf of the result must be a Tensor`);
    return l;
  });
  const outputs: Tensor[] = [];
  const call = { f, argDef, argLeaves, outDef, outputs, firstId, ...extra } as MarkedCall;
  const argTensors = argLeaves.filter(isTensor);
  values.forEach((o, j) => outputs.push(markNode(marker(call, j), [o, ...argTensors])));
  return unflatten(outDef, outputs) as ReturnType<F>;
}

/**
 * `f` with a user-written gradient (JAX's `custom_vjp`). The value is `f(...args)`. When `grad`
 * reaches it, it calls `fwd(...args)`, which returns `[output, residuals]` (residuals: any values the
 * backward rule needs, usually tensors computed in the forward pass), then `bwd(residuals, ct)` with
 * `ct` the cotangent of the output (a tree like it). `bwd` returns an array with one entry per
 * argument: a cotangent tree shaped like that argument (leaves that are not float tensors are
 * ignored, `null` allowed), or `null` for an argument that gets no gradient. Everything is written
 * with ordinary ops, so it composes with `jit` and with `grad` of the result.
 *
 * Tensors that `f` uses must be arguments: a closed-over tensor that depends on the differentiated
 * inputs is an error when differentiating (bwd could not give its cotangent).
 * @example
 * // A straight-through estimator: round in the forward pass, identity in the backward pass.
 * const roundST = customVjp(
 *   (x: Tensor) => floor(add(x, 0.5)),
 *   (x: Tensor) => [floor(add(x, 0.5)), null] as const,
 *   (_residuals: null, ct: Tensor) => [ct],
 * );
 */
export function customVjp<F extends Fn>(
  f: F,
  fwd: (...args: Parameters<F>) => readonly [ReturnType<F>, unknown],
  bwd: (residuals: never, cotangent: ReturnType<F>) => readonly unknown[],
): F {
  const wrapped = (...args: Parameters<F>): ReturnType<F> =>
    markedCall('customVjp', f, args, { fwd, bwd }, (call, output) => ({ kind: 'customVjp', call: call as CustomVjpCall, output }));
  Object.defineProperty(wrapped, 'name', { value: f.name });
  return wrapped as unknown as F;
}

/**
 * `f` rematerialised (gradient checkpointing, JAX's `checkpoint`): the value is `f(...args)`, but
 * the backward pass keeps only the arguments and recomputes f's intermediates from them when it
 * needs them, trading compute for memory. Gradients are bit-identical to those of `f`: the same ops
 * run on the same values. `f` must be a pure function of its arguments (and of tensors it closes
 * over, which receive their gradients too).
 * @example
 * const block = (v: Tensor) => tanh(mul(v, v));
 * const g = grad((v: Tensor) => sum(remat(block)(remat(block)(v))))(x);   // the same bits as without remat
 */
export function remat<F extends Fn>(f: F): F {
  const wrapped = (...args: Parameters<F>): ReturnType<F> => markedCall('remat', f, args, {}, (call, output) => ({ kind: 'remat', call, output }));
  Object.defineProperty(wrapped, 'name', { value: f.name });
  return wrapped as unknown as F;
}
