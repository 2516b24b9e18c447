/**
 * Reverse mode as a graph transformation. Each differentiated input leaf is wrapped in a fresh
 * identity node, `f` builds its graph on top, and the backward pass walks that graph from the outputs
 * down to the wrappers, applying each primitive's rule. Nothing is computed here: the gradients are
 * lazy tensors, evaluated eagerly by `data()` or compiled together with the forward pass by `jit`.
 */
import { isFloat } from '../core/dtype.ts';
import { DTypeError, ShapeError, TesseraError, TreeError, fmtShape } from '../core/errors.ts';
import { add, scalar, zeros } from '../core/ops.ts';
import { flatten, leafPaths, treeMismatch, unflatten, type PyTree, type TreeDef } from '../core/pytree.ts';
import { shapesEqual } from '../core/shape.ts';
import { Tensor, isTensor } from '../core/tensor.ts';
import { vjpRule } from './rules.ts';

/** Every node below `outputs` in post-order (inputs first), not descending below `stops`. Iterative: graphs are deep. */
function topoOrder(outputs: readonly Tensor[], stops: ReadonlySet<Tensor>): Tensor[] {
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
    if (stops.has(top.t)) continue;
    for (const inp of top.t.inputs) if (!seen.has(inp)) stack.push({ t: inp, expanded: false });
  }
  return order;
}

/**
 * Cotangents of `wrappers` given cotangents `seeds` of `outputs`. Only float nodes that depend on a
 * wrapper are visited; a wrapper that is not reached gets zeros.
 */
function backprop(outputs: readonly Tensor[], seeds: readonly Tensor[], wrappers: readonly Tensor[]): Tensor[] {
  const stops = new Set(wrappers);
  const order = topoOrder(outputs, stops);
  const live = new Set<Tensor>();
  for (const t of order) {
    if (stops.has(t) || (isFloat(t.dtype) && t.inputs.some((i) => live.has(i)))) live.add(t);
  }
  const cts = new Map<Tensor, Tensor>();
  const accumulate = (t: Tensor, g: Tensor): void => {
    const prev = cts.get(t);
    cts.set(t, prev === undefined ? g : add(prev, g));
  };
  outputs.forEach((t, i) => {
    if (live.has(t)) accumulate(t, seeds[i]!);
  });
  for (let k = order.length - 1; k >= 0; k--) {
    const y = order[k]!;
    const g = cts.get(y);
    if (g === undefined || stops.has(y)) continue;
    cts.delete(y);
    const parts = vjpRule(y, g);
    y.inputs.forEach((x, i) => {
      const part = parts[i];
      if (part === undefined || !live.has(x)) return;
      if (!shapesEqual(part.shape, x.shape) || part.dtype !== x.dtype) {
        throw new TesseraError(
          `internal: the vjp rule of ${y.prim.op} gave ${part.dtype} ${fmtShape(part.shape)} for input ${i}, which is ${x.dtype} ${fmtShape(x.shape)}`,
        );
      }
      accumulate(x, part);
    });
  }
  return wrappers.map((w) => cts.get(w) ?? zeros(w.shape, w.dtype));
}

interface Wrapped {
  readonly args: unknown[];
  /** One entry per differentiated argument: its tree structure and the identity nodes of its leaves. */
  readonly parts: readonly { readonly def: TreeDef; readonly wrappers: readonly Tensor[] }[];
}

/** Replaces every leaf of the chosen arguments with a fresh identity node, distinct even for repeated tensors. */
function wrapArgs(op: string, args: readonly unknown[], argnums: readonly number[]): Wrapped {
  const out = [...args];
  const parts = argnums.map((n) => {
    const { leaves, def } = flatten<unknown>(args[n] as PyTree<unknown>);
    const paths = leafPaths(def, `args[${n}]`);
    const wrappers = leaves.map((leaf, i) => {
      if (!isTensor(leaf)) {
        const got = leaf === null ? 'null' : typeof leaf === 'object' ? (leaf.constructor?.name ?? 'object') : `${typeof leaf} ${String(leaf)}`;
        throw new TreeError(`${op}: ${paths[i]} is ${got}, not a Tensor; only tensors can be differentiated (move it to an argument outside argnums)`);
      }
      if (!isFloat(leaf.dtype)) {
        throw new DTypeError(`${op}: ${paths[i]} is ${leaf.dtype} ${fmtShape(leaf.shape)}; only float tensors can be differentiated (move it to an argument outside argnums)`);
      }
      return new Tensor({ op: 'reshape' }, [leaf], leaf.shape, leaf.dtype);
    });
    out[n] = unflatten(def, wrappers);
    return { def, wrappers };
  });
  return { args: out, parts };
}

function normalizeArgnums(op: string, argnums: number | readonly number[], nargs: number): number[] {
  const list = typeof argnums === 'number' ? [argnums] : [...argnums];
  for (const n of list) {
    if (!Number.isInteger(n) || n < 0 || n >= nargs) throw new TreeError(`${op}: argnums ${n} is out of range for ${nargs} argument(s)`);
  }
  if (new Set(list).size !== list.length) throw new TreeError(`${op}: repeated entry in argnums [${list.join(',')}]`);
  return list;
}

function describe(x: unknown): string {
  if (isTensor(x)) return `${x.dtype} ${fmtShape(x.shape)}`;
  if (x === null || typeof x !== 'object') return `${typeof x} ${String(x)}`;
  return Array.isArray(x) ? `an Array of ${x.length}` : (x.constructor?.name ?? 'object');
}

