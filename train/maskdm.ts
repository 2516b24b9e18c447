/**
 * MaskDM's masked score matching (Lei et al. 2023, "Masked Diffusion Models are Fast Distribution
 * Learners", Sec. 3.2) on a U-ViT, and its training step as one compiled program.
 *
 * Per sample: t uniform over DDPM's T steps, noise added to the FULL image (DDPM eq. 4), a mask drawn
 * on the patch grid (models/masks.ts); the network embeds every patch with its position, drops the
 * masked tokens, and predicts the noise of the visible patches. The loss is the epsilon-prediction
 * MSE over the visible pixels only (DDPM's L_simple restricted to them): masked pixels contribute
 * nothing, to the value or to the gradient. Without a mask it is DDPM's L_simple, so fine-tuning
 * (MaskDM's second stage, mask ratio 0) is the same step with `mask` absent.
 *
 * `maskdmMethod` puts it behind the run loop's `TrainingMethod` for `model.kind: "maskdm"` configs
 * (`tessera train | sample | eval`); fine-tuning's non-strict start from pre-trained weights is
 * `train.init_from` (initFrom.ts), open to every kind of model.
 */
import { add, cast, div, jit, mul, random, scalar, square, sub, sum, TesseraError, type BackendName, type PyTree, type Tensor } from '../core/index.ts';
import { valueAndGrad } from '../autodiff/index.ts';
import { alphaBarAt, ddimSample, diffuse, linearSchedule, type DdpmSchedule } from '../models/ddpm.ts';
import { drawVisible, maskedCount, visibleCount, visiblePixelMask, type MaskConfig } from '../models/masks.ts';
import { uvit, uvitEps, type UViT, type UViTParams } from '../models/uvit.ts';
import type { TrainingConfig } from './config.ts';
import type { TrainingMethod } from './method.ts';
import { adam, applyUpdates, chain, clipByGlobalNorm, emaUpdate, replaceNonFinite, type GradientTransformation, type Params, type Schedule } from './optim.ts';
import { packedCarry, unpack, type PackLayout } from './packed.ts';
import { carryOptimizerState, countNonFinite, fullSize, trainOptimizer } from './step.ts';

export interface MaskdmLossOptions {
  /** DDPM's schedule (default: linear betas 1e-4 .. 0.02 over 1000 steps). */
  readonly schedule?: DdpmSchedule;
  /** The mask; absent: every patch visible (DDPM's loss, MaskDM's fine-tuning). */
  readonly mask?: MaskConfig;
}

/** One step's random draws for a batch of `batch` images of `shape`. */
export interface MaskdmDraws {
  /** int32 [B]: DDPM time steps, uniform over 0..T-1. */
  readonly t: Tensor;
  /** Standard normal noise of the images' shape. */
  readonly noise: Tensor;
  /** int32 [B, nVisible]: visible patches (absent without a mask). */
  readonly visible?: Tensor;
}

/** The loss's draws from its key (exposed so that tests and users can see which patches a key masks). */
export function maskdmDraws(model: UViT, shape: readonly number[], key: Tensor, options: MaskdmLossOptions = {}): MaskdmDraws {
  const schedule = options.schedule ?? linearSchedule();
  const b = shape[0]!;
  const [kt, kn, km] = random.split(key, 3) as [Tensor, Tensor, Tensor];
  const draws = { t: random.randint(kt, [b], 0, schedule.numSteps), noise: random.normal(kn, shape) };
  return options.mask === undefined ? draws : { ...draws, visible: drawVisible(km, options.mask, b, model.side) };
}

/**
 * Masked score matching: with x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps,
 * sum over visible pixels of (eps_theta(x_t, t) - eps)^2, divided by the number of visible pixels
 * (B nVisible p^2 C, the same for every key: the mask's count is fixed). `labels`: one-hot [B, classes].
 */
export function maskedLoss(model: UViT, params: UViTParams, images: Tensor, key: Tensor, options: MaskdmLossOptions = {}, labels?: Tensor): Tensor {
  const schedule = options.schedule ?? linearSchedule();
  const { t, noise, visible } = maskdmDraws(model, images.shape, key, options);
  const xt = diffuse(images, alphaBarAt(schedule, t), noise);
  const err = square(sub(model.apply(params, xt, cast(t, 'float32'), { visible, labels }), noise));
  if (visible === undefined) return div(sum(err), err.size);
  const { patchSize: p, inChannels: c } = model.config;
  const pixels = visible.size * p * p * c;
  return div(sum(mul(err, visiblePixelMask(visible, model.side, p))), pixels);
}

