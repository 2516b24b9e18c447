/**
 * Dense Jacobians and Hessians over pytrees, with JAX's layout: the block for output leaf `y` and
 * input leaf `x` has shape `y.shape ++ x.shape`, and the result is a tree like the outputs whose
 * leaves are trees like the differentiated arguments. `jacrev` pulls back one basis cotangent per
 * output entry (cheap for few outputs), `jacfwd` pushes forward one basis tangent per input entry
 * (cheap for few inputs); both loop over the basis, so each entry costs one graph walk.
 */
import { isFloat, type DType } from '../core/dtype.ts';
import { DTypeError, TreeError } from '../core/errors.ts';
import { arange, cast, equal, reshape, stack, zeros } from '../core/ops.ts';
import { flatten, leafPaths, unflatten, type PyTree, type TreeDef } from '../core/pytree.ts';
import { sizeOf, type Shape } from '../core/shape.ts';
import { isTensor, type Tensor } from '../core/tensor.ts';
import { vjp, type GradOf } from './grad.ts';
import { describeValue, floatLeaves, pushforward, tensorOutputs } from './jvp.ts';

type Args = readonly unknown[];

/** `R`'s tree with every tensor leaf replaced by `L`. */
export type TreeOf<R, L> = R extends Tensor
  ? L
  : R extends readonly unknown[]
    ? { -readonly [K in keyof R]: TreeOf<R[K], L> }
    : R extends object
      ? { -readonly [K in keyof R]: TreeOf<R[K], L> }
      : never;

/** The Jacobian of a function returning `R` with respect to arguments whose gradient type is `In`. */
export type Jacobian<R, In> = TreeOf<R, In>;

/** Options of `jacfwd`, `jacrev` and `hessian`: which arguments to differentiate. */
export interface JacobianOptions<N extends number | readonly number[] = number | readonly number[]> {
  /** Which arguments to differentiate: one index (blocks are that argument's tree) or a list (a list of trees). Default 0. */
  readonly argnums?: N;
}

/** The differentiated arguments, `f` as a function of them alone, and how to rebuild their tree. */
interface Selection<R> {
  readonly chosen: unknown[];
  readonly call: (...chosen: unknown[]) => R;
  readonly inputs: readonly Tensor[];
  /** Rebuilds one output leaf's blocks (one per input leaf) into the arguments' tree. */
  readonly rebuild: (blocks: readonly Tensor[]) => unknown;
}

function select<A extends Args, R>(op: string, f: (...args: A) => R, args: A, argnums: number | readonly number[]): Selection<R> {
  const list = typeof argnums === 'number' ? [argnums] : [...argnums];
  for (const n of list) {
    if (!Number.isInteger(n) || n < 0 || n >= args.length) throw new TreeError(`${op}: argnums ${n} is out of range for ${args.length} argument(s)`);
  }
  if (new Set(list).size !== list.length) throw new TreeError(`${op}: repeated entry in argnums [${list.join(',')}]`);
  const defs: TreeDef[] = [];
  const inputs = list.flatMap((n) => {
    const { leaves, def } = floatLeaves(op, args[n], `args[${n}]`);
    defs.push(def);
    return leaves;
  });
  const call = (...chosen: unknown[]): R => {
    const all = [...args];
    list.forEach((n, i) => (all[n] = chosen[i]));
    return f(...(all as unknown as A));
  };
  const rebuild = (blocks: readonly Tensor[]): unknown => {
    let k = 0;
    const trees = defs.map((d) => unflatten(d, blocks.slice(k, (k += countLeaves(d)))));
    return typeof argnums === 'number' ? trees[0] : trees;
  };
  return { chosen: list.map((n) => args[n]), call, inputs, rebuild };
}

function countLeaves(def: TreeDef): number {
  return def.kind === 'leaf' ? 1 : def.children.reduce((s, c) => s + countLeaves(c), 0);
}

/** The outputs' leaves, each checked to be a float tensor (a Jacobian needs a derivative per entry). */
function floatOutputs(op: string, out: unknown): { leaves: Tensor[]; def: TreeDef } {
  const { leaves, def } = flatten<unknown>(out as PyTree<unknown>);
  const paths = leafPaths(def, 'result');
  leaves.forEach((l, i) => {
    if (!isTensor(l)) throw new TreeError(`${op}: output ${paths[i]} is ${describeValue(l)}, not a Tensor`);
    if (!isFloat(l.dtype)) throw new DTypeError(`${op}: output ${paths[i]} is ${describeValue(l)}; only float outputs have a Jacobian`);
  });
  return { leaves: leaves as Tensor[], def };
}

/** The `j`-th standard basis vector of a tensor of `shape`. */
function basis(shape: Shape, j: number, dtype: DType): Tensor {
  const n = sizeOf(shape);
  return reshape(cast(equal(arange(n), j), dtype), shape);
}

