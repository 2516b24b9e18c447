/**
 * Reverse mode as a graph transformation. Each differentiated input leaf is wrapped in a fresh
 * identity node, `f` builds its graph on top, and the backward pass walks that graph from the outputs
 * down to the wrappers, applying each primitive's rule. Nothing is computed here: the gradients are
 * lazy tensors, evaluated eagerly by `data()` or compiled together with the forward pass by `jit`.
 *
 * Marked nodes (see `Marker` in core/tensor.ts) change the walk: nothing flows through a
 * `stopGradient`; a `customVjp` call asks the user's `bwd`; a `remat` call recomputes its function
 * behind barriers and walks the recomputation instead of the forward graph.
 */
import { isFloat } from '../core/dtype.ts';
import { DTypeError, ShapeError, TesseraError, TreeError, fmtShape } from '../core/errors.ts';
import { add, markNode, scalar, zeros } from '../core/ops.ts';
import { flatten, leafPaths, treeMismatch, unflatten, type PyTree, type TreeDef } from '../core/pytree.ts';
import { shapesEqual } from '../core/shape.ts';
import { Tensor, isTensor, type CustomVjpCall, type MarkedCall } from '../core/tensor.ts';
import { postOrder } from './graph.ts';
import { vjpRule } from './rules.ts';

/** Every node below `outputs` in post-order, not descending below `isStop` nodes nor through a stopGradient. */
function topoOrder(outputs: readonly Tensor[], isStop: (t: Tensor) => boolean): Tensor[] {
  return postOrder(outputs, (t) => isStop(t) || t.marker?.kind === 'stopGradient');
}

/** Whether `t` depends differentiably on a live node, honouring markers (see `Marker`). */
function dependsOnLive(t: Tensor, live: ReadonlySet<Tensor>): boolean {
  if (!isFloat(t.dtype)) return false;
  switch (t.marker?.kind) {
    case undefined: case 'remat': return t.inputs.some((i) => live.has(i));
    case 'stopGradient': return false;
    case 'rematBarrier': return live.has(t.inputs[0]!);
    case 'customVjp': return t.inputs.slice(1).some((i) => live.has(i));
    default: return t.marker satisfies never;
  }
}

/** The calls of customVjp / remat met in a backward pass, gathering their outputs' cotangents. */
interface PendingCall {
  readonly cts: (Tensor | undefined)[];
  remaining: number;
}

/**
 * Cotangents of the `isSource` nodes given cotangents `seeds` of `outputs`. Sources are live by
 * definition and not descended into; only float nodes that depend on one are visited. A call of
 * customVjp or remat is handled once the cotangents of all its outputs are known.
 */
function propagate(outputs: readonly Tensor[], seeds: readonly Tensor[], isSource: (t: Tensor) => boolean): Map<Tensor, Tensor[]> {
  const order = topoOrder(outputs, isSource);
  const live = new Set<Tensor>();
  const pending = new Map<MarkedCall, PendingCall>();
  for (const t of order) {
    if (isSource(t) || dependsOnLive(t, live)) {
      live.add(t);
      if (t.marker?.kind === 'customVjp' || t.marker?.kind === 'remat') {
        const entry = pending.get(t.marker.call) ?? { cts: t.marker.call.outputs.map(() => undefined), remaining: 0 };
        entry.remaining++;
        pending.set(t.marker.call, entry);
      }
    }
  }
  const cts = new Map<Tensor, Tensor>();
  // A source keeps its contributions apart, in arrival order, so that a caller summing them into
  // its own accumulator adds in the same order as one pass over the whole graph would.
  const atSources = new Map<Tensor, Tensor[]>();
  const accumulate = (t: Tensor, g: Tensor): void => {
    if (isSource(t)) {
      const list = atSources.get(t);
      if (list === undefined) atSources.set(t, [g]);
      else list.push(g);
      return;
    }
    const prev = cts.get(t);
    cts.set(t, prev === undefined ? g : add(prev, g));
  };
  const give = (y: Tensor, x: Tensor, part: Tensor | undefined, what: string): void => {
    if (part === undefined || !live.has(x)) return;
    if (!shapesEqual(part.shape, x.shape) || part.dtype !== x.dtype) {
      throw new TesseraError(`${what} gave a cotangent ${part.dtype} ${fmtShape(part.shape)} for ${x.dtype} ${fmtShape(x.shape)} (at ${y.toString()})`);
    }
    accumulate(x, part);
  };
  outputs.forEach((t, i) => {
    if (live.has(t)) accumulate(t, seeds[i]!);
  });
  const sources: Tensor[] = [];
  for (let k = order.length - 1; k >= 0; k--) {
    const y = order[k]!;
    if (!live.has(y)) continue;
    if (isSource(y)) {
      sources.push(y);
      continue;
    }
    const g = cts.get(y);
    cts.delete(y);
    const m = y.marker;
    if (m?.kind === 'customVjp' || m?.kind === 'remat') {
      const entry = pending.get(m.call)!;
      entry.cts[m.output] = g;
      if (--entry.remaining > 0 || entry.cts.every((c) => c === undefined)) continue;
      const outCts = entry.cts.map((c, j) => c ?? zeros(m.call.outputs[j]!.shape, m.call.outputs[j]!.dtype));
      const parts = m.kind === 'customVjp' ? customVjpCotangents(m.call, outCts, live) : rematCotangents(m.call, outCts, live);
      for (const [x, part] of parts) give(y, x, part, `${m.kind}(${m.call.f.name || 'f'})`);
      continue;
    }
    if (g === undefined) continue;
    const parts = m?.kind === 'rematBarrier' ? [g] : vjpRule(y, g);
    y.inputs.forEach((x, i) => give(y, x, parts[i], `internal: the vjp rule of ${y.prim.op} (input ${i})`));
  }
  return new Map(sources.map((t) => [t, atSources.get(t) ?? []]));
}

