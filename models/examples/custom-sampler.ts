/**
 * A sampler written by a user against the `Denoiser` interface only: DPM-Solver-2 (Lu et al. 2022,
 * "DPM-Solver", Algorithm 1 with k = 2) in EDM's formulation, a second-order midpoint method:
 *
 *   d_i   = (x_i - D(x_i; t_i)) / t_i
 *   s_i   = sqrt(t_i t_{i+1})                      (the midpoint in log sigma)
 *   x_mid = x_i + (s_i - t_i) d_i
 *   x_{i+1} = x_i + (t_{i+1} - t_i) (x_mid - D(x_mid; s_i)) / s_i
 *
 * with a plain Euler step into t_N = 0. Like the built-in samplers it compiles one step with `jit`:
 * each call returns a fresh concrete tensor, so nothing accumulates across steps.
 *
 * Run it: `npx tsx models/examples/custom-sampler.ts` samples a 1-D Gaussian with its exact denoiser
 * (the script part loads the CPU backend; the sampler itself needs only core and the interface).
 */
import { add, div, jit, mul, reshape, sqrt, square, sub, random, type Tensor } from '../../core/index.ts';
import { initialState, noiseLevel, perSample, type Sampler } from '../samplers.ts';
import { checkedDenoiser, type Denoiser } from '../precond.ts';

export const dpmSolver2Sampler: Sampler = async (userDenoiser, options) => {
  // The same check the built-in samplers make: D(x, sigma) must keep x's shape and dtype.
  const denoiser = checkedDenoiser(userDenoiser, 'dpmSolver2Sampler');
  const { sigmas, x: x0 } = initialState(options);
  const step = jit((x: Tensor, tCur: Tensor, tNext: Tensor, midpoint: boolean): Tensor => {
    const d = div(sub(x, denoiser(x, perSample(tCur, x), options.extra)), tCur);
    if (!midpoint) return add(x, mul(sub(tNext, tCur), d));
    const tMid = sqrt(mul(tCur, tNext));
    const xMid = add(x, mul(sub(tMid, tCur), d));
    const dMid = div(sub(xMid, denoiser(xMid, perSample(tMid, x), options.extra)), tMid);
    return add(x, mul(sub(tNext, tCur), dMid));
  });
  let x = x0;
  for (let i = 0; i + 1 < sigmas.length; i++) {
    x = await step(x, noiseLevel(sigmas[i]!), noiseLevel(sigmas[i + 1]!), sigmas[i + 1]! > 0);
  }
  return x;
};

/** The exact denoiser of N(m, s^2) data: E[y | y + n = x] = m + s^2 / (s^2 + sigma^2) (x - m). */
export function gaussianDenoiser(m: number, s: number): Denoiser {
  return (x, sigma) => {
    const sg = reshape(sigma, [sigma.size, ...x.shape.slice(1).map(() => 1)]);
    return add(m, mul(div(s * s, add(square(sg), s * s)), sub(x, m)));
  };
}

if (import.meta.url === `file://${globalThis.process?.argv[1]}`) {
  const { registerReferenceBackend } = await import('../../backends/reference/index.ts');
  const { setDefaultBackend } = await import('../../core/index.ts');
  registerReferenceBackend();
  setDefaultBackend('reference');
  const x = await dpmSolver2Sampler(gaussianDenoiser(0.5, 0.5), { key: random.key(0), shape: [4096, 1], numSteps: 32 });
  const v = Array.from(await x.data());
  const mean = v.reduce((a, b) => a + b, 0) / v.length;
  const std = Math.sqrt(v.reduce((a, b) => a + (b - mean) ** 2, 0) / (v.length - 1));
  console.log(`DPM-Solver-2, 32 steps: mean ${mean.toFixed(4)} (0.5), std ${std.toFixed(4)} (0.5)`);
  // 4096 samples: the standard error of the mean is 0.5 / 64 ~ 0.008; 0.05 is far outside chance.
  if (!(Math.abs(mean - 0.5) < 0.05 && Math.abs(std - 0.5) < 0.05)) throw new Error('DPM-Solver-2 did not sample N(0.5, 0.5^2)');
}
