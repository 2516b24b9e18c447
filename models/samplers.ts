/**
 * Samplers for the probability-flow ODE and SDE of EDM (Karras et al. 2022), written against the
 * `Denoiser` interface only (each checks, via `checkedDenoiser`, that D(x, sigma) has x's shape and
 * dtype), with sigma(t) = t and s(t) = 1:
 *
 *   dx/dt = (x - D(x; t)) / t                                   (EDM eq. 1 with eq. 3)
 *
 * Each step is one jitted program over the current x (fresh concrete tensors out, so graphs never
 * grow across steps); the step sizes enter as scalar tensors, so one compiled program serves all steps.
 */
import {
  add, broadcastTo, div, jit, mul, reshape, sqrt, square, sub, tensor, random, TesseraError, type Backend, type BackendName, type Shape, type Tensor,
} from '../core/index.ts';
import { checkedDenoiser, type Denoiser, type DenoiserExtra } from './precond.ts';

export interface ScheduleOptions {
  /** N, the number of noise levels before t_N = 0 (18). */
  readonly numSteps?: number;
  readonly sigmaMin?: number;
  readonly sigmaMax?: number;
  readonly rho?: number;
}

/**
 * EDM's time steps (eq. 5): t_i = (smax^(1/rho) + i/(N-1) (smin^(1/rho) - smax^(1/rho)))^rho for
 * i < N, and t_N = 0. Defaults N = 18, smin = 0.002, smax = 80, rho = 7.
 * @example
 * edmSigmas({ numSteps: 4 });                         // [80, 9.7232, 0.46998, 0.002, 0]
 */
export function edmSigmas(options: ScheduleOptions = {}): number[] {
  const n = options.numSteps ?? 18;
  const lo = (options.sigmaMin ?? 0.002) ** (1 / (options.rho ?? 7));
  const hi = (options.sigmaMax ?? 80) ** (1 / (options.rho ?? 7));
  if (!Number.isInteger(n) || n < 1) throw new TesseraError(`edmSigmas: numSteps must be an integer >= 1, got ${n}`);
  const t = Array.from({ length: n }, (_, i) => (hi + (n === 1 ? 0 : i / (n - 1)) * (lo - hi)) ** (options.rho ?? 7));
  return [...t, 0];
}

/** EDM's stochastic churn (Algorithm 2): extra noise raising t_i to t_hat = t_i (1 + gamma_i). */
export interface ChurnOptions {
  /** Overall amount of churn, S_churn (0: deterministic). */
  readonly sChurn?: number;
  /** Churn only for t_i in [S_min, S_max]. */
  readonly sMin?: number;
  readonly sMax?: number;
  /** Standard deviation factor of the added noise, S_noise (1). */
  readonly sNoise?: number;
}

/** What every sampler takes: a key, the output shape, the noise schedule and `extra` for the denoiser. */
export interface SampleOptions extends ScheduleOptions {
  /** Key of the initial noise (when `latents` is absent) and of the churn noise. */
  readonly key?: Tensor;
  /** Shape of the batch to sample, e.g. [N, C, H, W] (when `latents` is absent). */
  readonly shape?: Shape;
  /** Standard normal initial noise; the sampler starts from latents * t_0. */
  readonly latents?: Tensor;
  /** Explicit noise levels t_0 > ... > t_N = 0, instead of `edmSigmas(options)`. */
  readonly sigmas?: readonly number[];
  /** Passed to every denoiser call (coordinates, labels). */
  readonly extra?: DenoiserExtra;
  /** Backend the steps run on; default: the default backend. */
  readonly backend?: Backend | BackendName;
  /** Called after step `step` of `steps` (1 to steps) has run: a progress bar's hook. */
  readonly onStep?: (step: number, steps: number) => void;
}

/** A sampler: draws x ~ p(x) by integrating from pure noise with a denoiser. */
export type Sampler<O = object> = (denoiser: Denoiser, options: SampleOptions & O) => Promise<Tensor>;

/**
 * The noise levels of a run and the starting point x_0 = latents * t_0.
 * @example
 * const { sigmas, x } = initialState({ key: random.key(0), shape: [4, 3, 32, 32], numSteps: 8 });   // x = noise * sigmas[0]
 */
export function initialState(options: SampleOptions): { sigmas: readonly number[]; x: Tensor } {
  const sigmas = options.sigmas ?? edmSigmas(options);
  if (sigmas.length < 2 || sigmas[sigmas.length - 1] !== 0 || sigmas.some((t, i) => i > 0 && !(t < sigmas[i - 1]!))) {
    throw new TesseraError(`sampler: sigmas must decrease strictly to a final 0, got [${sigmas.join(', ')}]`);
  }
  let latents = options.latents;
  if (latents === undefined) {
    if (options.key === undefined || options.shape === undefined) throw new TesseraError('sampler: give latents, or a key and a shape');
    latents = random.normal(random.foldIn(options.key, 0), options.shape);
  }
  return { sigmas, x: mul(latents, sigmas[0]!) };
}

/**
 * A scalar tensor holding a step's noise level (a jit input, so one program serves every step).
 * @example
 * const step = jit((x: Tensor, t: Tensor, tNext: Tensor) => add(x, mul(sub(tNext, t), div(sub(x, D(x, perSample(t, x))), t))));
 * for (let i = 0; i + 1 < sigmas.length; i++) x = await step(x, noiseLevel(sigmas[i]!), noiseLevel(sigmas[i + 1]!));   // one program for every step
 */
