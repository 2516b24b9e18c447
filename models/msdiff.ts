/**
 * Multi-scale non-uniform diffusion (MSDiff; Batzolis et al. 2022, "Non-Uniform Diffusion Models"):
 * the image is split by L levels of the orthonormal Haar transform into n = L + 1 components, the
 * detail bands d_1 (finest) .. d_L and the coarse approximation, and each component j (0-based
 * here: j = 0 is d_1, j = L the approximation) diffuses by its own variance-preserving SDE that
 * reaches pure noise at T_j = (j + 1) / n, with log-SNR linear from +10 at t = eps to -10 at T_j.
 * The finest details are noise first, the approximation last (at t = 1).
 *
 * On scale k's interval [k / n, (k + 1) / n] the components j < k are pure noise and dropped; the
 * live ones (j >= k) are rebuilt into an image at resolution R / 2^k (inverse Haar in), a SongUNet of
 * that scale predicts the noise of the image, and the Haar transform of its output gives each live
 * component's noise (Haar out). Sampling runs scale by scale from the coarsest, adding each detail
 * band as fresh noise when its interval begins.
 */
import {
  add, broadcastTo, clip, div, jit, mul, neg, random, reshape, shapesEqual, sigmoid, sqrt, square, sub, tensor, ShapeError, TesseraError, fmtShape,
  type Backend, type BackendName, type Tensor,
} from '../core/index.ts';
import { haarDecompose, haarReconstruct } from './haar.ts';
import { backendKey, ProgramCache } from './programCache.ts';
import type { ApplyOptions } from './nn.ts';
import { songUNet, type SongUNetConfig, type SongUNetParams } from './songunet.ts';

// ---------------------------------------------------------------- the non-uniform forward process

/** The non-uniform forward process: Haar levels and the log-SNR line every component follows (see `msdiffSample` for use). */
export interface NonUniformSchedule {
  /** Haar levels L: n = L + 1 components, and L + 1 scales. */
  readonly levels: number;
  /** The smallest diffusion time, where every component's log-SNR is `logSnrMax` (1e-5, as the VP SDE of Song et al. 2021). */
  readonly eps?: number;
  /** log-SNR at t = eps (+10) and at each component's end T_j (-10). */
  readonly logSnrMax?: number;
  readonly logSnrMin?: number;
}

interface Schedule {
  readonly n: number;
  readonly eps: number;
  readonly max: number;
  readonly min: number;
}

function resolveSchedule(s: NonUniformSchedule): Schedule {
  const { levels, eps = 1e-5, logSnrMax = 10, logSnrMin = -10 } = s;
  if (!Number.isInteger(levels) || levels < 0) throw new TesseraError(`msdiff schedule: levels must be a whole number >= 0, got ${levels}`);
  if (!(eps > 0 && eps < 1 / (levels + 1))) throw new TesseraError(`msdiff schedule: eps must lie in (0, 1/${levels + 1}), got ${eps}`);
  if (!(logSnrMax > logSnrMin)) throw new TesseraError(`msdiff schedule: logSnrMax (${logSnrMax}) must exceed logSnrMin (${logSnrMin})`);
  return { n: levels + 1, eps, max: logSnrMax, min: logSnrMin };
}

/**
 * T_j = (j + 1) / n: the time at which component j is pure noise.
 * @example
 * componentEnd({ levels: 2 }, 0);                     // 1/3: the finest details are noise first
 * componentEnd({ levels: 2 }, 2);                     // 1: the approximation last
 */
export function componentEnd(schedule: NonUniformSchedule, j: number): number {
  const s = resolveSchedule(schedule);
  if (!Number.isInteger(j) || j < 0 || j >= s.n) throw new TesseraError(`msdiff: component ${j} does not exist (0..${s.n - 1})`);
  return (j + 1) / s.n;
}

/**
 * The time interval of scale k: [k / n, (k + 1) / n], starting at eps for scale 0.
 * @example
 * scaleInterval({ levels: 2 }, 0);                    // [1e-5, 1/3]
 * scaleInterval({ levels: 2 }, 1);                    // [1/3, 2/3]
 */
