/** Shared pieces of the autodiff property tests. */
import fc from 'fast-check';
import { checkGrad, type CheckGradOptions } from '../../autodiff/check.ts';
import { grad } from '../../autodiff/grad.ts';
import { isFloat } from '../../core/dtype.ts';
import { mul, sum, tensor } from '../../core/ops.ts';
import { isTensor, type Tensor } from '../../core/tensor.ts';

/** Runs per property; TESSERA_FC_RUNS=200 for a deep run. */
export const runs = Number(process.env['TESSERA_FC_RUNS'] ?? 15);

/** Asserts an async property with the suite's run count. */
export function holds<Ts extends [unknown, ...unknown[]]>(arb: fc.Arbitrary<Ts>, predicate: (...args: Ts) => Promise<void>): Promise<void> {
  return fc.assert(fc.asyncProperty(arb, (args) => predicate(...args)), { numRuns: runs, includeErrorInReport: true });
}

type Fn = (...args: never[]) => Tensor;

/**
 * Checks the gradient of `f` against central differences, then (unless `secondOrder` is false) the
 * gradient of its vector-Jacobian product with a fixed cotangent, so that every rule is itself
 * differentiable as `grad(grad(f))` needs.
 */
export async function checkRule(f: Fn, inputs: readonly unknown[], options: CheckGradOptions & { secondOrder?: boolean } = {}): Promise<void> {
  await checkGrad(f, inputs, options);
  if (options.secondOrder === false) return;
  const call = f as unknown as (...args: unknown[]) => Tensor;
  const argnums = inputs.flatMap((x, i) => (isTensor(x) && isFloat(x.dtype) ? [i] : []));
  const shape = call(...inputs).shape;
  const size = shape.reduce((a, b) => a * b, 1);
  const c = tensor(Float64Array.from({ length: size }, (_, i) => Math.sin(1 + 2.17 * i)), shape, 'float64');
  const vjpOf = (...xs: unknown[]) => grad((...ys: unknown[]) => sum(mul(call(...ys), c)), { argnums })(...xs);
  await checkGrad(vjpOf, inputs, options);
}