export interface MaskdmTrainOptions extends MaskdmLossOptions {
  /** Adam's learning rate: a number (MaskDM pre-trains at 2e-4) or a schedule of the step count (optim.ts `warmupCosine`). */
  readonly lr?: Schedule;
  /** Adam's betas (0.9, 0.999) and decoupled weight decay (0); MaskDM's reference config uses (0.99, 0.99) and 0.03. */
  readonly b1?: number;
  readonly b2?: number;
  readonly weightDecay?: number;
  readonly gradClip?: number;
  /**
   * The step's optimizer instead of the above, built inside the traced step from the images seen
   * before it (the command line's runs use step.ts's `trainOptimizer`, the same as every model kind's).
   */
  readonly optimizer?: (imagesSeen: Tensor) => GradientTransformation<PyTree<Tensor>[]>;
  /** EMA half-life in images and EDM's ramp-up ratio (as the other training steps). */
  readonly emaHalflifeImages: number;
  readonly emaRampupRatio?: number;
  readonly backend?: BackendName;
}

/** The state of a MaskDM run: the same fields as the other training states, so runs, checkpoints and resume treat it alike. */
export interface MaskdmTrainState {
  readonly params: UViTParams;
  readonly ema: UViTParams;
  readonly opt: PyTree<Tensor>;
  /** Images shown so far (float32 scalar): drives the EMA ramp-up. */
  readonly imagesSeen: Tensor;
  /** The run's key, split once per step: the step's time steps, noise and masks are drawn inside the program. */
  readonly key: Tensor;
}

export interface MaskdmBatch {
  /** [B, C, H, W] in [-1, 1]. */
  readonly images: Tensor;
  /** One-hot [B, classes] for a class-conditional U-ViT. */
  readonly labels?: Tensor;
}

export interface MaskdmMetrics {
  readonly loss: Tensor;
  /** Running count of non-finite gradient entries replaced by zero. */
  readonly replaced: Tensor;
  /** Non-finite values in the new params, EMA and optimizer state (step.ts `countNonFinite`). */
  readonly nonFinite: Tensor;
}

function optimizer(o: MaskdmTrainOptions, imagesSeen: Tensor): GradientTransformation<PyTree<Tensor>[]> {
  if (o.optimizer !== undefined) return o.optimizer(imagesSeen);
  if (o.lr === undefined) throw new TesseraError('maskdm: give a learning rate (lr) or an optimizer');
  return chain(
    replaceNonFinite(),
    ...(o.gradClip === undefined ? [] : [clipByGlobalNorm(o.gradClip)]),
    adam({ lr: o.lr, b1: o.b1, b2: o.b2, weightDecay: o.weightDecay }),
  );
}

/**
 * A fresh state from `key`, or, given `params` (a pre-trained network: fine-tuning), those params
 * with a fresh optimizer state and EMA. Masked and unmasked runs share every parameter, so a
 * pre-trained checkpoint loads into fine-tuning as it is.
 */
export function initMaskdmState(model: UViT, key: Tensor, options: MaskdmTrainOptions, params?: UViTParams): MaskdmTrainState {
  const [kParams, kRun] = random.split(key, 2) as [Tensor, Tensor];
  const p = params ?? model.init(kParams);
  return { params: p, ema: p, opt: optimizer(options, scalar(0)).init(p as Params), imagesSeen: scalar(0), key: kRun };
}

/**
 * The pure step (before jit): loss, gradient, Adam, EMA; the key advances by one split. With a
 * `layout`, the state is packed (`train/packed.ts`, as `stepFunction`'s).
 */
export function maskdmStepFunction(model: UViT, options: MaskdmTrainOptions, layout?: PackLayout) {
  return (state: MaskdmTrainState, batch: MaskdmBatch): { state: MaskdmTrainState; metrics: MaskdmMetrics } => {
    const opt = optimizer(options, state.imagesSeen);
    const [kNext, kLoss] = random.split(state.key, 2) as [Tensor, Tensor];
    const b = batch.images.shape[0]!;
    const view = (p: UViTParams): UViTParams => (layout === undefined ? p : unpack(layout, p as unknown as Tensor) as UViTParams);
    const [loss, grads] = valueAndGrad((p: UViTParams) => maskedLoss(model, view(p), batch.images, kLoss, options, batch.labels))(state.params);
    const [updates, optState] = opt.update(grads as Params, state.opt as PyTree<Tensor>[], state.params as Params);
    const params = applyUpdates(state.params as Params, updates) as UViTParams;
    const ema = emaUpdate(state.ema as Params, params as Params, state.imagesSeen, b, options.emaHalflifeImages, options.emaRampupRatio) as UViTParams;
    const replaced = (optState as [{ replaced: Tensor }])[0].replaced;
    return {
      state: { params, ema, opt: optState as PyTree<Tensor>, imagesSeen: add(state.imagesSeen, b), key: kNext },
      metrics: { loss, replaced, nonFinite: countNonFinite([params, ema, optState as PyTree<Tensor>]) },
    };
  };
}