export function scaleInterval(schedule: NonUniformSchedule, k: number): [number, number] {
  const s = resolveSchedule(schedule);
  if (!Number.isInteger(k) || k < 0 || k >= s.n) throw new TesseraError(`msdiff: scale ${k} does not exist (0..${s.n - 1})`);
  return [k === 0 ? s.eps : k / s.n, (k + 1) / s.n];
}

/** A log-SNR linear in t: `max` at t = eps, `min` at t = end, held at `min` after `end`. */
export interface LinearLogSnr {
  readonly eps: number;
  readonly end: number;
  readonly max: number;
  readonly min: number;
}

/**
 * lambda(t) of a `LinearLogSnr` line, e.g. `linearLogSnr({ eps: 1e-5, end: 1, max: 10, min: -10 }, t)`.
 * @example
 * linearLogSnr({ eps: 1e-5, end: 1, max: 10, min: -10 }, tensor([1e-5, 0.5, 1]));   // [10, ~0, -10]
 */
export function linearLogSnr(l: LinearLogSnr, t: Tensor): Tensor {
  return add(mul(clip(div(sub(t, l.eps), l.end - l.eps), 0, 1), l.min - l.max), l.max);
}

/**
 * The variance-preserving marginal of log-SNR lambda: x(t) = alpha x(0) + sigma z, alpha^2 = sigmoid(lambda), sigma^2 = sigmoid(-lambda) = 1 - alpha^2.
 * @example
 * const { alpha, sigma } = vpMarginal(tensor([0]));   // log-SNR 0: alpha = sigma = sqrt(1/2)
 * const xt = add(mul(alpha, x0), mul(sigma, noise));
 */
export function vpMarginal(lambda: Tensor): { alpha: Tensor; sigma: Tensor } {
  return { alpha: sqrt(sigmoid(lambda)), sigma: sqrt(sigmoid(neg(lambda))) };
}

/**
 * |d lambda / dt| of a linear log-SNR on [eps, end].
 * @example
 * logSnrSlope({ eps: 1e-5, end: 1, max: 10, min: -10 });   // 20.0002
 */
export const logSnrSlope = (l: LinearLogSnr): number => (l.max - l.min) / (l.end - l.eps);

/**
 * beta(t) of the VP SDE dx = -beta x / 2 dt + sqrt(beta) dW with a linear log-SNR (for eps <= t <= end):
 * beta = -d/dt log alpha^2 = sigma^2 |d lambda / dt|.
 * @example
 * vpBeta({ eps: 1e-5, end: 1, max: 10, min: -10 }, tensor([0.5]));   // [10.0]: sigma^2 (1/2) times the slope (20)
 */
export function vpBeta(l: LinearLogSnr, t: Tensor): Tensor {
  return mul(square(vpMarginal(linearLogSnr(l, t)).sigma), logSnrSlope(l));
}

/**
 * lambda_j(t), linear from logSnrMax at eps to logSnrMin at T_j, held at logSnrMin after T_j.
 * @example
 * componentLogSnr({ levels: 2 }, 0, tensor([1e-5, 0.2, 0.5]));   // [10, -2, -10]: held at -10 after T_0 = 1/3
 */
export function componentLogSnr(schedule: NonUniformSchedule, j: number, t: Tensor): Tensor {
  return linearLogSnr(componentSchedule(schedule, j), t);
}

/**
 * Component j's log-SNR line: from logSnrMax at eps to logSnrMin at T_j.
 * @example
 * componentSchedule({ levels: 2 }, 0);                // { eps: 1e-5, end: 1/3, max: 10, min: -10 }
 */
export function componentSchedule(schedule: NonUniformSchedule, j: number): LinearLogSnr {
  const s = resolveSchedule(schedule);
  return { eps: s.eps, end: componentEnd(schedule, j), max: s.max, min: s.min };
}

