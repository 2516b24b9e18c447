/**
 * Training multi-scale non-uniform diffusion (Batzolis et al. 2022, Sec. 3.2): batches rotate over
 * the scales; scale k's step draws t uniformly on its interval, diffuses the live components
 * (j >= k) of the batch's Haar decomposition, and trains only scale k's network, with its own Adam
 * state and EMA, on continuous-time denoising score matching with likelihood weighting summed over
 * the live components. The state is one pytree (every scale's params, EMA and optimizer state), so
 * checkpoints hold it as they hold the patch model's.
 */
import { add, div, jit, mul, random, reshape, scalar, slice, square, sub, sum, tensor, zeros, type BackendName, type PyTree, type Tensor } from '../core/index.ts';
import { valueAndGrad } from '../autodiff/index.ts';
import { conditionalModel, diffuseCondition, superResolutionCondition } from '../models/conditional.ts';
import { haarDecompose } from '../models/haar.ts';
import {
  componentList, diffuseComponents, likelihoodWeight, linearLogSnr, logSnrSlope, msdiffModel, msdiffSample, perImage, scaleInterval, vpMarginal, type MsdiffParams,
} from '../models/msdiff.ts';
import type { SongUNetParams } from '../models/songunet.ts';
import type { TrainingConfig } from './config.ts';
import type { TrainingMethod } from './method.ts';
import { adam, applyUpdates, emaUpdate, type GradientTransformation, type Params } from './optim.ts';
import { carryOptimizerState, countNonFinite, fullSize, songUNetSettings, trainOptimizer, type TrainState } from './step.ts';

type MsdiffModel = ReturnType<typeof msdiffModel>;

/**
 * The loss of scale k on clean images x0 [B, C, R, R] (Song et al. 2021, Eq. 7, with
 * lambda(t) = g(t)^2 per component, "Maximum likelihood training of score-based diffusion models"):
 * with s_j = -eps_hat_j / sigma_j, g_j^2 ||s_j + z_j / sigma_j||^2 = w_j ||eps_hat_j - z_j||^2, where
 * w_j = beta_j / sigma_j^2 = |d lambda_j / dt| (`likelihoodWeight`). Half the weighted squared error,
 * summed over the live components' entries, divided by the entries of one image (C R^2) so that the
 * value does not grow with the resolution, and averaged over the batch.
 */
export function msdiffLoss(model: MsdiffModel, params: MsdiffParams, x0: Tensor, k: number, key: Tensor, options: { readonly train?: boolean } = {}): Tensor {
  const schedule = model.config.schedule;
  const [b, c, h, w] = x0.shape as [number, number, number, number];
  const [kt, kn, kd] = random.split(key, 3) as [Tensor, Tensor, Tensor];
  const [lo, hi] = scaleInterval(schedule, k);
  const t = random.uniform(kt, [b], lo, hi);
  const live = componentList(haarDecompose(x0, model.components - 1)).slice(k);
  const { noisy, noise } = diffuseComponents(schedule, k, live, t, kn);
  const predicted = model.predictNoise(params, k, noisy, t, { train: options.train ?? true, key: kd });
  const terms = predicted.map((e, i) => {
    const err = sub(e, noise[i]!);
    return mul(sum(mul(err, err)), likelihoodWeight(schedule, k + i) / 2);
  });
  return div(terms.reduce((a, x) => add(a, x)), b * c * h * w);
}

export interface MsdiffTrainState {
  readonly params: MsdiffParams;
  readonly ema: MsdiffParams;
  /** One Adam state per scale. */
  readonly opt: readonly PyTree<Tensor>[];
  /** Images shown to each scale (float32 scalars): each scale's EMA ramps up on its own. */
  readonly imagesSeen: readonly Tensor[];
}

export interface MsdiffTrainOptions {
  readonly lr: number;
  /** EMA half-life in images (per scale) and EDM's ramp-up ratio. */
  readonly emaHalflifeImages: number;
  readonly emaRampupRatio?: number;
  readonly backend?: BackendName;
}

export function initMsdiffState(model: MsdiffModel, key: Tensor, options: MsdiffTrainOptions): MsdiffTrainState {
  const nets = model.init(key).scales.map((p) => initNetworkState(p, options));
  return {
    params: { scales: nets.map((n) => n.params) },
    ema: { scales: nets.map((n) => n.ema) },
    opt: nets.map((n) => n.opt),
    imagesSeen: nets.map((n) => n.imagesSeen),
  };
}

/**
 * `step(state, images, k, key)`: one Adam step of scale k's network (its EMA and count too), one
 * compiled program per scale and batch shape, with the old state donated. Scale k's network only
 * ever sees its own interval, so the other scales' parameters pass through unchanged.
 */
