/**
 * Parity helpers for the fast backends: run one function under jit on the `reference` oracle and on
 * a target backend, and compare. The entry file of a suite registers its target; a target that is
 * not registered or cannot start makes every test fail (never skip).
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import * as T from '../../../core/index.ts';
import { registerReferenceBackend } from '../../../backends/reference/index.ts';

registerReferenceBackend();

export const RUNS = Number(process.env['TESSERA_FC_RUNS'] ?? 20);

/** The backends held to the reference by these suites. */
export type Target = 'webgpu' | 'cpu';

export interface Tol {
  readonly atol: number;
  readonly rtol: number;
}

/** Movement, integer, boolean, select, cast and random-bit ops: exact on every target. */
export const EXACT: Tol = { atol: 0, rtol: 0 };

/** How far a target may be from the reference, by kind of op. */
export interface Tolerances {
  /** Float add, sub, mul, div, max, min and comparisons. */
  readonly arithmetic: Tol;
  /** exp, log, sin, cos, sqrt, rsqrt, tanh, sigmoid, reciprocal, pow. */
  readonly transcendental: Tol;
  /** Float sums over short axes. */
  readonly reduction: Tol;
  /** Float sums over rows of thousands of elements. */
  readonly longReduction: Tol;
  /** matmul, conv2d and its adjoints. */
  readonly contraction: Tol;
  /** Random programs mixing all of the above. */
  readonly program: Tol;
  /** Forward and backward programs of a block with a softmax of contractions. */
  readonly gradient: Tol;
}

/** Sums and products in float32 in another order. */
export const SUMS: Tol = { atol: 1e-5, rtol: 1e-4 };

export const TOLERANCES: Record<Target, Tolerances> = {
  // lavapipe's exp/log/sin are within a few ulp; division may be off by one ulp; sums are float32.
  webgpu: {
    arithmetic: { atol: 0, rtol: 2e-7 },
    transcendental: { atol: 1e-6, rtol: 3e-5 },
    reduction: SUMS,
    longReduction: { atol: 1e-3, rtol: 1e-4 },
    contraction: SUMS,
    program: { atol: 1e-4, rtol: 1e-4 },
    gradient: { atol: 1e-4, rtol: 2e-3 },
  },
  // Elementwise kernels call the same Math functions and round to float32 once per node, and sums
  // accumulate in double in the reference's order; only the SIMD GEMMs sum float32 in another order.
  cpu: {
    arithmetic: EXACT,
    transcendental: EXACT,
    reduction: EXACT,
    longReduction: EXACT,
    contraction: SUMS,
    program: { atol: 1e-4, rtol: 1e-4 },
    gradient: { atol: 1e-4, rtol: 2e-3 },
  },
};

export function assertClose(name: string, target: Target, want: ArrayLike<number>, got: ArrayLike<number>, tol: Tol): void {
  assert.equal(got.length, want.length, `${name}: length`);
  for (let i = 0; i < want.length; i++) {
    const w = want[i]!;
    const g = got[i]!;
    if (Object.is(w, g) || (Number.isNaN(w) && Number.isNaN(g)) || w === g) continue;
    if (Math.abs(w - g) <= tol.atol + tol.rtol * Math.abs(w)) continue;
    assert.fail(`${name}: element ${i} is ${g} on ${target}, ${w} on reference (tolerance ${tol.atol} + ${tol.rtol}*|x|)`);
  }
}

const describeInputs = (xs: readonly T.Tensor[]): string => xs.map((x) => `${x.dtype}[${x.shape.join(',')}]`).join(', ');

/** Runs `f` under jit on the reference and on `target`, and compares every output. */
export async function parity(target: Target, name: string, f: (...xs: T.Tensor[]) => T.Tensor | T.Tensor[], inputs: readonly T.Tensor[], tol: Tol = EXACT): Promise<void> {
  await T.getBackend(target);
  const outs = async (backend: string): Promise<ArrayLike<number>[]> => {
    const r = await T.jit(f as (...xs: T.Tensor[]) => T.Tensor, { backend, name })(...inputs);
    const list = Array.isArray(r) ? (r as T.Tensor[]) : [r];
    return Promise.all(list.map((t) => t.data()));
  };
  const want = await outs('reference');
  const got = await outs(target);
  assert.equal(got.length, want.length);
  want.forEach((w, i) => assertClose(`${name} (inputs ${describeInputs(inputs)}) output ${i}`, target, w, got[i]!, tol));
}

/** A suite's view of one target: its tolerances, `parity` against it, and tests named after it. */
export function paritySuite(target: Target) {
  return {
    target,
    tol: TOLERANCES[target],
    parity: (name: string, f: (...xs: T.Tensor[]) => T.Tensor | T.Tensor[], inputs: readonly T.Tensor[], tol: Tol = EXACT) => parity(target, name, f, inputs, tol),
    test: (name: string, body: () => Promise<void> | void) => test(`${target}: ${name}`, body),
  };
}

/** Deterministic values from a seed (mulberry32), uniform in [lo, hi). */
export function values(seed: number, n: number, lo = -2, hi = 2): Float32Array {
  let s = seed >>> 0;
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    out[i] = lo + (((t ^ (t >>> 14)) >>> 0) / 4294967296) * (hi - lo);
  }
  return out;
}

export function randn(seed: number, shape: readonly number[], lo = -2, hi = 2): T.Tensor {
  return T.tensor(values(seed, T.sizeOf(shape), lo, hi), shape);
}

export function randint(seed: number, shape: readonly number[], lo: number, hi: number): T.Tensor {
  return T.tensor(Int32Array.from(values(seed, T.sizeOf(shape), lo, hi), Math.floor), shape, 'int32');
}

export const seed = fc.integer({ min: 0, max: 2 ** 31 - 1 });

/** Shapes of rank 0..maxRank with dims in [minDim, maxDim]. */
export function shape(maxRank = 4, maxDim = 5, minDim = 1): fc.Arbitrary<number[]> {
  return fc.array(fc.integer({ min: minDim, max: maxDim }), { minLength: 0, maxLength: maxRank });
}

/** A shape and a second shape that broadcasts against it (dims dropped or set to 1). */
export function broadcastPair(maxRank = 4, maxDim = 5): fc.Arbitrary<[number[], number[]]> {
  return shape(maxRank, maxDim).chain((s) =>
    fc
      .tuple(fc.integer({ min: 0, max: s.length }), fc.array(fc.boolean(), { minLength: s.length, maxLength: s.length }))
      .map(([drop, ones]): [number[], number[]] => [s, s.slice(drop).map((d, i) => (ones[i + drop] ? 1 : d))]),
  );
}

export { fc, T };
