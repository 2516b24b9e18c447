/**
 * Vectorising map as a graph transformation, as `grad` is. `vmap(f)` calls `f` once, on placeholder
 * leaves shaped like one example, then rewrites the graph `f` built, node by node from the
 * placeholders up, with each primitive's batching rule (batching.ts). Nodes that do not depend on a
 * mapped argument are kept as they are, so parameters and constants are shared, not copied per
 * example. The result is an ordinary lazy graph of primitives: `grad`, `jit` and `vmap` itself apply
 * to it, and `f` may itself use them (`vmap(grad(loss))` gives per-example gradients).
 */
import { ShapeError, TesseraError, TreeError, fmtShape } from '../core/errors.ts';
import { broadcastTo, markNode, reshape } from '../core/ops.ts';
import { flatten, leafPaths, unflatten, type PyTree, type TreeDef } from '../core/pytree.ts';
import { shapesEqual } from '../core/shape.ts';
import { Tensor, isTensor, type CustomVjpCall, type MarkedCall, type Marker } from '../core/tensor.ts';
import { batchAt, batchRule, insertAxis, moveAxis, type Batched } from './batching.ts';
import { customVjp, remat } from './custom.ts';
import { postOrder } from './graph.ts';

/**
 * Where the batch axis of a value is: a number (negative counts from the end), null (not mapped: the
 * same value for every example), or a tree of those that is a prefix of the value's tree, in which
 * case each entry applies to every leaf below it (JAX's `in_axes` / `out_axes`).
 */
export type AxisSpec = number | null | readonly AxisSpec[] | { readonly [key: string]: AxisSpec };

/**
 * Options of `vmap`: mapped input axes, output axes, batch size.
 * For example `vmap(grad(loss), { inAxes: [null, 0, 0] })` (the README's per-example gradients).
 */
export interface VmapOptions {
  /**
   * The mapped axis of each argument: one spec for all arguments, or an array with one spec per
   * argument. Default 0: every tensor leaf is mapped along its first axis.
   */
  readonly inAxes?: AxisSpec;
  /** Where the batch axis goes in each output leaf (a prefix tree of the result); default 0. */
  readonly outAxes?: AxisSpec;
  /** The batch size, needed only when no argument is mapped. */
  readonly axisSize?: number;
}

type Args = readonly unknown[];

function describe(x: unknown): string {
  if (isTensor(x)) return `${x.dtype} ${fmtShape(x.shape)}`;
  if (x === null || typeof x !== 'object') return `${typeof x} ${String(x)}`;
  return Array.isArray(x) ? `an array of ${x.length}` : (x.constructor?.name ?? 'object');
}

function isPlainRecord(x: unknown): x is Record<string, unknown> {
  if (x === null || typeof x !== 'object' || Array.isArray(x) || isTensor(x)) return false;
  const proto = Object.getPrototypeOf(x);
  return proto === Object.prototype || proto === null;
}

function leafCount(def: TreeDef): number {
  return def.kind === 'leaf' ? 1 : def.children.reduce((n, c) => n + leafCount(c), 0);
}

/** Expands a prefix spec to one axis (or null) per leaf of the value whose structure is `def`, in flatten order. */
function expandSpec(op: string, what: string, spec: unknown, def: TreeDef, path: string): (number | null)[] {
  if (spec === null || typeof spec === 'number') return Array<number | null>(leafCount(def)).fill(spec);
  const here = `${what} at ${path}`;
  if (Array.isArray(spec)) {
    if (def.kind !== 'array' || def.children.length !== spec.length) {
      const got = def.kind === 'array' ? `an array of ${def.children.length}` : def.kind === 'record' ? 'a record' : 'one leaf';
      throw new TreeError(`${op}: ${here} is an array of ${spec.length}, but the value there is ${got}`);
    }
    return def.children.flatMap((c, i) => expandSpec(op, what, spec[i], c, `${path}[${i}]`));
  }
  if (isPlainRecord(spec)) {
    const keys = Object.keys(spec).sort();
    if (def.kind !== 'record' || def.keys.join(',') !== keys.join(',')) {
      const got = def.kind === 'record' ? `a record with keys {${def.keys.join(',')}}` : def.kind === 'array' ? `an array of ${def.children.length}` : 'one leaf';
      throw new TreeError(`${op}: ${here} is a record with keys {${keys.join(',')}}, but the value there is ${got}`);
    }
    return def.children.flatMap((c, i) => expandSpec(op, what, spec[def.keys[i]!], c, `${path}.${def.keys[i]}`));
  }
  throw new TreeError(`${op}: ${here} is ${describe(spec)}; an axis is a number, null, or an array or record of those`);
}

type Fn = (...args: never[]) => unknown;

/** The call's argument list with its tensor leaves replaced, in order, by `tensors`. */
function callArgs(call: MarkedCall, tensors: readonly Tensor[]): unknown[] {
  let k = 0;
  return unflatten(call.argDef, call.argLeaves.map((l) => (isTensor(l) ? tensors[k++]! : l))) as unknown[];
}