/** Stacks per-entry slices into a block of shape `outer ++ inner`; `at` is where the entries go. */
function block(pieces: readonly Tensor[], outShape: Shape, inShape: Shape, at: number, dtype: DType): Tensor {
  const shape = [...outShape, ...inShape];
  if (pieces.length === 0 || shape.includes(0)) return zeros(shape, dtype);
  return reshape(stack(pieces, at), shape);
}

function named<F extends (...args: never[]) => unknown>(name: string, f: F): F {
  Object.defineProperty(f, 'name', { value: name });
  return f;
}

/**
 * `jacrev(f, { argnums })(...args)`: the Jacobian of `f` by reverse mode, one pullback per output
 * entry. Outputs must be float tensors; the block of output leaf `y` and input leaf `x` has shape
 * `y.shape ++ x.shape` and `x`'s dtype.
 * @example
 * const J = jacrev((x: Tensor) => mul(x, x))(tensor([1, 2]));   // [2, 2]: [[2, 0], [0, 4]]
 */
export function jacrev<A extends Args, R, const N extends number | readonly number[] = 0>(
  f: (...args: A) => R,
  options: JacobianOptions<N> = {},
): (...args: A) => Jacobian<R, GradOf<A, N>> {
  const name = `jacrev(${f.name || 'f'})`;
  return named(name, (...args: A): Jacobian<R, GradOf<A, N>> => {
    const s = select(name, f, args, options.argnums ?? 0);
    const [out, pullback] = vjp(tensorOutputs(name, s.call), ...s.chosen);
    const outs = floatOutputs(name, out);
    const blocks = outs.leaves.map((y, i) => {
      const rows: Tensor[][] = s.inputs.map(() => []);
      for (let j = 0; j < y.size; j++) {
        const cotangent = outs.leaves.map((o, k) => (k === i ? basis(y.shape, j, y.dtype) : zeros(o.shape, o.dtype)));
        const cts = flatten<Tensor>(pullback(unflatten(outs.def, cotangent) as R) as PyTree<Tensor>).leaves;
        cts.forEach((c, k) => rows[k]!.push(c));
      }
      return s.rebuild(s.inputs.map((x, k) => block(rows[k]!, y.shape, x.shape, 0, x.dtype)));
    });
    return unflatten(outs.def, blocks) as Jacobian<R, GradOf<A, N>>;
  });
}

/**
 * `jacfwd(f, { argnums })(...args)`: the Jacobian of `f` by forward mode, one Jacobian-vector product
 * per input entry (sharing one linearisation). Same layout as `jacrev`; blocks have the output's dtype.
 * @example
 * const J = jacfwd((x: Tensor) => sin(x))(tensor([0, 1, 2]));   // [3, 3], cos(x) on the diagonal
 */
export function jacfwd<A extends Args, R, const N extends number | readonly number[] = 0>(
  f: (...args: A) => R,
  options: JacobianOptions<N> = {},
): (...args: A) => Jacobian<R, GradOf<A, N>> {
  const name = `jacfwd(${f.name || 'f'})`;
  return named(name, (...args: A): Jacobian<R, GradOf<A, N>> => {
    const s = select(name, f, args, options.argnums ?? 0);
    const [out, push] = pushforward(name, s.call, s.chosen);
    const outs = floatOutputs(name, out);
    const cols: Tensor[][][] = outs.leaves.map(() => s.inputs.map(() => []));
    s.inputs.forEach((x, k) => {
      for (let j = 0; j < x.size; j++) {
        const tangents = s.inputs.map((t, m) => (m === k ? basis(x.shape, j, x.dtype) : zeros(t.shape, t.dtype)));
        const dys = flatten<Tensor>(push(tangents) as PyTree<Tensor>).leaves;
        dys.forEach((dy, i) => cols[i]![k]!.push(dy));
      }
    });
    const blocks = outs.leaves.map((y, i) => s.rebuild(s.inputs.map((x, k) => block(cols[i]![k]!, y.shape, x.shape, y.rank, y.dtype))));
    return unflatten(outs.def, blocks) as Jacobian<R, GradOf<A, N>>;
  });
}

/**
 * `hessian(f, { argnums })(...args)` = `jacfwd(jacrev(f))`: forward over reverse. For a scalar `f` of
 * one tensor `x` it has shape `x.shape ++ x.shape`; in general `y.shape ++ x1.shape ++ x2.shape` per
 * output leaf and pair of input leaves, nested as trees in that order.
 * @example
 * const H = hessian((x: Tensor) => sum(mul(x, mul(x, x))))(tensor([1, 2]));   // [[6, 0], [0, 12]]
 */
export function hessian<A extends Args, R, const N extends number | readonly number[] = 0>(
  f: (...args: A) => R,
  options: JacobianOptions<N> = {},
): (...args: A) => Jacobian<Jacobian<R, GradOf<A, N>>, GradOf<A, N>> {
  const inner = jacrev(f, options) as (...args: A) => Jacobian<R, GradOf<A, N>>;
  return named(`hessian(${f.name || 'f'})`, jacfwd(inner, options) as (...args: A) => Jacobian<Jacobian<R, GradOf<A, N>>, GradOf<A, N>>);
}