/**
 * The marginal of component j at time t (`vpMarginal` of its log-SNR).
 * @example
 * const { alpha, sigma } = componentMarginal({ levels: 2 }, 2, tensor([0.5]));   // both ~0.7071 at log-SNR ~0
 * const xt = add(mul(perImage(alpha), approx), mul(perImage(sigma), noise));
 */
export function componentMarginal(schedule: NonUniformSchedule, j: number, t: Tensor): { alpha: Tensor; sigma: Tensor } {
  return vpMarginal(componentLogSnr(schedule, j, t));
}

/**
 * beta_j(t) of component j's VP SDE (`vpBeta` of its log-SNR line), for eps <= t <= T_j.
 * @example
 * const beta = componentBeta({ levels: 2 }, 0, tensor([0.1, 0.2]));   // [2], for t <= T_0 = 1/3
 */
export function componentBeta(schedule: NonUniformSchedule, j: number, t: Tensor): Tensor {
  return vpBeta(componentSchedule(schedule, j), t);
}

/**
 * g_j^2 / sigma_j^2 = beta_j / sigma_j^2 = |d lambda_j / dt|, constant in t: the weight of
 * component j's noise-prediction error under likelihood weighting (Song et al. 2021, "Maximum
 * likelihood training of score-based diffusion models", lambda(t) = g(t)^2).
 * @example
 * likelihoodWeight({ levels: 2 }, 0);                 // 60.0: the finest details' log-SNR falls 3 times faster
 * likelihoodWeight({ levels: 2 }, 2);                 // 20.0
 */
export function likelihoodWeight(schedule: NonUniformSchedule, j: number): number {
  return logSnrSlope(componentSchedule(schedule, j));
}

/**
 * Samples the forward process of components `first..first + x0.length - 1` at times t ([B]):
 * x_j(t) = alpha_j(t) x_j(0) + sigma_j(t) z_j, with z_j ~ N(0, I) drawn from `key` and returned.
 * @example
 * const live = componentList(haarDecompose(images, 2)).slice(1);   // scale 1: components 1 and 2
 * const { noisy, noise } = diffuseComponents({ levels: 2 }, 1, live, t, random.key(0));   // t [B]
 */
export function diffuseComponents(schedule: NonUniformSchedule, first: number, x0: readonly Tensor[], t: Tensor, key: Tensor): { noisy: Tensor[]; noise: Tensor[] } {
  const noise = x0.map((x, i) => random.normal(random.foldIn(key, first + i), x.shape, x.dtype));
  const noisy = x0.map((x, i) => {
    const { alpha, sigma } = componentMarginal(schedule, first + i, timePerSample(t, x.shape[0]!));
    return add(mul(perImage(alpha), x), mul(perImage(sigma), noise[i]!));
  });
  return { noisy, noise };
}

/**
 * t as [B]: one time per sample, from a scalar, [1] or [B].
 * @example
 * timePerSample(tensor(0.5), 3);                      // [0.5, 0.5, 0.5]
 */
export function timePerSample(t: Tensor, b: number): Tensor {
  if (t.size === 1) return broadcastTo(reshape(t, [1]), [b]);
  if (t.rank !== 1 || t.shape[0] !== b) throw new ShapeError(`msdiff: t must be a scalar or [${b}] (one time per sample), got ${fmtShape(t.shape)}`);
  return t;
}

/**
 * [B] -> [B, 1, 1, 1], to scale a batch of images per sample.
 * @example
 * const xt = add(mul(perImage(alpha), x0), mul(perImage(sigma), noise));   // alpha, sigma [B]; x0 [B, C, H, W]
 */
export const perImage = (v: Tensor): Tensor => reshape(v, [v.shape[0]!, 1, 1, 1]);

/**
 * The components as one list, finest detail first and the approximation last.
 * @example
 * componentList(haarDecompose(x, 2));                 // [details[0], details[1], approx]
 */
export const componentList = (c: { readonly details: readonly Tensor[]; readonly approx: Tensor }): Tensor[] => [...c.details, c.approx];

