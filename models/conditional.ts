/**
 * Conditional score estimators for an inverse problem, super-resolution x2 (Batzolis et al. 2022,
 * "Non-Uniform Diffusion Models", Sec. 4, after their "Conditional image generation with score-based
 * diffusion models", 2021). The condition is y = A x, the 2x2 average of the target x, and the
 * network sees its input image beside the upsampled condition.
 *
 * - CDE, the conditional denoising estimator: the condition is not diffused; s(x_t, y, t) estimates
 *   grad_x log p_t(x_t | y), trained by denoising score matching on x with y clean.
 * - CMDE, the conditional multi-speed diffusive estimator: x and y diffuse jointly, y more slowly
 *   (non-uniform diffusion of the pair), and the network estimates the joint score
 *   grad_(x_t, y_t) log p_t(x_t, y_t), trained on both parts. Sampling takes its x part with y_t drawn
 *   from the forward process p(y_t | y) at each step: since y_t stays close to y, this approximates
 *   grad_x log p_t(x_t | y).
 *
 * Both diffuse x as the multi-scale model's components do: a variance-preserving SDE whose log-SNR
 * falls linearly from +10 at eps to -10 at t = 1. CMDE's y falls from +10 to ln 4 at t = 1: noise of
 * standard deviation 0.5 against the signal, the variance-preserving counterpart of the paper's
 * sigma_max,y = 0.5 for the condition's variance-exploding SDE.
 */
import {
  add, avgPool2d, concat, div, jit, mul, neg, random, shapesEqual, slice, sqrt, square, sub, tensor, upsampleNearest2d, ShapeError, TesseraError, fmtShape,
  type Backend, type BackendName, type Tensor,
} from '../core/index.ts';
import { linearLogSnr, perImage, timePerSample, vpBeta, vpMarginal, type LinearLogSnr, type NetworkConfig } from './msdiff.ts';
import type { ApplyOptions } from './nn.ts';
import { backendKey, ProgramCache } from './programCache.ts';
import { songUNet, type SongUNetParams } from './songunet.ts';

/** 'cde': the condition is not diffused; 'cmde': it diffuses more slowly than the target. */
export type ConditionalEstimator = 'cde' | 'cmde';

/** The forward processes: x's, and y's when the condition diffuses (CMDE); without it y stays clean (CDE). */
export interface ConditionalProcess {
  readonly x: LinearLogSnr;
  readonly y?: LinearLogSnr;
}

/** A conditional model for super-resolution x2, e.g. `{ imgResolution: 32, imgChannels: 1, estimator: 'cmde', network: { modelChannels: 8, channelMult: [1, 2, 2] } }`. */
export interface ConditionalModelConfig {
  /** The target's side R; the condition is R / 2. */
  readonly imgResolution: number;
  readonly imgChannels: number;
  readonly estimator: ConditionalEstimator;
  readonly network: NetworkConfig;
  /** The smallest diffusion time (1e-5). */
  readonly eps?: number;
  /** CMDE: the condition's log-SNR at t = 1 (ln 4: noise of standard deviation 0.5). */
  readonly conditionLogSnrEnd?: number;
}

/**
 * The degradation of the inverse problem: y = A x, each 2x2 block averaged ([B, C, R, R] -> [B, C, R/2, R/2]).
 * @example
 * const y = superResolutionCondition(images);        // [B, C, 32, 32] -> [B, C, 16, 16]
 */
export const superResolutionCondition = (x: Tensor): Tensor => avgPool2d(x, 2);

/** The estimate of grad_x log p_t(x_t | y) from x_t, the network's condition input (y or y_t) and t ([B]). */
export type ConditionalScore = (x: Tensor, condition: Tensor, t: Tensor) => Tensor;

/** The noise predicted for x_t, and for y_t when the model estimates the joint score (CMDE). */
export interface ConditionalPrediction {
  readonly x: Tensor;
  readonly y?: Tensor;
}

/**
 * A SongUNet at R px on [x_t, upsample(condition)] (2C channels in). CDE predicts x's noise (C
 * channels out); CMDE also predicts y's, as C more channels averaged down to R / 2.
 * Used in README, section 'Multi-scale non-uniform diffusion (MSDiff)' and in tests/models/conditional.test.ts.
 */
