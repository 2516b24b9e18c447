/**
 * A forward-mode checker for the jvp property tests: compares `jvp` with float64 central differences
 * along a fixed tangent, and checks the adjoint identity <u, J v> = <J^T u, v> against `vjp`, both on
 * the default (reference) backend.
 */
import assert from 'node:assert/strict';
import { grad, vjp } from '../../autodiff/grad.ts';
import { jvp } from '../../autodiff/jvp.ts';
import { add, mul, scalar, sum, tensor } from '../../core/ops.ts';
import { flatten, leafPaths, unflatten, type PyTree } from '../../core/pytree.ts';
import { sizeOf } from '../../core/shape.ts';
import type { Tensor } from '../../core/tensor.ts';

export interface JvpCheckOptions {
  /** Step of the central difference. Default 1e-6. */
  readonly eps?: number;
  /** An entry passes when |jvp - numeric| <= atol + rtol * max(|jvp|, |numeric|). Defaults 1e-5 and 1e-6. */
  readonly rtol?: number;
  readonly atol?: number;
  /** Relative tolerance of <u, J v> = <J^T u, v> (exact up to rounding). Default 1e-10. */
  readonly adjointRtol?: number;
  /** Also check forward over reverse: the jvp of `x -> J(x)^T c` for a fixed c. Default true. */
  readonly secondOrder?: boolean;
}

type Fn = (...xs: Tensor[]) => unknown;

/** A float64 copy of `x` (the checks run in float64 whatever the arbitrary drew). */
export async function float64(x: Tensor): Promise<Tensor> {
  return tensor(Float64Array.from(await x.data()), x.shape, 'float64');
}

/** A fixed, varied direction of `shape`; `k` decorrelates leaves. */
export function direction(shape: readonly number[], k: number, phase = 0): Tensor {
  const n = sizeOf(shape);
  return tensor(Float64Array.from({ length: n }, (_, i) => Math.sin(1.3 + phase + 2.17 * i + 0.71 * k)), shape, 'float64');
}

async function leavesOf(tree: unknown): Promise<{ paths: string[]; values: Float64Array[]; tensors: Tensor[] }> {
  const { leaves, def } = flatten<Tensor>(tree as PyTree<Tensor>);
  return { paths: leafPaths(def, 'result'), values: await Promise.all(leaves.map(async (l) => Float64Array.from(await l.data()))), tensors: leaves };
}

const dot = (a: Float64Array, b: Float64Array): [number, number] => {
  let s = 0;
  let scale = 0;
  a.forEach((v, i) => {
    s += v * b[i]!;
    scale += Math.abs(v * b[i]!);
  });
  return [s, scale];
};

/**
 * Checks `jvp(f, xs, vs)` against (f(x + eps v) - f(x - eps v)) / 2 eps entry by entry, and
 * <u, jvp> = <vjp(u), v>; with secondOrder, repeats both for the vector-Jacobian product of `f`
 * so second-order rules are checked in forward mode too.
 */
export async function checkJvp(f: Fn, inputs: readonly Tensor[], options: JvpCheckOptions = {}): Promise<void> {
  const { eps = 1e-6, rtol = 1e-5, atol = 1e-6, adjointRtol = 1e-10, secondOrder = true } = options;
  const xs = await Promise.all(inputs.map(float64));
  const vs = xs.map((x, k) => direction(x.shape, k));
  const [y, t] = jvp(f, xs, vs);
  const ys = await leavesOf(y);
  const ts = await leavesOf(t);
  const plus = await leavesOf(f(...xs.map((x, k) => add(x, mul(vs[k]!, eps)))));
  const minus = await leavesOf(f(...xs.map((x, k) => add(x, mul(vs[k]!, -eps)))));
  assert.equal(ts.values.length, ys.values.length, 'the tangent tree has as many leaves as the output');
  ts.tensors.forEach((tl, i) => {
    assert.deepEqual([...tl.shape], [...ys.tensors[i]!.shape], `tangent ${ts.paths[i]} has the output's shape`);
    assert.equal(tl.dtype, ys.tensors[i]!.dtype, `tangent ${ts.paths[i]} has the output's dtype`);
    if (tl.dtype !== 'float64') return;
    ts.values[i]!.forEach((a, j) => {
      const numeric = (plus.values[i]![j]! - minus.values[i]![j]!) / (2 * eps);
      const ok = Math.abs(a - numeric) <= atol + rtol * Math.max(Math.abs(a), Math.abs(numeric));
      assert.ok(ok, `jvp ${ts.paths[i]} entry ${j}: ${a}, central difference ${numeric}`);
    });
  });

  // The adjoint identity, with a fixed cotangent per float output.
  const [, pullback] = vjp(f, ...xs);
  const us = ys.tensors.map((o, i) => (o.dtype === 'float64' ? direction(o.shape, i, 0.4) : mul(o, 0)));
  const { def } = flatten<Tensor>(y as PyTree<Tensor>);
  const pulled = flatten<Tensor>(pullback(unflatten(def, us)) as PyTree<Tensor>).leaves;
  let left = 0;
  let scale = 0;
  for (let i = 0; i < us.length; i++) {
    if (ys.tensors[i]!.dtype !== 'float64') continue;
    const [s, sc] = dot(Float64Array.from(await us[i]!.data()), ts.values[i]!);
    left += s;
    scale += sc;
  }
  let right = 0;
  for (let k = 0; k < pulled.length; k++) {
    const [s, sc] = dot(Float64Array.from(await pulled[k]!.data()), Float64Array.from(await vs[k]!.data()));
    right += s;
    scale += sc;
  }
  assert.ok(Math.abs(left - right) <= 1e-12 + adjointRtol * scale, `<u, J v> = ${left} but <J^T u, v> = ${right}`);

  if (!secondOrder) return;
  // x -> J(x)^T c, with a fixed cotangent c per float output leaf.
  const cs = ys.tensors.map((o, i) => (o.dtype === 'float64' ? direction(o.shape, i, 0.9) : undefined));
  const argnums = xs.map((_, i) => i);
  const pairing = (...ws: Tensor[]) =>
    flatten<Tensor>(f(...ws) as PyTree<Tensor>).leaves.reduce((acc, o, i) => (cs[i] === undefined ? acc : add(acc, sum(mul(o, cs[i]!)))), scalar(0, 'float64'));
  const vjpOf = (...zs: Tensor[]) => grad(pairing, { argnums })(...zs);
  await checkJvp(vjpOf, xs, { ...options, secondOrder: false });
}