/**
 * The image of the live components of scale k (components k..n-1), at resolution R / 2^k.
 * @example
 * const live = componentList(haarDecompose(x, 2)).slice(1);   // scale 1's components
 * liveImage(live);                                    // x at half its resolution, [B, C, R/2, R/2]
 */
export function liveImage(live: readonly Tensor[]): Tensor {
  if (live.length === 0) throw new TesseraError('msdiff: no live components');
  return haarReconstruct({ details: live.slice(0, -1), approx: live[live.length - 1]! });
}

// ---------------------------------------------------------------- the model: one network per scale

/** The multi-scale model: image size and channels, its schedule, and the SongUNet of each scale (example in `tests/models/msdiff.test.ts`). */
export interface MsdiffModelConfig {
  readonly imgResolution: number;
  readonly imgChannels: number;
  readonly schedule: NonUniformSchedule;
  /**
   * The SongUNet of each scale, full resolution (scale 0) first; one config serves every scale.
   * Each network's levels must fit its resolution R / 2^k.
   */
  readonly networks: NetworkConfig | readonly NetworkConfig[];
}

export type NetworkConfig = Omit<SongUNetConfig, 'imgResolution' | 'inChannels' | 'outChannels' | 'labelDim'>;

/** One SongUNet per scale (EDM's parameter names inside each), scale 0 first. */
export type MsdiffParams = { readonly scales: readonly SongUNetParams[] };

/** A score for each live component of scale k, at time t ([B], one per sample). */
export type MultiScaleScore = (scale: number, live: readonly Tensor[], t: Tensor) => Tensor[];

/**
 * The multi-scale model: `predictNoise` is the network of scale k on its live components (inverse
 * Haar in, SongUNet, Haar out), `score` turns its prediction into each component's score
 * -eps_hat / sigma_j(t), and `scoreFunction(params)` is the `MultiScaleScore` a sampler takes.
 * @example
 * const model = msdiffModel({ imgResolution: 32, imgChannels: 1, schedule: { levels: 2 }, networks: { modelChannels: 8, channelMult: [1, 2, 2], numBlocks: 1 } });
 * const score = model.scoreFunction(model.init(random.key(0)));   // for msdiffSample
 */
export function msdiffModel(config: MsdiffModelConfig) {
  const s = resolveSchedule(config.schedule);
  const levels = s.n - 1;
  const R = config.imgResolution;
  if (R % 2 ** levels !== 0) throw new TesseraError(`msdiff: imgResolution ${R} cannot be halved ${levels} times`);
  const perScale = Array.isArray(config.networks) ? (config.networks as readonly NetworkConfig[]) : Array.from({ length: s.n }, () => config.networks as NetworkConfig);
  if (perScale.length !== s.n) throw new TesseraError(`msdiff: networks has ${perScale.length} entries for ${s.n} scales`);
  const networks = perScale.map((net, k) => songUNet({ ...net, imgResolution: R / 2 ** k, inChannels: config.imgChannels, outChannels: config.imgChannels }));

  const checkLive = (k: number, live: readonly Tensor[]) => {
    if (!Number.isInteger(k) || k < 0 || k >= s.n) throw new TesseraError(`msdiff: scale ${k} does not exist (0..${s.n - 1})`);
    if (live.length !== s.n - k) throw new TesseraError(`msdiff: scale ${k} has ${s.n - k} live components, got ${live.length}`);
    const image = liveImage(live);
    const want = [image.shape[0]!, config.imgChannels, R / 2 ** k, R / 2 ** k];
    if (!shapesEqual(image.shape, want)) throw new ShapeError(`msdiff: the live components of scale ${k} rebuild ${fmtShape(image.shape)}, expected ${fmtShape(want)}`);
    return image;
  };

  const predictNoise = (params: MsdiffParams, k: number, live: readonly Tensor[], t: Tensor, options: ApplyOptions = {}): Tensor[] => {
    const image = checkLive(k, live);
    const tb = timePerSample(t, image.shape[0]!);
    // The VP preconditioning of EDM (Table 1): c_noise = (M - 1) t with M = 1000.
    const out = networks[k]!.apply(params.scales[k]!, image, mul(tb, 999), options);
    return componentList(haarDecompose(out, levels - k));
  };

  const score = (params: MsdiffParams, k: number, live: readonly Tensor[], t: Tensor): Tensor[] =>
    predictNoise(params, k, live, t).map((e, i) => neg(div(e, perImage(componentMarginal(config.schedule, k + i, timePerSample(t, e.shape[0]!)).sigma))));

  return {
    config,
    networks,
    components: s.n,
    init(key: Tensor): MsdiffParams {
      return { scales: networks.map((net, k) => net.init(random.foldIn(key, k))) };
    },
    predictNoise,
    score,
    scoreFunction: (params: MsdiffParams): MultiScaleScore => (k, live, t) => score(params, k, live, t),
  };
}

