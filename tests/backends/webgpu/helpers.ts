/**
 * Parity helpers: run one function under jit on the CPU oracle and on WebGPU, and compare. A
 * missing adapter makes `gpu()` throw, so every test fails (never skips) without WebGPU.
 */
import assert from 'node:assert/strict';
import fc from 'fast-check';
import * as T from '../../../core/index.ts';
import { registerCpuBackend } from '../../../backends/cpu/index.ts';
import { registerWebGpuBackend, type WebGpuBackend } from '../../../backends/webgpu/index.ts';

registerCpuBackend();
registerWebGpuBackend();

export const RUNS = Number(process.env['TESSERA_FC_RUNS'] ?? 20);

export async function gpu(): Promise<WebGpuBackend> {
  return (await T.getBackend('webgpu')) as WebGpuBackend;
}

export interface Tol {
  readonly atol: number;
  readonly rtol: number;
}

export const EXACT: Tol = { atol: 0, rtol: 0 };
/** Sums and products in float32 in another order. */
export const SUMS: Tol = { atol: 1e-5, rtol: 1e-4 };
/** Transcendentals: lavapipe's exp/log/sin are within a few ulp. */
export const TRANSCENDENTAL: Tol = { atol: 1e-6, rtol: 3e-5 };

export function assertClose(name: string, want: ArrayLike<number>, got: ArrayLike<number>, tol: Tol): void {
  assert.equal(got.length, want.length, `${name}: length`);
  for (let i = 0; i < want.length; i++) {
    const w = want[i]!;
    const g = got[i]!;
    if (Object.is(w, g) || (Number.isNaN(w) && Number.isNaN(g)) || w === g) continue;
    if (Math.abs(w - g) <= tol.atol + tol.rtol * Math.abs(w)) continue;
    assert.fail(`${name}: element ${i} is ${g} on webgpu, ${w} on cpu (tolerance ${tol.atol} + ${tol.rtol}*|x|)`);
  }
}

/** Runs `f` under jit on both backends and compares every output. */
export async function parity(name: string, f: (...xs: T.Tensor[]) => T.Tensor | T.Tensor[], inputs: readonly T.Tensor[], tol: Tol = EXACT): Promise<void> {
  await gpu();
  const outs = async (backend: string): Promise<ArrayLike<number>[]> => {
    const r = await T.jit(f as (...xs: T.Tensor[]) => T.Tensor, { backend, name })(...inputs);
    const list = Array.isArray(r) ? (r as T.Tensor[]) : [r];
    return Promise.all(list.map((t) => t.data()));
  };
  const want = await outs('cpu');
  const got = await outs('webgpu');
  assert.equal(got.length, want.length);
  want.forEach((w, i) => assertClose(`${name} output ${i}`, w, got[i]!, tol));
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
