/**
 * One training step as one compiled program: EDM's loss on a batch of patches, its gradient, the
 * optimizer update and the EMA (Karras et al. 2022, training/training_loop.py; Patch Diffusion's
 * patch-conditioned variant). `step(state, batch) -> state'` with the old state donated, so training
 * is a fold whose memory stays flat while the API stays immutable.
 */
import {
  add, jit, random, reshape, scalar, tensor, type BackendName, type PyTree, type Tensor,
} from '../core/index.ts';
import { valueAndGrad } from '../autodiff/index.ts';
import { patchCoordinates } from '../models/patch.ts';
import { patchModel, type PatchModelParams } from '../models/precond.ts';
import { totalSteps, type TrainingConfig } from './config.ts';
import { edmLoss } from './loss.ts';
import { unpack, type PackLayout } from './packed.ts';
import { adam, applyUpdates, chain, clipByGlobalNorm, countNonFinite, edmLearningRate, emaUpdate, replaceNonFinite, warmupCosine, type GradientTransformation, type Params } from './optim.ts';

export { countNonFinite } from './optim.ts';

export interface TrainState<P = PatchModelParams> {
  readonly params: P;
  readonly ema: P;
  readonly opt: PyTree<Tensor>;
  /**
   * Samples (patches) shown so far, float32: drives the lr ramp-up and the EMA ramp-up. A scalar,
   * or one count per network where a model has several (MSDiff's scales).
   */
  readonly imagesSeen: Tensor;
  /** The run's PRNG key, split once per step. */
  readonly key: Tensor;
}

/** One step's data: patches with their corners in the full image. */
export interface StepBatch {
  /** [B, C, h, w] in [-1, 1]. */
  readonly images: Tensor;
  /** int32 [B]: each patch's top-left corner in the full image. */
  readonly top: Tensor;
  readonly left: Tensor;
}

export interface StepMetrics {
  readonly loss: Tensor;
  /** Running count of non-finite gradient entries replaced by zero. */
  readonly replaced: Tensor;
  /**
   * Non-finite values in the new state (params, EMA, floating optimizer state), float32 scalar
   * counted inside the compiled step, so a run never checkpoints a state it has not seen finite.
   */
  readonly nonFinite: Tensor;
}

/** The model a config describes; `kind: 'edm'` is the plain EDM baseline (no coordinates). */
export function buildModel(config: TrainingConfig) {
  const m = config.model;
  const [height] = typeof m.img_resolution === 'number' ? [m.img_resolution] : m.img_resolution;
  return patchModel({
    imgResolution: height,
    imgChannels: m.img_channels,
    useCoords: m.kind === 'patch' && m.use_coords,
    sigmaData: config.train.sigma_data,
    labelDim: m.label_dim,
    network: songUNetSettings(config),
  });
}

/** The SongUNet settings of a config's model section (every network of the patch, EDM and MSDiff models). */
export function songUNetSettings(config: TrainingConfig) {
  const m = config.model;
  return {
    modelChannels: m.model_channels, channelMult: m.channel_mult, numBlocks: m.num_blocks, attnResolutions: m.attn_resolutions,
    dropout: m.dropout, channelMultEmb: m.channel_mult_emb, channelMultNoise: m.channel_mult_noise, embeddingType: m.embedding_type,
    encoderType: m.encoder_type, decoderType: m.decoder_type, resampleFilter: m.resample_filter, augmentDim: m.augment_dim,
  };
}

export type Model = ReturnType<typeof buildModel>;

export function fullSize(config: TrainingConfig): { height: number; width: number } {
  const r = config.model.img_resolution;
  return typeof r === 'number' ? { height: r, width: r } : { height: r[0], width: r[1] };
}

/**
 * The run's optimizer: non-finite gradients replaced, optional clipping, Adam with the run's
 * learning-rate schedule: EDM's ramp-up over `imagesSeen`, or (`train.lr_schedule: "cosine"`) a
 * linear warm-up over warmup_images / batch_size steps and a cosine decay to 0 at the run's last
 * step, of Adam's step count (MaskDM's fine-tuning).
 */
export function trainOptimizer(config: TrainingConfig, imagesSeen: Tensor): GradientTransformation<PyTree<Tensor>[]> {
  const t = config.train;
  const lr = t.lr_schedule === 'cosine'
    ? warmupCosine({ lr: t.lr, warmupSteps: Math.ceil((t.warmup_images ?? 0) / t.batch_size), totalSteps: totalSteps(config) })
    : () => edmLearningRate(t.lr, t.lr_rampup_images, imagesSeen);
  return chain(
    replaceNonFinite(),
    ...(t.grad_clip === undefined ? [] : [clipByGlobalNorm(t.grad_clip)]),
    adam({ lr }),
  );
}