export function conditionalModel(config: ConditionalModelConfig) {
  const { imgResolution: R, imgChannels: C, estimator } = config;
  if (estimator !== 'cde' && estimator !== 'cmde') throw new TesseraError(`conditional model: estimator must be 'cde' or 'cmde', got '${String(estimator)}'`);
  if (R % 2 !== 0) throw new TesseraError(`conditional model: imgResolution ${R} must be even (the condition is R / 2)`);
  const eps = config.eps ?? 1e-5;
  const yEnd = config.conditionLogSnrEnd ?? Math.log(4);
  if (!(yEnd < 10)) throw new TesseraError(`conditional model: conditionLogSnrEnd must be below the log-SNR at eps (10), got ${yEnd}`);
  const process: ConditionalProcess = {
    x: { eps, end: 1, max: 10, min: -10 },
    y: estimator === 'cmde' ? { eps, end: 1, max: 10, min: yEnd } : undefined,
  };
  const network = songUNet({ ...config.network, imgResolution: R, inChannels: 2 * C, outChannels: estimator === 'cmde' ? 2 * C : C });

  const predict = (params: SongUNetParams, x: Tensor, condition: Tensor, t: Tensor, options: ApplyOptions = {}): ConditionalPrediction => {
    const [b] = x.shape as [number];
    const want = [b, C, R / 2, R / 2];
    if (!shapesEqual(x.shape, [b, C, R, R]) || !shapesEqual(condition.shape, want)) {
      throw new ShapeError(`conditional model: expects x ${fmtShape([b, C, R, R])} and condition ${fmtShape(want)}, got ${fmtShape(x.shape)} and ${fmtShape(condition.shape)}`);
    }
    // The VP preconditioning of EDM (Table 1): c_noise = (M - 1) t with M = 1000.
    const out = network.apply(params, concat([x, upsampleNearest2d(condition, 2)], 1), mul(timePerSample(t, b), 999), options);
    if (estimator === 'cde') return { x: out };
    return { x: slice(out, [0, 0, 0, 0], [b, C, R, R]), y: avgPool2d(slice(out, [0, C, 0, 0], [b, 2 * C, R, R]), 2) };
  };

  return {
    config,
    process,
    network,
    init: (key: Tensor): SongUNetParams => network.init(key),
    predict,
    /** s_x = -eps_hat_x / sigma_x(t): the score the sampler follows. */
    scoreFunction: (params: SongUNetParams): ConditionalScore => (x, condition, t) =>
      neg(div(predict(params, x, condition, t).x, perImage(vpMarginal(linearLogSnr(process.x, timePerSample(t, x.shape[0]!))).sigma))),
  };
}

/**
 * y_t ~ p(y_t | y) under the condition's process, or y itself when it does not diffuse.
 * @example
 * const { condition } = diffuseCondition(model.process, y, t, random.key(0));   // y itself for CDE, y_t for CMDE
 */
export function diffuseCondition(process: ConditionalProcess, y: Tensor, t: Tensor, key: Tensor): { condition: Tensor; noise?: Tensor } {
  if (process.y === undefined) return { condition: y };
  const noise = random.normal(key, y.shape, y.dtype);
  const { alpha, sigma } = vpMarginal(linearLogSnr(process.y, timePerSample(t, y.shape[0]!)));
  return { condition: add(mul(perImage(alpha), y), mul(perImage(sigma), noise)), noise };
}

/** Options of `conditionalSample` (example in `train/experiments/msdiff-conditional.ts`). */
export interface ConditionalSampleOptions {
  readonly process: ConditionalProcess;
  /** The observed condition [B, C, R/2, R/2]. */
  readonly y: Tensor;
  readonly key: Tensor;
  readonly numSteps: number;
  /** 'sde': Euler-Maruyama on the reverse SDE (default); 'ode': Euler on the probability-flow ODE. */
  readonly method?: 'sde' | 'ode';
  /** Finish with the posterior mean at eps (Tweedie). Default true. */
  readonly denoiseLast?: boolean;
  readonly backend?: Backend | BackendName;
}