/** The call's arguments, rebuilt from its leaves (tensor leaves replaced by `tensors` if given). */
function callArgs(call: MarkedCall, tensors?: readonly Tensor[]): unknown[] {
  let k = 0;
  const leaves = tensors === undefined ? call.argLeaves : call.argLeaves.map((l) => (isTensor(l) ? tensors[k++]! : l));
  return unflatten(call.argDef, leaves) as unknown[];
}

/** Asks `bwd` for the cotangents of a customVjp call's tensor arguments. */
function customVjpCotangents(call: CustomVjpCall, outCts: readonly Tensor[], live: ReadonlySet<Tensor>): [Tensor, Tensor | undefined][] {
  const name = `customVjp(${call.f.name || 'f'})`;
  const argTensors = call.argLeaves.filter(isTensor);
  // A tensor that f closes over and that depends on the differentiated inputs would silently get no gradient.
  const args = new Set(argTensors);
  const outer = (t: Tensor): boolean => args.has(t) || t.id < call.firstId;
  for (const t of topoOrder(call.outputs.map((o) => o.inputs[0]!), outer)) {
    if (!args.has(t) && t.id < call.firstId && live.has(t)) {
      throw new TesseraError(`${name}: f uses ${t.toString()}, which depends on the differentiated inputs, without taking it as an argument; pass it as an argument so that bwd gives its cotangent`);
    }
  }
  const fwdOut = (call.fwd as (...a: unknown[]) => unknown)(...callArgs(call));
  if (!Array.isArray(fwdOut) || fwdOut.length !== 2) throw new TreeError(`${name}: fwd must return [output, residuals], got ${describe(fwdOut)}`);
  const ct = unflatten(call.outDef, outCts);
  const back = (call.bwd as (r: unknown, c: unknown) => unknown)(fwdOut[1], ct);
  const primal = callArgs(call);
  if (!Array.isArray(back) || back.length !== primal.length) {
    throw new TreeError(`${name}: bwd must return an array with one cotangent tree (or null) per argument (${primal.length}), got ${describe(back)}`);
  }
  const out: [Tensor, Tensor | undefined][] = [];
  primal.forEach((arg, i) => {
    const b = back[i];
    if (b === null || b === undefined) return;
    const a = flatten<unknown>(arg as PyTree<unknown>);
    const c = flatten<unknown>(b as PyTree<unknown>);
    const mismatch = treeMismatch(a.def, c.def);
    if (mismatch !== undefined) throw new TreeError(`${name}: bwd's cotangent for argument ${i} does not match the argument's tree ${mismatch}`);
    const paths = leafPaths(a.def, `args[${i}]`);
    a.leaves.forEach((x, j) => {
      const g = c.leaves[j];
      if (!isTensor(x) || !isFloat(x.dtype) || g === null || g === undefined) return;
      if (!isTensor(g) || !shapesEqual(g.shape, x.shape) || g.dtype !== x.dtype) {
        throw new ShapeError(`${name}: bwd's cotangent for ${paths[j]} is ${describe(g)}, the argument is ${x.dtype} ${fmtShape(x.shape)}`);
      }
      out.push([x, g]);
    });
  });
  return out;
}

