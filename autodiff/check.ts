/**
 * A numerical gradient checker: compares reverse-mode gradients with central differences, both
 * computed in float64 by the CPU backend (which must be registered, e.g. by importing
 * `backends/cpu`).
 *
 * `f` must be dtype-generic: the float inputs are cast to float64 before `f` sees them, so write
 * constants as numbers (`mul(x, 0.5)`), which adopt the dtype of the tensor they meet, never as
 * float32 tensors. A float32 output is reported as an error rather than silently checked at float32
 * precision.
 */
import { isFloat } from '../core/dtype.ts';
import { DTypeError, TesseraError, TreeError, fmtShape } from '../core/errors.ts';
import { dispose, jit } from '../core/jit.ts';
import { add, mul, scalar, sum, tensor } from '../core/ops.ts';
import { flatten, leafPaths, unflatten, type PyTree } from '../core/pytree.ts';
import { stridesOf } from '../core/shape.ts';
import { isTensor, type Tensor } from '../core/tensor.ts';
import { grad } from './grad.ts';

/** Tolerances, step and sampling of `checkGrad`. */
export interface CheckGradOptions {
  /** Step of the central difference. Default 1e-6. */
  readonly eps?: number;
  /** A check passes when |analytic - numeric| <= atol + rtol * max(|analytic|, |numeric|). Default 1e-5. */
  readonly rtol?: number;
  /** Default 1e-6. */
  readonly atol?: number;
  /** Leaves with at most this many entries are checked entry by entry; larger ones along random directions. Default 64. */
  readonly maxElementwise?: number;
  /** Random directions per large leaf. Default 4. */
  readonly directions?: number;
  /** Seed of the random cotangents and directions. Default 0. */
  readonly seed?: number;
}

/** One comparison: the derivative at one entry of a leaf, or along one random direction. */
export interface GradComparison {
  /** Pytree path of the input leaf, e.g. `inputs[0].w`. */
  readonly path: string;
  /** The entry's multi-index, or `direction k` for a directional derivative. */
  readonly at: readonly number[] | `direction ${number}`;
  readonly analytic: number;
  readonly numeric: number;
  /** |analytic - numeric| divided by the tolerance: above 1 fails; Infinity for a NaN or one-sided infinity. */
  readonly ratio: number;
}

/** What `checkGrad` compared, and its worst comparison. */
export interface GradCheckResult {
  /** Number of comparisons made. */
  readonly checked: number;
  /** The comparison with the largest ratio (undefined when nothing was compared, e.g. zero-size inputs). */
  readonly worst: GradComparison | undefined;
}

/** Thrown by `checkGrad` when a gradient disagrees with central differences; `result` has the worst entry. */
export class GradCheckError extends TesseraError {
  override readonly name = 'GradCheckError';
  constructor(
    message: string,
    readonly result: GradCheckResult,
  ) {
    super(message);
  }
}