/** A spec mapping every tensor leaf of `tree` along `axes[k]` (the k-th tensor) and passing the rest. */
function tensorAxes(tree: unknown, axes: (k: number) => number | null): AxisSpec {
  const { leaves, def } = flatten<unknown>(tree as PyTree<unknown>);
  let k = 0;
  return unflatten(def, leaves.map((l) => (isTensor(l) ? axes(k++) : null))) as AxisSpec;
}

/**
 * The batched outputs (batch axis 0) of a customVjp or remat call whose tensor arguments are `args`.
 * The call is made again, of the vmapped functions, so that grad of the result still uses the
 * user's backward rule (itself vmapped) or still recomputes.
 */
function batchCall(m: Extract<Marker, { call: MarkedCall }>, args: readonly Batched[], size: number): Tensor[] {
  const call = m.call;
  const vm = <F extends Fn>(f: F, inAxes: AxisSpec) => vmap(f as unknown as (...a: unknown[]) => unknown, { inAxes, axisSize: size });
  const original = unflatten(call.argDef, call.argLeaves);
  let out: unknown;
  if (m.kind === 'remat') {
    out = remat(vm(call.f, tensorAxes(original, (k) => args[k]!.bdim)))(...callArgs(call, args.map((b) => b.t)));
  } else {
    // Every argument mapped (shared ones broadcast), so that bwd's cotangents are per example; grad
    // sums those of shared arguments through the broadcast.
    const c = call as CustomVjpCall;
    const inAxes = tensorAxes(original, () => 0);
    const bwd = (residuals: unknown, ct: unknown) => vm(c.bwd, [tensorAxes(residuals, () => 0), 0])(residuals, ct);
    out = customVjp(vm(c.f, inAxes), vm(c.fwd, inAxes) as never, bwd as never)(...callArgs(call, args.map((b) => batchAt(b, 0, size))));
  }
  return flatten<unknown>(out as PyTree<unknown>).leaves as Tensor[];
}

/** The batched form of a marked identity node (see `Marker`), which keeps its meaning for grad. */
function batchMarked(y: Tensor, m: Marker, ins: readonly Batched[], size: number, calls: Map<MarkedCall, Tensor[]>): Batched {
  switch (m.kind) {
    case 'stopGradient':
    case 'rematBarrier':
      return { t: markNode(m, ins.map((b) => b.t)), bdim: ins[0]!.bdim };
    case 'customVjp':
    case 'remat': {
      let outs = calls.get(m.call);
      if (outs === undefined) {
        outs = batchCall(m, ins.slice(1), size);
        calls.set(m.call, outs);
      }
      return { t: outs[m.output]!, bdim: 0 };
    }
    default:
      return m satisfies never;
  }
}

/** Rewrites the graph below `outputs` given the batched values of the placeholders. */
function batchGraph(op: string, outputs: readonly Tensor[], placeholders: ReadonlyMap<Tensor, Batched>, size: number): Batched[] {
  const env = new Map<Tensor, Batched>(placeholders);
  const calls = new Map<MarkedCall, Tensor[]>();
  for (const y of postOrder(outputs, (t) => placeholders.has(t))) {
    if (env.has(y)) continue;
    const ins = y.inputs.map((x) => env.get(x)!);
    // A batched value is always a new node, so unchanged inputs mean a node independent of the batch.
    if (ins.every((x, i) => x.t === y.inputs[i])) {
      env.set(y, { t: y, bdim: null });
      continue;
    }
    if (ins.every((x) => x.bdim === null) && (y.marker === undefined || !('call' in y.marker))) {
      // Below a remat barrier that stays shared but now waits on batched cotangents: the same node over the new inputs.
      env.set(y, { t: new Tensor(y.prim, ins.map((x) => x.t), y.shape, y.dtype, undefined, y.marker), bdim: null });
      continue;
    }
    const out = y.marker === undefined ? batchRule(y, ins, size) : batchMarked(y, y.marker, ins, size, calls);
    if (out.bdim === null && y.marker !== undefined) {
      env.set(y, out);
      continue;
    }
    const expected = insertAxis(y.shape, out.bdim ?? 0, size);
    if (out.bdim === null || !shapesEqual(out.t.shape, expected) || out.t.dtype !== y.dtype) {
      throw new TesseraError(
        `internal: ${op}'s batching rule of ${y.prim.op} gave ${out.t.dtype} ${fmtShape(out.t.shape)} (batch axis ${out.bdim}) for ${y.toString()}`,
      );
    }
    env.set(y, out);
  }
  return outputs.map((t) => env.get(t)!);
}

/**
 * `vmap(f, { inAxes, outAxes })(...args)` maps `f` over a batch axis of its arguments, as if `f` were
 * called on each example and the results stacked along `outAxes`, but as one graph whose primitives
 * process the whole batch (a matrix product becomes one larger matrix product, not a loop). Works over
 * pytrees; nests; composes with `grad` both ways and runs under `jit`. Non-tensor leaves are passed
 * through and must have a null axis. `f` is called once, on per-example placeholders, so it must not
 * read values (`data()`) of anything that depends on a mapped argument.
 * @example
 * const perExample = vmap(grad(loss), { inAxes: [null, 0, 0] });   // params shared, x and y batched
 * const g = perExample(params, xs, ys);               // each leaf gets a leading batch axis
 * const dots = vmap((a: Tensor, b: Tensor) => sum(mul(a, b)))(xs, ys);   // [B]
 */
