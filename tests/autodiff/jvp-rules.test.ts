/**
 * Forward mode, one property per primitive: `jvp` (derived by transposing the vector-Jacobian rules)
 * agrees with float64 central differences, satisfies <u, J v> = <J^T u, v> against `vjp`, and the
 * same holds for the jvp of each rule's vector-Jacobian product (forward over reverse), over random
 * shapes, broadcasts and attributes. The cases are shared with reverse mode (primitiveCases.ts).
 */
import { registerReferenceBackend } from '../../backends/reference/index.ts';
import { setDefaultBackend } from '../../core/backend.ts';
import { test } from 'node:test';
import fc from 'fast-check';
import { arbShape, arbTensor } from '../../autodiff/arbitraries.ts';
import { add, cast, greater, iota, isFinite, mul, randomBits, tensor, uniformFromBits, where } from '../../core/ops.ts';
import { holds } from './helpers.ts';
import { checkJvp } from './jvp-check.ts';
import { primitiveCases } from './primitiveCases.ts';

registerReferenceBackend();
setDefaultBackend('reference');

for (const { name, arb } of primitiveCases) {
  // With a float32 round trip inside, the adjoint identity holds only to float32 rounding too.
  test(`jvp of ${name}`, () =>
    holds(fc.tuple(arb), ({ f, inputs, tolerance }) => checkJvp(f, inputs, tolerance && { ...tolerance, adjointRtol: 1e-6 })));
}

test('jvp through sources (iota, randomBits, uniformFromBits, isFinite) and to integer outputs', () =>
  holds(fc.tuple(arbTensor({ shapeArb: arbShape({ minRank: 1 }) })), (x) => {
    const key = tensor([3, 7], [2], 'int32');
    return checkJvp(
      (x) => {
        const noise = cast(uniformFromBits(randomBits(key, x.shape)), x.dtype);
        const y = where(isFinite(x), add(mul(x, cast(iota(x.shape, -1), x.dtype)), noise), 0);
        return { y, count: cast(greater(x, 0), 'int32') };
      },
      [x],
      { secondOrder: false },
    );
  }));