export const noiseLevel = (t: number): Tensor => tensor(t);

/**
 * The denoiser's sigma argument for a batch: one value per sample.
 * @example
 * const denoised = D(x, perSample(noiseLevel(2.5), x));   // sigma [N] for x [N, C, H, W]
 */
export const perSample = (t: Tensor, x: Tensor): Tensor => broadcastTo(reshape(t, [1]), [x.shape[0]!]);

/**
 * EDM Algorithm 2 with a first- or second-order step: at each i, churn t_i up to t_hat, take an
 * Euler step to t_{i+1} and, for order 2 and t_{i+1} > 0, correct it with the trapezoidal rule
 * (Heun). With S_churn = 0 this is EDM Algorithm 1 (deterministic).
 */
async function edmSample(denoiserIn: Denoiser, options: SampleOptions & ChurnOptions, order: 1 | 2, name: string): Promise<Tensor> {
  const denoiser = checkedDenoiser(denoiserIn, name);
  const { sigmas, x: x0 } = initialState(options);
  const n = sigmas.length - 1;
  const sChurn = options.sChurn ?? 0;
  const sMin = options.sMin ?? 0;
  const sMax = options.sMax ?? Infinity;
  const sNoise = options.sNoise ?? 1;
  if (sChurn > 0 && options.key === undefined) throw new TesseraError('sampler: stochastic churn needs a key');
  const churnKey = options.key === undefined ? random.key(0) : random.foldIn(options.key, 1);

  const step = jit(
    (x: Tensor, tCur: Tensor, tHat: Tensor, tNext: Tensor, key: Tensor, churn: boolean, correct: boolean): Tensor => {
      // Increase noise temporarily: x_hat = x + sqrt(t_hat^2 - t_i^2) S_noise eps.
      const xHat = churn ? add(x, mul(mul(sqrt(sub(square(tHat), square(tCur))), sNoise), random.normal(key, x.shape))) : x;
      const d = div(sub(xHat, denoiser(xHat, perSample(tHat, x), options.extra)), tHat);
      const h = sub(tNext, tHat);
      const euler = add(xHat, mul(h, d));
      if (!correct) return euler;
      const dNext = div(sub(euler, denoiser(euler, perSample(tNext, x), options.extra)), tNext);
      return add(xHat, mul(h, mul(add(d, dNext), 0.5)));
    },
    { name: order === 2 ? 'heunStep' : 'eulerStep', backend: options.backend },
  );

  let x = x0;
  for (let i = 0; i < n; i++) {
    const tCur = sigmas[i]!;
    const tNext = sigmas[i + 1]!;
    const gamma = sChurn > 0 && tCur >= sMin && tCur <= sMax ? Math.min(sChurn / n, Math.SQRT2 - 1) : 0;
    const tHat = tCur + gamma * tCur;
    x = await step(x, noiseLevel(tCur), noiseLevel(tHat), noiseLevel(tNext), random.foldIn(churnKey, i), gamma > 0, order === 2 && tNext > 0);
    options.onStep?.(i + 1, n);
  }
  return x;
}

/**
 * EDM's Heun sampler (Algorithm 2; Algorithm 1 when S_churn = 0): 2N - 1 denoiser calls.
 * Defaults N = 18, sigma in [0.002, 80], rho = 7, S_churn = 0, S_min = 0, S_max = inf, S_noise = 1.
 * @example
 * const images = await heunSampler(D, { key: random.key(0), shape: [16, 3, 32, 32] });   // 18 steps, 35 calls of D
 * const churned = await heunSampler(D, { key: random.key(1), shape: [16, 3, 32, 32], numSteps: 40, sChurn: 10 });
 */
export const heunSampler: Sampler<ChurnOptions> = (denoiser, options) => edmSample(denoiser, options, 2, 'heunSampler');

/**
 * Euler steps of EDM's sampler (Algorithm 2 without the correction): N denoiser calls, with optional churn.
 * @example
 * const images = await eulerSampler(D, { key: random.key(0), shape: [16, 3, 32, 32], numSteps: 50 });
 */
export const eulerSampler: Sampler<ChurnOptions> = (denoiser, options) => edmSample(denoiser, options, 1, 'eulerSampler');

/**
 * Deterministic DDIM (Song et al. 2021, "Denoising Diffusion Implicit Models") in EDM's
 * formulation: x_{i+1} = x_i + (t_{i+1} - t_i) (x_i - D(x_i; t_i)) / t_i. EDM (Sec. 3 and
 * Appendix C.3) shows DDIM is exactly this Euler step of the probability-flow ODE with
 * sigma(t) = t and s(t) = 1; it differs from `eulerSampler` only in having no churn. Pass DDIM's own
 * time steps through `sigmas` to reproduce it step for step.
 * @example
 * const images = await ddimSampler(D, { key: random.key(0), shape: [16, 3, 32, 32], numSteps: 50 });
 */
export const ddimSampler: Sampler = (denoiser, options) => edmSample(denoiser, { ...options, sChurn: 0 }, 1, 'ddimSampler');