// ---------------------------------------------------------------- sampling, scale by scale

/** Options of `msdiffSample`: schedule, output shape, key, total steps, SDE or ODE. */
export interface MsdiffSampleOptions {
  readonly schedule: NonUniformSchedule;
  /** The full image [B, C, R, R]. */
  readonly shape: readonly [number, number, number, number];
  readonly key: Tensor;
  /** Steps in all, split evenly over the scales (at least one each). */
  readonly numSteps: number;
  /** 'sde': Euler-Maruyama on the reverse SDE (default); 'ode': Euler on the probability-flow ODE. */
  readonly method?: 'sde' | 'ode';
  /** Finish with the posterior mean at t = eps, x_0 = (x + sigma^2 s) / alpha (Tweedie). Default true. */
  readonly denoiseLast?: boolean;
  readonly backend?: Backend | BackendName;
}

/**
 * The shape of each component of a [B, C, R, R] image split over L levels, finest detail first.
 * @example
 * componentShapes([4, 1, 32, 32], 2);                 // [[4, 3, 16, 16], [4, 3, 8, 8], [4, 1, 8, 8]]
 */
export function componentShapes(shape: readonly number[], levels: number): number[][] {
  const [b, c, h, w] = shape as [number, number, number, number];
  if (h % 2 ** levels !== 0 || w % 2 ** levels !== 0) throw new ShapeError(`msdiff: ${fmtShape(shape)} cannot be halved ${levels} times`);
  const details = Array.from({ length: levels }, (_, l) => [b, 3 * c, h / 2 ** (l + 1), w / 2 ** (l + 1)]);
  return [...details, [b, c, h / 2 ** levels, w / 2 ** levels]];
}

/** The compiled step and final denoising of a score function: one pair per (score, schedule, method, backend), kept while the score lives. */
const compiled = new ProgramCache<MultiScaleScore, SamplerPrograms>();

interface SamplerPrograms {
  readonly step: (live: Tensor[], k: number, t: Tensor, tNext: Tensor, key: Tensor) => Promise<Tensor[]>;
  readonly denoise: (live: Tensor[], t: Tensor) => Promise<Tensor[]>;
}

function samplerPrograms(score: MultiScaleScore, options: MsdiffSampleOptions): SamplerPrograms {
  const method = options.method ?? 'sde';
  return compiled.get(score, [options.schedule, method, backendKey(options.backend)], () => buildSamplerPrograms(score, options, method));
}