export function msdiffTrainStep(model: MsdiffModel, options: MsdiffTrainOptions) {
  return jit(
    (state: MsdiffTrainState, images: Tensor, k: number, key: Tensor) => {
      const replace = <T>(xs: readonly T[], x: T): T[] => xs.map((y, i) => (i === k ? x : y));
      const scaleLoss = (p: SongUNetParams) => msdiffLoss(model, { scales: replace(state.params.scales, p) }, images, k, key);
      const net = { params: state.params.scales[k]!, ema: state.ema.scales[k]!, opt: state.opt[k]!, imagesSeen: state.imagesSeen[k]! };
      const { loss, next } = networkStep(scaleLoss, net, images.shape[0]!, adamStep(options));
      return {
        state: {
          params: { scales: replace(state.params.scales, next.params) },
          ema: { scales: replace(state.ema.scales, next.ema) },
          opt: replace(state.opt, next.opt),
          imagesSeen: replace(state.imagesSeen, next.imagesSeen),
        },
        loss,
      };
    },
    { name: 'msdiffTrainStep', donate: [0], backend: options.backend },
  );
}

/** One network's parameters, their EMA, its Adam state and the images it has seen. */
export interface NetworkState<P> {
  readonly params: P;
  readonly ema: P;
  readonly opt: PyTree<Tensor>;
  readonly imagesSeen: Tensor;
}

export function initNetworkState<P>(params: P, options: MsdiffTrainOptions): NetworkState<P> {
  return { params, ema: params, opt: adam({ lr: options.lr }).init(params as Params), imagesSeen: scalar(0) };
}

/**
 * The loss of one network's parameters, one optimizer step on its gradient, and the EMA (EDM's,
 * updated with the count before this batch of b, then the count advanced).
 */
function networkStep<P>(
  lossOf: (p: P) => Tensor, state: NetworkState<P>, b: number,
  options: { readonly optimizer: GradientTransformation<never>; readonly emaHalflifeImages: number; readonly emaRampupRatio?: number },
): { loss: Tensor; next: NetworkState<P> } {
  const [loss, grads] = valueAndGrad(lossOf)(state.params);
  const [updates, opt] = options.optimizer.update(grads as Params, state.opt as never, state.params as Params);
  const params = applyUpdates(state.params as Params, updates) as P;
  const ema = emaUpdate(state.ema as Params, params as Params, state.imagesSeen, b, options.emaHalflifeImages, options.emaRampupRatio) as P;
  return { loss, next: { params, ema, opt: opt as PyTree<Tensor>, imagesSeen: add(state.imagesSeen, b) } };
}

const adamStep = (options: MsdiffTrainOptions) => ({ ...options, optimizer: adam({ lr: options.lr }) as GradientTransformation<never> });

// ---------------------------------------------------------------- conditional estimators (CDE, CMDE)

type ConditionalModel = ReturnType<typeof conditionalModel>;

/**
 * The loss of a conditional model on clean targets x0 (Song et al. 2021, Eq. 7, likelihood weighting
 * as in `msdiffLoss`): t ~ U(eps, 1), x_t from x's process, the condition y = A x0 clean (CDE) or
 * diffused to y_t (CMDE), and half the squared noise-prediction error weighted by |d lambda / dt| of
 * each part, summed (CMDE: over x's and y's entries), divided by the entries of one target and
 * averaged over the batch.
 */
export function conditionalLoss(model: ConditionalModel, params: SongUNetParams, x0: Tensor, key: Tensor, options: { readonly train?: boolean } = {}): Tensor {
  const { process } = model;
  const [b, c, h, w] = x0.shape as [number, number, number, number];
  const [kt, kx, ky, kd] = random.split(key, 4) as [Tensor, Tensor, Tensor, Tensor];
  const t = random.uniform(kt, [b], process.x.eps, process.x.end);
  const noiseX = random.normal(kx, x0.shape, x0.dtype);
  const { alpha, sigma } = vpMarginal(linearLogSnr(process.x, t));
  const xt = add(mul(perImage(alpha), x0), mul(perImage(sigma), noiseX));
  const { condition, noise: noiseY } = diffuseCondition(process, superResolutionCondition(x0), t, ky);
  const predicted = model.predict(params, xt, condition, t, { train: options.train ?? true, key: kd });
  const weighted = (e: Tensor, z: Tensor, slope: number) => mul(sum(square(sub(e, z))), slope / 2);
  let total = weighted(predicted.x, noiseX, logSnrSlope(process.x));
  if (process.y !== undefined && predicted.y !== undefined && noiseY !== undefined) total = add(total, weighted(predicted.y, noiseY, logSnrSlope(process.y)));
  return div(total, b * c * h * w);
}