/**
 * Recomputes a remat call from its arguments behind barriers scheduled after the outputs'
 * cotangents, and backpropagates through the recomputation. Tensors that f closes over and that
 * are live outside get their cotangents too.
 */
function rematCotangents(call: MarkedCall, outCts: readonly Tensor[], live: ReadonlySet<Tensor>): [Tensor, Tensor | undefined][] {
  const name = `remat(${call.f.name || 'f'})`;
  const argTensors = call.argLeaves.filter(isTensor);
  const barriers = argTensors.map((x) => markNode({ kind: 'rematBarrier' }, [x, ...outCts]));
  const again = flatten<unknown>((call.f as (...a: unknown[]) => unknown)(...callArgs(call, barriers)) as PyTree<unknown>);
  const mismatch = treeMismatch(call.outDef, again.def);
  if (mismatch !== undefined) throw new TreeError(`${name}: recomputing f gave a different tree ${mismatch}; f must be a pure function of its arguments`);
  const outs = again.leaves.map((o, j) => {
    const first = call.outputs[j]!;
    if (!isTensor(o) || !shapesEqual(o.shape, first.shape) || o.dtype !== first.dtype) {
      throw new TesseraError(`${name}: recomputing f gave ${describe(o)} for output ${j}, first ${first.dtype} ${fmtShape(first.shape)}; f must be a pure function of its arguments`);
    }
    return o;
  });
  const barrierSet = new Set(barriers);
  const inner = propagate(outs, outCts, (t) => barrierSet.has(t) || live.has(t));
  return [...inner].flatMap(([t, gs]) => gs.map((g): [Tensor, Tensor] => [barrierSet.has(t) ? t.inputs[0]! : t, g]));
}

/**
 * Cotangents of `wrappers` given cotangents `seeds` of `outputs`. Only float nodes that depend on a
 * wrapper are visited; a wrapper that is not reached gets zeros.
 */
function backprop(outputs: readonly Tensor[], seeds: readonly Tensor[], wrappers: readonly Tensor[]): Tensor[] {
  const stops = new Set(wrappers);
  const cts = propagate(outputs, seeds, (t) => stops.has(t));
  return wrappers.map((w) => {
    const parts = cts.get(w) ?? [];
    return parts.length === 0 ? zeros(w.shape, w.dtype) : parts.reduce((acc, g) => add(acc, g));
  });
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
 * @example
 * const [y, pullback] = vjp((x: Tensor) => mul(x, x), tensor([1, 2]));
 * const [dx] = pullback(tensor([1, 1]));              // [2, 4]
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

/** Options of `grad`: which arguments to differentiate, e.g. `grad(f, { argnums: [0, 1] })`. */
export interface GradOptions<N extends number | readonly number[] = number | readonly number[]> {
  /** Which arguments to differentiate: one index (the gradient is that argument's tree) or a list (a list of trees). Default 0. */
  readonly argnums?: N;
}

/** Options of `valueAndGrad`: `argnums`, and `hasAux` for `f` returning `[loss, aux]`. */
export interface ValueAndGradOptions<N extends number | readonly number[] = number | readonly number[]> extends GradOptions<N> {
  /** `f` returns `[output, aux]`; aux is passed through undifferentiated. */
  readonly hasAux?: boolean;
}

/**
 * `valueAndGrad(f)(...args)` returns `[value, gradient]`, or `[[value, aux], gradient]` with hasAux.
 * `f` must return a scalar float tensor; the gradient has the tree structure of the selected arguments.
 * @example
 * const loss = (p: { w: Tensor }, x: Tensor) => mean(square(matmul(x, p.w)));
 * const [value, g] = valueAndGrad(loss)({ w: ones([3, 1]) }, x);   // g: { w: [3, 1] }
 * const [[v, aux], g2] = valueAndGrad((w: Tensor) => [sum(w), mean(w)] as const, { hasAux: true })(w);
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

/**
 * `grad(f)(...args)`: the gradient of a scalar-valued `f` with respect to the arguments in `argnums` (default 0).
 * @example
 * const dx = grad((x: Tensor) => sum(mul(x, x)))(tensor([1, 2]));   // [2, 4]
 * const [dw, db] = grad(loss, { argnums: [0, 1] })(w, b, x);
 */
export function grad<A extends Args, const N extends number | readonly number[] = 0>(
  f: (...args: A) => unknown,
  options: GradOptions<N> = {},
): (...args: A) => GradOf<A, N> {
  const vg = differentiate('grad', f, options);
  return (...args: A) => vg(...args)[1];
}