/** A fresh state: params from the key, EMA equal to the params, zeroed optimizer state. */
export function initState(model: Model, config: TrainingConfig): TrainState {
  const [kParams, kRun] = random.split(random.key(config.train.seed), 2) as [Tensor, Tensor];
  const params = model.init(kParams);
  return {
    params,
    ema: params,
    opt: trainOptimizer(config, scalar(0)).init(params),
    imagesSeen: scalar(0),
    key: kRun,
  };
}

/**
 * The pure step function (before jit), exposed for tests and for users composing their own. With a
 * `layout` the state is packed (`train/packed.ts`): params, EMA and Adam's moments each one flat
 * tensor, which the model reads through views, so the optimizer, the EMA and the non-finite counts
 * are a few kernels rather than a few per parameter; the values are the same.
 */
export function stepFunction(model: Model, config: TrainingConfig, layout?: PackLayout) {
  const { height, width } = fullSize(config);
  const useCoords = config.model.kind === 'patch' && config.model.use_coords;
  const lossOptions = { pMean: config.train.P_mean, pStd: config.train.P_std, sigmaData: config.train.sigma_data };
  const t = config.train;
  return (state: TrainState, batch: StepBatch): { state: TrainState; metrics: StepMetrics } => {
    const [kNext, kLoss, kDropout] = random.split(state.key, 3) as [Tensor, Tensor, Tensor];
    const [b, , h, w] = batch.images.shape as [number, number, number, number];
    const coords = useCoords ? patchCoordinates({ height, width }, batch.top, batch.left, { h, w }) : undefined;
    const view = (params: PatchModelParams): PatchModelParams => (layout === undefined ? params : unpack(layout, params as unknown as Tensor) as PatchModelParams);
    const lossOf = (params: PatchModelParams): Tensor =>
      edmLoss(
        (x, sigma) => model.apply(view(params), x, reshape(sigma, [b]), { coords, train: true, key: kDropout }),
        batch.images, kLoss, lossOptions,
      );
    const [loss, grads] = valueAndGrad(lossOf)(state.params);
    const opt = trainOptimizer(config, state.imagesSeen);
    const [updates, optState] = opt.update(grads as Params, state.opt as PyTree<Tensor>[], state.params);
    // EDM's frozen buffers (the Fourier frequencies) sit behind stopGradient in the model: zero
    // gradient, zero Adam moments, zero update, so no mask is needed here.
    const params = applyUpdates(state.params, updates) as PatchModelParams;
    // EDM updates the EMA with the count before this batch, then advances it.
    const ema = emaUpdate(state.ema, params, state.imagesSeen, b, t.ema_halflife_images, t.ema_rampup_ratio) as PatchModelParams;
    const replaced = (optState as [{ replaced: Tensor }])[0].replaced;
    return {
      state: { params, ema, opt: optState, imagesSeen: add(state.imagesSeen, b), key: kNext },
      metrics: { loss, replaced, nonFinite: countNonFinite([params, ema, optState as PyTree<Tensor>]) },
    };
  };
}

/**
 * Carries optimizer state across a change of `train.grad_clip` on resume. The optimizer is
 * chain(replaceNonFinite, [clip], adam) and the clip stage holds no state, so adding or removing it
 * only shifts the later stages by one place.
 */
export function carryOptimizerState(opt: PyTree<Tensor>, from: TrainingConfig, to: TrainingConfig): PyTree<Tensor> {
  const hadClip = from.train.grad_clip !== undefined;
  const hasClip = to.train.grad_clip !== undefined;
  if (hadClip === hasClip || !Array.isArray(opt)) return opt;
  const [first, ...rest] = opt as PyTree<Tensor>[];
  return (hasClip ? [first, {}, ...rest] : [first, ...rest.slice(1)]) as PyTree<Tensor>;
}

/**
 * The compiled step; the old state is donated to the new one. Only the batch's tensors reach jit:
 * a batch record that also carries numbers (the training loop's step and data position) would
 * otherwise make them static, and every new value would trace the step again.
 */
export function compileStep(model: Model, config: TrainingConfig, backend?: BackendName, layout?: PackLayout) {
  const step = jit(stepFunction(model, config, layout), { donate: [0], backend, name: 'trainStep' });
  return (state: TrainState, batch: StepBatch) => step(state, { images: batch.images, top: batch.top, left: batch.left });
}

/** Host patches to a step batch. */
export function stepBatch(patches: Float32Array, shape: readonly [number, number, number, number], top: Int32Array, left: Int32Array): StepBatch {
  return { images: tensor(patches, shape), top: tensor(top, [shape[0]], 'int32'), left: tensor(left, [shape[0]], 'int32') };
}