/** `step(state, targets, key)`: one Adam step of a conditional model, compiled per batch shape, the old state donated. */
export function conditionalTrainStep(model: ConditionalModel, options: MsdiffTrainOptions) {
  return jit(
    (state: NetworkState<SongUNetParams>, images: Tensor, key: Tensor) => {
      const { loss, next } = networkStep((p: SongUNetParams) => conditionalLoss(model, p, images, key), state, images.shape[0]!, adamStep(options));
      return { state: next, loss };
    },
    { name: 'conditionalTrainStep', donate: [0], backend: options.backend },
  );
}

// ---------------------------------------------------------------- the command line's msdiff runs

/** The msdiff model a config describes: `model.haar_levels` levels, one SongUNet of the config's settings per scale. */
export function buildMsdiffModel(config: TrainingConfig): MsdiffModel {
  const m = config.model;
  const { height } = fullSize(config);
  return msdiffModel({
    imgResolution: height,
    imgChannels: m.img_channels,
    schedule: { levels: m.haar_levels ?? 2 },
    networks: songUNetSettings(config),
  });
}

/**
 * `model.kind: "msdiff"` for the run loop: step s trains scale s mod n (the rotation of Sec. 3.2) with
 * the run's optimizer (non-finite gradients replaced, clipping, Adam with EDM's lr ramp-up) and EMA,
 * each scale with its own optimizer state and image count (`imagesSeen` holds one per scale), so a
 * run checkpoints and resumes as the patch model's does. Samples by `msdiffSample`.
 */
export function msdiffMethod(config: TrainingConfig): TrainingMethod<MsdiffParams> {
  const model = buildMsdiffModel(config);
  const n = model.components;
  const t = config.train;
  const { height, width } = fullSize(config);
  const stepFunction = (state: TrainState<MsdiffParams>, batch: { readonly images: Tensor }, k: number) => {
    const [kNext, kLoss] = random.split(state.key, 2) as [Tensor, Tensor];
    const replace = <T>(xs: readonly T[], x: T): T[] => xs.map((y, i) => (i === k ? x : y));
    const seen = reshape(slice(state.imagesSeen, [k], [k + 1]), []);
    const b = batch.images.shape[0]!;
    const net = { params: state.params.scales[k]!, ema: state.ema.scales[k]!, opt: (state.opt as PyTree<Tensor>[])[k]!, imagesSeen: seen };
    const scaleLoss = (p: SongUNetParams) => msdiffLoss(model, { scales: replace(state.params.scales, p) }, batch.images, k, kLoss);
    const optimizer = trainOptimizer(config, seen) as GradientTransformation<never>;
    const { loss, next } = networkStep(scaleLoss, net, b, { optimizer, emaHalflifeImages: t.ema_halflife_images, emaRampupRatio: t.ema_rampup_ratio });
    const opt = replace(state.opt as PyTree<Tensor>[], next.opt);
    const oneHotK = tensor(Array.from({ length: n }, (_, i) => (i === k ? b : 0)), [n]);
    return {
      state: {
        params: { scales: replace(state.params.scales, next.params) },
        ema: { scales: replace(state.ema.scales, next.ema) },
        opt,
        imagesSeen: add(state.imagesSeen, oneHotK),
        key: kNext,
      },
      metrics: {
        loss,
        // Each scale's running count of replaced gradient entries, added up.
        replaced: opt.map((o) => (o as [{ replaced: Tensor }])[0].replaced).reduce((a, x) => add(a, x)),
        nonFinite: countNonFinite([next.params, next.ema, next.opt]),
      },
    };
  };
  return {
    description: `multi-scale non-uniform diffusion (${n} scales, ${height} to ${height / 2 ** (n - 1)} px)`,
    sampler: 'msdiff-euler-maruyama',
    defaultSampleSteps: 20 * n,
    initState() {
      const [kParams, kRun] = random.split(random.key(t.seed), 2) as [Tensor, Tensor];
      const params = model.init(kParams);
      return {
        params,
        ema: params,
        opt: params.scales.map((p) => trainOptimizer(config, scalar(0)).init(p)),
        imagesSeen: zeros([n]),
        key: kRun,
      };
    },
    compileStep(backend) {
      const step = jit(stepFunction, { donate: [0], backend, name: 'msdiffTrainStep' });
      return (state, batch) => step(state, { images: batch.images }, batch.step % n);
    },
    sample: (params, count, steps, key, backend) =>
      msdiffSample(model.scoreFunction(params), { schedule: model.config.schedule, shape: [count, config.model.img_channels, height, width], key, numSteps: steps, backend }),
    carryOptimizerState: (opt, from, to) => (opt as PyTree<Tensor>[]).map((o) => carryOptimizerState(o, from, to)),
  };
}
