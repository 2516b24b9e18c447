/** Evaluation straight through the CPU backend's interface (no registry), and test data. */
import assert from 'node:assert/strict';
import type { TypedArray } from '../../../core/dtype.ts';
import { buildProgram } from '../../../core/program.ts';
import type { Tensor } from '../../../core/tensor.ts';
import { randomBitsHost, uniformFromBitsHost } from '../../../core/threefry.ts';
import { referenceBackend } from '../../../backends/reference/index.ts';

/** Compiles and runs the graph below `outputs` on the CPU backend; returns each output's values. */
export async function evalCpu(...outputs: Tensor[]): Promise<TypedArray[]> {
  const be = referenceBackend();
  const { program, lifted } = buildProgram('test', outputs);
  const inputs = lifted.map((t) => {
    const s = t.storage;
    assert.ok(s?.kind === 'host');
    return be.upload(s.data, t.shape, t.dtype);
  });
  const outs = be.run(be.compile(program), inputs, inputs.map(() => false));
  return Promise.all(outs.map((o) => be.download(o)));
}

/** The values of one tensor as a plain array. */
export async function values(t: Tensor): Promise<number[]> {
  return [...(await evalCpu(t))[0]!];
}

/** Deterministic uniform values in [-1, 1). */
export function randomValues(seed: number, n: number): number[] {
  return [...uniformFromBitsHost(randomBitsHost(seed, 0x5eed, n, 0))].map((u) => 2 * u - 1);
}

/** Element i of `actual` within `tol` of `expected[i]` (NaN matches NaN, -0 only matches -0 when tol is 0). */
export function assertClose(actual: ArrayLike<number>, expected: ArrayLike<number>, tol = 0, what = ''): void {
  assert.equal(actual.length, expected.length, `${what} length`);
  for (let i = 0; i < expected.length; i++) {
    const a = actual[i]!;
    const e = expected[i]!;
    const ok = tol === 0 ? Object.is(a, e) : (Number.isNaN(a) && Number.isNaN(e)) || a === e || Math.abs(a - e) <= tol * Math.max(1, Math.abs(e));
    assert.ok(ok, `${what}[${i}]: got ${a}, expected ${e}`);
  }
}