/** The compiled step, the old state donated: `step(state, batch) -> { state, metrics }`. */
export function compileMaskdmStep(model: UViT, options: MaskdmTrainOptions, layout?: PackLayout) {
  return jit(maskdmStepFunction(model, options, layout), { donate: [0], backend: options.backend, name: 'maskdmTrainStep' });
}

// ---------------------------------------------------------------- the command line's maskdm runs

/** The U-ViT a config describes (`model.uvit`, filled with its defaults when the config was resolved). */
export function buildUvit(config: TrainingConfig): UViT {
  const u = config.model.uvit;
  if (config.model.kind !== 'maskdm' || u === undefined) throw new TesseraError(`buildUvit: a resolved model.kind "maskdm" config is needed, got ${JSON.stringify(config.model.kind)}`);
  return uvit({
    imgSize: fullSize(config).height, patchSize: u.patch_size, inChannels: config.model.img_channels, embedDim: u.embed_dim, depth: u.depth,
    numHeads: u.num_heads, mlpRatio: u.mlp_ratio, qkvBias: u.qkv_bias, mlpTimeEmbed: u.mlp_time_embed, finalConv: u.final_conv,
  });
}

/**
 * `train.mask` as models/masks.ts takes it; undefined without a mask, or when it masks nothing
 * (ratio 0, MaskDM's fine-tuning): the step is then the plain network's, without a gather.
 */
export function maskOf(config: TrainingConfig, side: number): MaskConfig | undefined {
  const m = config.train.mask;
  if (m === undefined) return undefined;
  const mask: MaskConfig = m.kind === 'patch' ? { kind: 'patch', ratio: m.ratio ?? 0 }
    : m.kind === 'block' ? { kind: 'block', ratio: m.ratio ?? 0, blockSize: m.block_size ?? 4 }
      : { kind: 'crop', cropSize: m.crop_size ?? side };
  return maskedCount(mask, side) === 0 ? undefined : mask;
}

/** The step's options a config describes: its mask, the run's optimizer and EMA, DDPM's linear schedule. */
export function maskdmTrainOptions(config: TrainingConfig, model: UViT): MaskdmTrainOptions & { readonly schedule: DdpmSchedule } {
  const t = config.train;
  return {
    schedule: linearSchedule(), mask: maskOf(config, model.side), emaHalflifeImages: t.ema_halflife_images, emaRampupRatio: t.ema_rampup_ratio,
    optimizer: (seen) => trainOptimizer(config, seen),
  };
}

/**
 * `model.kind: "maskdm"` for the run loop (Lei et al. 2023): masked score matching on the config's
 * U-ViT with the run's optimizer (non-finite gradients replaced, clipping, Adam with EDM's ramp-up
 * or the cosine schedule) and EMA. Pre-training sets `train.mask`; fine-tuning is a new run without
 * one (or ratio 0) that starts from the pre-trained weights (`train.init_from`, loaded by run.ts).
 * Samples with DDIM (eta 0, x0 clipped to [-1, 1] as MaskDM's reference does) over DDPM's linear
 * schedule; MaskDM samples with 250-500 DDIM steps, the default here is 100.
 */
export function maskdmMethod(config: TrainingConfig): TrainingMethod<UViTParams> {
  const model = buildUvit(config);
  const t = config.train;
  const options = maskdmTrainOptions(config, model);
  const { mask, schedule } = options;
  const { height, width } = fullSize(config);
  const p = model.config.patchSize;
  const m = t.mask;
  const visible = mask === undefined || m === undefined ? 'no mask'
    : `${m.kind === 'crop' ? `${m.crop_size}x${m.crop_size}-patch crops` : `${m.kind} masks at ratio ${m.ratio}`}, ${visibleCount(mask, model.side)} of ${model.numPatches} patches visible`;
  return {
    description: `MaskDM's U-ViT (${model.numPatches} patches of ${p}x${p} px, ${visible})`,
    sampler: 'ddim',
    defaultSampleSteps: 100,
    initState: () => initMaskdmState(model, random.key(t.seed), options),
    compileStep(backend) {
      const step = compileMaskdmStep(model, { ...options, backend });
      return (state, batch) => step(state, { images: batch.images });
    },
    carry: packedCarry(() => initMaskdmState(model, random.key(t.seed), options), (layout, backend) => {
      const step = compileMaskdmStep(model, { ...options, backend }, layout);
      return (state, batch) => step(state as never, { images: batch.images }) as never;
    }),
    sample: (params, count, steps, key, backend) =>
      ddimSample(uvitEps(model, params), { schedule, steps, key, shape: [count, config.model.img_channels, height, width], clipDenoised: true, backend }),
    carryOptimizerState,
  };
}