interface SamplerPrograms {
  readonly step: (x: Tensor, y: Tensor, t: Tensor, tNext: Tensor, key: Tensor) => Promise<Tensor>;
  readonly denoise: (x: Tensor, y: Tensor, t: Tensor, key: Tensor) => Promise<Tensor>;
}

const compiled = new ProgramCache<ConditionalScore, SamplerPrograms>();

function samplerPrograms(score: ConditionalScore, options: ConditionalSampleOptions): SamplerPrograms {
  const method = options.method ?? 'sde';
  return compiled.get(score, [options.process, method, backendKey(options.backend)], () => buildSamplerPrograms(score, options, method));
}

function buildSamplerPrograms(score: ConditionalScore, options: ConditionalSampleOptions, method: 'sde' | 'ode'): SamplerPrograms {
  const { process } = options;
  const checkedScore = (x: Tensor, y: Tensor, t: Tensor, key: Tensor): Tensor => {
    const s = score(x, diffuseCondition(process, y, t, key).condition, t);
    if (!shapesEqual(s.shape, x.shape)) throw new ShapeError(`conditional score: returned ${fmtShape(s.shape)} for x ${fmtShape(x.shape)}`);
    return s;
  };
  const step = jit(
    (x: Tensor, y: Tensor, t: Tensor, tNext: Tensor, key: Tensor): Tensor => {
      const tb = timePerSample(t, x.shape[0]!);
      const [kCondition, kNoise] = random.split(key, 2) as [Tensor, Tensor];
      const s = checkedScore(x, y, tb, kCondition);
      // Back by dt = t - tNext: the reverse SDE (Song et al. 2021, Eq. 6) or the probability-flow ODE (Eq. 13), as in msdiffSample.
      const bdt = mul(perImage(vpBeta(process.x, tb)), sub(t, tNext));
      if (method === 'ode') return add(x, mul(mul(bdt, add(x, s)), 0.5));
      return add(add(x, mul(add(mul(x, 0.5), s), bdt)), mul(sqrt(bdt), random.normal(kNoise, x.shape)));
    },
    { name: `conditionalStep-${method}`, backend: options.backend },
  );
  const denoise = jit(
    (x: Tensor, y: Tensor, t: Tensor, key: Tensor): Tensor => {
      const tb = timePerSample(t, x.shape[0]!);
      const { alpha, sigma } = vpMarginal(linearLogSnr(process.x, tb));
      return div(add(x, mul(perImage(square(sigma)), checkedScore(x, y, tb, key))), perImage(alpha));
    },
    { name: 'conditionalDenoise', backend: options.backend },
  );
  return { step, denoise };
}

/**
 * Draws x given the observed y by integrating x's reverse process from t = 1 (x ~ N(0, I)) to eps
 * with `numSteps` Euler(-Maruyama) steps, the score seeing y (CDE) or a fresh y_t ~ p(y_t | y) at each
 * step (CMDE), then denoises at eps. The compiled programs are kept per score function.
 * Used in tests/models/conditional.test.ts and train/experiments/msdiff-conditional.ts.
 */
export async function conditionalSample(score: ConditionalScore, options: ConditionalSampleOptions): Promise<Tensor> {
  const { process, y, numSteps } = options;
  if (!Number.isInteger(numSteps) || numSteps < 1) throw new TesseraError(`conditionalSample: numSteps must be a whole number >= 1, got ${numSteps}`);
  if (y.rank !== 4) throw new ShapeError(`conditionalSample: y must be [B, C, R/2, R/2], got ${fmtShape(y.shape)}`);
  const [b, c, h, w] = y.shape as [number, number, number, number];
  const { step, denoise } = samplerPrograms(score, options);
  const [kInit, kSteps, kLast] = random.split(options.key, 3) as [Tensor, Tensor, Tensor];
  let x = random.normal(kInit, [b, c, 2 * h, 2 * w]);
  const { eps, end } = process.x;
  for (let i = 0; i < numSteps; i++) {
    const t = end - (i * (end - eps)) / numSteps;
    const tNext = end - ((i + 1) * (end - eps)) / numSteps;
    x = await step(x, y, tensor(t), tensor(tNext), random.foldIn(kSteps, i));
  }
  return options.denoiseLast ?? true ? denoise(x, y, tensor(eps), kLast) : x;
}