function scalarOutput(op: string, out: unknown): Tensor {
  const wanted = `${op}: the function must return a scalar float tensor (shape []), got ${describe(out)}`;
  if (!isTensor(out)) throw new TreeError(wanted);
  if (out.rank !== 0) throw new ShapeError(`${wanted}; reduce it (e.g. sum or mean) or use vjp`);
  if (!isFloat(out.dtype)) throw new DTypeError(wanted);
  return out;
}

/** The differentiated output: the result itself, or its first entry with hasAux (`[output, aux]`). */
function splitAux(op: string, result: unknown, hasAux: boolean): unknown {
  if (!hasAux) return result;
  if (!Array.isArray(result) || result.length !== 2) throw new TreeError(`${op}: with hasAux the function must return [output, aux], got ${describe(result)}`);
  return result[0];
}

type Args = readonly unknown[];

/**
 * Evaluates `f(...primals)` and returns its outputs with a function mapping output cotangents (a tree
 * like the outputs) to input cotangents, one tree per primal, as JAX's `vjp`.
 */
export function vjp<A extends Args, R>(f: (...args: A) => R, ...primals: A): [R, (cotangent: R) => A] {
  const wrapped = wrapArgs('vjp', primals, primals.map((_, i) => i));
  const out = f(...(wrapped.args as unknown as A));
  const { leaves, def } = flatten<unknown>(out as PyTree<unknown>);
  const paths = leafPaths(def, 'result');
  const outputs = leaves.map((l, i) => {
    if (!isTensor(l)) throw new TreeError(`vjp: output ${paths[i]} is ${describe(l)}, not a Tensor`);
    return l;
  });
  const pullback = (cotangent: R): A => {
    const ct = flatten<unknown>(cotangent as PyTree<unknown>);
    const mismatch = treeMismatch(def, ct.def);
    if (mismatch !== undefined) throw new TreeError(`vjp: the cotangent's tree does not match the output's ${mismatch}`);
    const seeds = ct.leaves.map((c, i) => {
      const o = outputs[i]!;
      if (!isTensor(c) || !shapesEqual(c.shape, o.shape) || c.dtype !== o.dtype) {
        throw new ShapeError(`vjp: cotangent ${paths[i]} is ${describe(c)}, the output is ${o.dtype} ${fmtShape(o.shape)}`);
      }
      return c;
    });
    const all = backprop(outputs, seeds, wrapped.parts.flatMap((p) => p.wrappers));
    let k = 0;
    return wrapped.parts.map((p) => unflatten(p.def, all.slice(k, (k += p.wrappers.length)))) as unknown as A;
  };
  return [out, pullback];
}

/** The gradient's type: the selected argument's tree, or a tuple of them for a list of argnums. */
export type GradOf<A extends Args, N> = N extends number
  ? A[N]
  : { -readonly [K in keyof N]: N[K] extends number ? A[N[K]] : never };

export interface GradOptions<N extends number | readonly number[] = number | readonly number[]> {
  /** Which arguments to differentiate: one index (the gradient is that argument's tree) or a list (a list of trees). Default 0. */
  readonly argnums?: N;
}

export interface ValueAndGradOptions<N extends number | readonly number[] = number | readonly number[]> extends GradOptions<N> {
  /** `f` returns `[output, aux]`; aux is passed through undifferentiated. */
  readonly hasAux?: boolean;
}

/**
 * `valueAndGrad(f)(...args)` returns `[value, gradient]`, or `[[value, aux], gradient]` with hasAux.
 * `f` must return a scalar float tensor; the gradient has the tree structure of the selected arguments.
 */
export function valueAndGrad<A extends Args, R, const N extends number | readonly number[] = 0>(
  f: (...args: A) => R,
  options: ValueAndGradOptions<N> = {},
): (...args: A) => [R, GradOf<A, N>] {
  return differentiate('valueAndGrad', f, options);
}

function differentiate<A extends Args, R, N extends number | readonly number[]>(
  kind: string,
  f: (...args: A) => R,
  options: ValueAndGradOptions<N>,
): (...args: A) => [R, GradOf<A, N>] {
  const name = `${kind}(${f.name || 'f'})`;
  return (...args: A): [R, GradOf<A, N>] => {
    const argnums = normalizeArgnums(name, options.argnums ?? 0, args.length);
    const wrapped = wrapArgs(name, args, argnums);
    const result = f(...(wrapped.args as unknown as A));
    const y = scalarOutput(name, splitAux(name, result, options.hasAux ?? false));
    const all = backprop([y], [scalar(1, y.dtype)], wrapped.parts.flatMap((p) => p.wrappers));
    let k = 0;
    const trees = wrapped.parts.map((p) => unflatten(p.def, all.slice(k, (k += p.wrappers.length))));
    return [result, (typeof (options.argnums ?? 0) === 'number' ? trees[0] : trees) as GradOf<A, N>];
  };
}

/** `grad(f)(...args)`: the gradient of a scalar-valued `f` with respect to the arguments in `argnums` (default 0). */
export function grad<A extends Args, const N extends number | readonly number[] = 0>(
  f: (...args: A) => unknown,
  options: GradOptions<N> = {},
): (...args: A) => GradOf<A, N> {
  const vg = differentiate('grad', f, options);
  return (...args: A) => vg(...args)[1];
}