function buildSamplerPrograms(score: MultiScaleScore, options: MsdiffSampleOptions, method: 'sde' | 'ode'): SamplerPrograms {
  const step = jit(
    (live: Tensor[], k: number, t: Tensor, tNext: Tensor, key: Tensor): Tensor[] => {
      const tb = timePerSample(t, live[0]!.shape[0]!);
      const scores = checkScores(score(k, live, tb), live, k);
      return live.map((x, i) => {
        const j = k + i;
        // Going back by dt = t - tNext > 0: x += [beta x / 2 + beta s] dt + sqrt(beta dt) z, or the ODE's [beta (x + s) / 2] dt.
        const bdt = mul(perImage(componentBeta(options.schedule, j, tb)), sub(t, tNext));
        if (method === 'ode') return add(x, mul(mul(bdt, add(x, scores[i]!)), 0.5));
        return add(add(x, mul(add(mul(x, 0.5), scores[i]!), bdt)), mul(sqrt(bdt), random.normal(random.foldIn(key, i), x.shape)));
      });
    },
    { name: `msdiffStep-${method}`, backend: options.backend },
  );
  const denoise = jit(
    (live: Tensor[], t: Tensor): Tensor[] => {
      const tb = timePerSample(t, live[0]!.shape[0]!);
      const scores = checkScores(score(0, live, tb), live, 0);
      return live.map((x, j) => {
        const { alpha, sigma } = componentMarginal(options.schedule, j, tb);
        return div(add(x, mul(perImage(square(sigma)), scores[j]!)), perImage(alpha));
      });
    },
    { name: 'msdiffDenoise', backend: options.backend },
  );
  return { step, denoise };
}

/**
 * Draws images by integrating each scale's reverse process in turn (Batzolis et al. 2022, Sec. 3.3):
 * the approximation starts from N(0, I) at t = 1; on scale k's interval every live component j
 * follows its own reverse SDE
 *   dx_j = [-beta_j x_j / 2 - beta_j s_j] dt + sqrt(beta_j) dW   (Song et al. 2021, Eq. 6),
 * or the probability-flow ODE dx_j = -beta_j (x_j + s_j) / 2 dt (Eq. 13); when t reaches k / n,
 * detail band k - 1 joins as fresh N(0, I) noise, which is its marginal at T_{k-1}. At eps the
 * components are denoised and the Haar transform inverted. The compiled programs are kept per score
 * function: sampling again with the same function (and so the same parameters) compiles nothing.
 * More in README, section 'Multi-scale non-uniform diffusion (MSDiff)'.
 * @example
 * const score = model.scoreFunction(params);         // model from msdiffModel
 * const images = await msdiffSample(score, { schedule: { levels: 2 }, shape: [4, 1, 32, 32], key: random.key(1), numSteps: 60 });
 */
export async function msdiffSample(score: MultiScaleScore, options: MsdiffSampleOptions): Promise<Tensor> {
  const s = resolveSchedule(options.schedule);
  const shapes = componentShapes(options.shape, s.n - 1);
  if (!Number.isInteger(options.numSteps) || options.numSteps < s.n) throw new TesseraError(`msdiffSample: numSteps must be a whole number >= ${s.n} (one per scale), got ${options.numSteps}`);
  const steps = Math.round(options.numSteps / s.n);
  const { step, denoise } = samplerPrograms(score, options);

  let live: Tensor[] = [];
  for (let k = s.n - 1; k >= 0; k--) {
    live = [random.normal(random.foldIn(options.key, 2 * k), shapes[k]!), ...live];
    const [lo, hi] = scaleInterval(options.schedule, k);
    const stepKey = random.foldIn(options.key, 2 * k + 1);
    for (let i = 0; i < steps; i++) {
      const t = hi - (i * (hi - lo)) / steps;
      const tNext = hi - ((i + 1) * (hi - lo)) / steps;
      live = await step(live, k, tensor(t), tensor(tNext), random.foldIn(stepKey, i));
    }
  }
  if (options.denoiseLast ?? true) live = await denoise(live, tensor(s.eps));
  return liveImage(live);
}

function checkScores(scores: readonly Tensor[], live: readonly Tensor[], k: number): readonly Tensor[] {
  if (scores.length !== live.length) throw new TesseraError(`msdiff score: scale ${k} must return ${live.length} scores (one per live component), got ${scores.length}`);
  scores.forEach((sc, i) => {
    if (!shapesEqual(sc.shape, live[i]!.shape)) {
      throw new ShapeError(`msdiff score: scale ${k}, component ${k + i}: the score is ${fmtShape(sc.shape)}, the component ${fmtShape(live[i]!.shape)}`);
    }
  });
  return scores;
}