/** mulberry32: a tiny seeded generator; the checker's randomness needs only reproducibility. */
function generator(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = Math.imul(s ^ (s >>> 15), 1 | s);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function normals(rand: () => number, n: number): Float64Array {
  return Float64Array.from({ length: n }, () => Math.sqrt(-2 * Math.log(1 - rand())) * Math.cos(2 * Math.PI * rand()));
}

function ratioOf(analytic: number, numeric: number, rtol: number, atol: number): number {
  if (Number.isNaN(analytic) || Number.isNaN(numeric)) return Infinity;
  if (!Number.isFinite(analytic) || !Number.isFinite(numeric)) return analytic === numeric ? 0 : Infinity;
  return Math.abs(analytic - numeric) / (atol + rtol * Math.max(Math.abs(analytic), Math.abs(numeric)));
}

function unravel(flat: number, shape: readonly number[]): number[] {
  return stridesOf(shape).map((s, i) => Math.floor(flat / s) % shape[i]!);
}

/**
 * Checks the gradient of `f(...inputs)` with respect to every float tensor leaf of `inputs` (other
 * leaves are held fixed). A non-scalar output (or a tree of outputs) is reduced with a random
 * cotangent, so the vector-Jacobian product is what is checked. Resolves with the comparisons' summary,
 * or rejects with a GradCheckError naming the worst leaf path, index, analytic and numeric values.
 * @example
 * const quickGelu = (x: Tensor) => mul(x, sigmoid(mul(x, 1.702)));
 * await checkGrad((t: Tensor) => sum(quickGelu(t)), [tensor([-1, 0.5, 2])]);   // rejects if a gradient is off
 */
export async function checkGrad(
  f: (...args: never[]) => unknown,
  inputs: readonly unknown[],
  options: CheckGradOptions = {},
): Promise<GradCheckResult> {
  const { eps = 1e-6, rtol = 1e-5, atol = 1e-6, maxElementwise = 64, directions = 4, seed = 0 } = options;
  const name = f.name || 'f';
  const call = f as unknown as (...args: unknown[]) => unknown;
  const { leaves, def } = flatten<unknown>(inputs as PyTree<unknown>);
  const paths = leafPaths(def, 'inputs');
  const diff = leaves.flatMap((l, i) => (isTensor(l) && isFloat(l.dtype) ? [i] : []));
  if (diff.length === 0) throw new TreeError(`checkGrad: no float tensor among the inputs of ${name}`);
  const shapes = diff.map((i) => (leaves[i] as Tensor).shape);
  const base = await Promise.all(diff.map(async (i) => Float64Array.from(await (leaves[i] as Tensor).data())));
  const asTensor = (values: Float64Array, k: number): Tensor => tensor(values, shapes[k], 'float64');
  const rebuild = (floats: readonly Tensor[]): unknown[] => {
    const all = [...leaves];
    diff.forEach((li, k) => (all[li] = floats[k]));
    return unflatten(def, all) as unknown[];
  };
  const x0 = base.map(asTensor);

  // Probe the outputs' structure (this only builds a graph) and draw one cotangent per output.
  const rand = generator(seed);
  const probe = flatten<unknown>(call(...rebuild(x0)) as PyTree<unknown>);
  const outPaths = leafPaths(probe.def, 'result');
  const cotangents = probe.leaves.map((o, i) => {
    if (!isTensor(o)) throw new TreeError(`checkGrad: ${name} returned a non-tensor at ${outPaths[i]}`);
    if (o.dtype !== 'float64') {
      throw new DTypeError(
        `checkGrad: ${name} returned ${o.dtype} ${fmtShape(o.shape)} at ${outPaths[i]} from float64 inputs; write it dtype-generically (numbers, not float32 tensors, as constants)`,
      );
    }
    return o.rank === 0 ? tensor([1], [], 'float64') : tensor(normals(rand, o.size), o.shape, 'float64');
  });
  const loss = (floats: Tensor[], cts: Tensor[]): Tensor => {
    const outs = flatten<unknown>(call(...rebuild(floats)) as PyTree<unknown>).leaves as Tensor[];
    return outs.reduce<Tensor>((acc, o, i) => add(acc, sum(mul(o, cts[i]!))), scalar(0, 'float64'));
  };
  const lossFn = jit(loss, { backend: 'reference', name: `checkGrad(${name})` });
  const gradFn = jit((floats: Tensor[], cts: Tensor[]) => grad(loss)(floats, cts), { backend: 'reference', name: `checkGrad(${name}).grad` });

  const gradients = await gradFn(x0, cotangents);
  const analytic = await Promise.all(gradients.map(async (g) => Float64Array.from(await g.data())));
  gradients.forEach(dispose);
  const lossAt = async (k: number, values: Float64Array): Promise<number> => {
    const moved = asTensor(values, k);
    const out = await lossFn(x0.map((x, j) => (j === k ? moved : x)), cotangents);
    const v = await out.item();
    dispose(out);
    dispose(moved);
    return v;
  };
  const centralDifference = async (k: number, direction: Float64Array): Promise<number> => {
    const at = (h: number) => lossAt(k, base[k]!.map((v, j) => v + h * direction[j]!));
    return ((await at(eps)) - (await at(-eps))) / (2 * eps);
  };

  const comparisons: GradComparison[] = [];
  for (let k = 0; k < diff.length; k++) {
    const g = analytic[k]!;
    const path = paths[diff[k]!]!;
    if (g.length <= maxElementwise) {
      for (let j = 0; j < g.length; j++) {
        const unit = new Float64Array(g.length);
        unit[j] = 1;
        const numeric = await centralDifference(k, unit);
        comparisons.push({ path, at: unravel(j, shapes[k]!), analytic: g[j]!, numeric, ratio: ratioOf(g[j]!, numeric, rtol, atol) });
      }
    } else {
      for (let d = 0; d < directions; d++) {
        const direction = normals(rand, g.length);
        const projected = g.reduce((acc, v, j) => acc + v * direction[j]!, 0);
        const numeric = await centralDifference(k, direction);
        comparisons.push({ path, at: `direction ${d}`, analytic: projected, numeric, ratio: ratioOf(projected, numeric, rtol, atol) });
      }
    }
  }
  [...x0, ...cotangents].forEach(dispose);

  const worst = comparisons.reduce<GradComparison | undefined>((w, c) => (w === undefined || c.ratio > w.ratio ? c : w), undefined);
  const result: GradCheckResult = { checked: comparisons.length, worst };
  if (worst !== undefined && worst.ratio > 1) {
    const failed = comparisons.filter((c) => c.ratio > 1).length;
    const at = typeof worst.at === 'string' ? ` along ${worst.at}` : ` at index [${worst.at.join(',')}]`;
    throw new GradCheckError(
      `checkGrad: the gradient of ${name} disagrees with central differences at ${worst.path}${at}: ` +
        `analytic ${worst.analytic}, numeric ${worst.numeric} (${failed} of ${comparisons.length} checks outside rtol ${rtol}, atol ${atol})`,
      result,
    );
  }
  return result;
}