export function vmap<A extends Args, R>(f: (...args: A) => R, options: VmapOptions = {}): (...args: A) => R {
  const op = `vmap(${f.name || 'f'})`;
  return (...args: A): R => {
    const inAxes = options.inAxes === undefined ? 0 : options.inAxes;
    if (Array.isArray(inAxes) && inAxes.length !== args.length) {
      throw new TreeError(`${op}: inAxes has ${inAxes.length} entries, one per argument, but the function was called with ${args.length} argument(s)`);
    }
    const { leaves, def } = flatten<unknown>(args as unknown as PyTree<unknown>);
    const paths = leafPaths(def, 'args');
    // A bare spec applies to every argument; an array has one entry per argument.
    const axes = expandSpec(op, 'inAxes', Array.isArray(inAxes) ? inAxes : args.map(() => inAxes), def, 'args');

    let size = options.axisSize;
    let sizeFrom = size === undefined ? '' : `axisSize ${size}`;
    const mapped: { leaf: Tensor; axis: number; path: string }[] = [];
    leaves.forEach((leaf, i) => {
      const axis = axes[i]!;
      if (axis === null) return;
      if (!isTensor(leaf)) {
        throw new TreeError(`${op}: ${paths[i]} is ${describe(leaf)}, not a Tensor, but its inAxes entry is ${axis}; give it null`);
      }
      if (!Number.isInteger(axis) || axis < -leaf.rank || axis >= leaf.rank) {
        throw new ShapeError(`${op}: inAxes ${axis} for ${paths[i]} is out of range for ${describe(leaf)}`);
      }
      const ax = axis < 0 ? axis + leaf.rank : axis;
      const n = leaf.shape[ax]!;
      if (size === undefined) {
        size = n;
        sizeFrom = `${paths[i]} has ${n} along axis ${ax}`;
      } else if (n !== size) {
        throw new ShapeError(`${op}: batch sizes differ: ${sizeFrom}, but ${paths[i]} (${describe(leaf)}) has ${n} along axis ${ax}`);
      }
      mapped.push({ leaf, axis: ax, path: paths[i]! });
    });
    if (size === undefined) throw new TreeError(`${op}: no argument is mapped (every inAxes entry is null); give axisSize`);
    if (!Number.isInteger(size) || size < 0) throw new ShapeError(`${op}: axisSize must be an integer >= 0, got ${size}`);
    const batch = size;

    // Placeholders are inputs of no program: if one escapes `f` (a side effect), jit and data() reject it.
    const placeholders = new Map<Tensor, Batched>();
    const inner = leaves.map((leaf, i) => {
      const axis = axes[i];
      if (axis === null || !isTensor(leaf)) return leaf;
      const ax = axis! < 0 ? axis! + leaf.rank : axis!;
      const p = new Tensor({ op: 'input', index: -1 }, [], Object.freeze(leaf.shape.filter((_, j) => j !== ax)), leaf.dtype);
      placeholders.set(p, { t: leaf, bdim: ax });
      return p;
    });

    const result = f(...(unflatten(def, inner) as unknown as A));
    if (result instanceof Promise) throw new TesseraError(`${op}: the function returned a Promise; vmap traces synchronous functions (put jit outside vmap)`);
    const out = flatten<unknown>(result as PyTree<unknown>);
    const outPaths = leafPaths(out.def, 'result');
    const outAxes = expandSpec(op, 'outAxes', options.outAxes === undefined ? 0 : options.outAxes, out.def, 'result');
    const tensors = out.leaves.filter(isTensor);
    const batched = batchGraph(op, tensors, placeholders, batch);
    let k = 0;
    const leavesOut = out.leaves.map((leaf, i) => {
      if (!isTensor(leaf)) return leaf;
      const b = batched[k++]!;
      const axis = outAxes[i]!;
      if (axis === null) {
        if (b.bdim !== null) throw new ShapeError(`${op}: output ${outPaths[i]} depends on a mapped argument, but its outAxes entry is null`);
        return b.t;
      }
      const rank = leaf.rank + 1;
      if (!Number.isInteger(axis) || axis < -rank || axis >= rank) {
        throw new ShapeError(`${op}: outAxes ${axis} for ${outPaths[i]} is out of range for the batched ${describe(leaf)} (rank ${rank})`);
      }
      const ax = axis < 0 ? axis + rank : axis;
      if (b.bdim !== null) return moveAxis(b.t, b.bdim, ax);
      return broadcastTo(reshape(b.t, insertAxis(b.t.shape, ax, 1)), insertAxis(b.t.shape, ax, batch));
    });
    return unflatten(out.def, leavesOut) as R;
  };
}
