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
 */
import { add, cast, cos, div, jit, less, minimum, mul, random, scalar, square, sub, sum, where, type BackendName, type PyTree, type Tensor } from '../core/index.ts';
import { valueAndGrad } from '../autodiff/index.ts';
import { alphaBarAt, diffuse, linearSchedule, type DdpmSchedule } from '../models/ddpm.ts';
import { drawVisible, visiblePixelMask, type MaskConfig } from '../models/masks.ts';
import type { UViT, UViTParams } from '../models/uvit.ts';
import { adam, applyUpdates, chain, clipByGlobalNorm, emaUpdate, replaceNonFinite, type GradientTransformation, type Params, type Schedule } from './optim.ts';

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

/**
 * Linear warm-up then cosine decay (MaskDM's fine-tuning: e.g. lr 1e-5, 5k warm-up steps), of the
 * optimizer's step count c (steps done before this one): lr (c + 1) / warmup while c < warmup, then
 * minLr + (lr - minLr) (1 + cos(pi min(1, (c - warmup) / (total - warmup)))) / 2.
 */
export function warmupCosine(o: { readonly lr: number; readonly warmupSteps: number; readonly totalSteps: number; readonly minLr?: number }): (count: Tensor) => Tensor {
  const minLr = o.minLr ?? 0;
  const decaySteps = Math.max(o.totalSteps - o.warmupSteps, 1);
  return (count) => {
    const warm = mul(div(add(count, 1), Math.max(o.warmupSteps, 1)), o.lr);
    const progress = minimum(div(sub(count, o.warmupSteps), decaySteps), 1);
    const decay = add(mul(add(cos(mul(progress, Math.PI)), 1), (o.lr - minLr) / 2), minLr);
    return where(less(count, o.warmupSteps), warm, decay);
  };
}

export interface MaskdmTrainOptions extends MaskdmLossOptions {
  /** Adam's learning rate: a number (MaskDM pre-trains at 2e-4) or a schedule of the step count (`warmupCosine`). */
  readonly lr: Schedule;
  /** Adam's betas (0.9, 0.999) and decoupled weight decay (0); MaskDM's reference config uses (0.99, 0.99) and 0.03. */
  readonly b1?: number;
  readonly b2?: number;
  readonly weightDecay?: number;
  readonly gradClip?: number;
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
}

function optimizer(o: MaskdmTrainOptions): GradientTransformation<PyTree<Tensor>[]> {
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
  return { params: p, ema: p, opt: optimizer(options).init(p as Params), imagesSeen: scalar(0), key: kRun };
}

/** The pure step (before jit): loss, gradient, Adam, EMA; the key advances by one split. */
export function maskdmStepFunction(model: UViT, options: MaskdmTrainOptions) {
  const opt = optimizer(options);
  return (state: MaskdmTrainState, batch: MaskdmBatch): { state: MaskdmTrainState; metrics: MaskdmMetrics } => {
    const [kNext, kLoss] = random.split(state.key, 2) as [Tensor, Tensor];
    const b = batch.images.shape[0]!;
    const [loss, grads] = valueAndGrad((p: UViTParams) => maskedLoss(model, p, batch.images, kLoss, options, batch.labels))(state.params);
    const [updates, optState] = opt.update(grads as Params, state.opt as PyTree<Tensor>[], state.params as Params);
    const params = applyUpdates(state.params as Params, updates) as UViTParams;
    const ema = emaUpdate(state.ema as Params, params as Params, state.imagesSeen, b, options.emaHalflifeImages, options.emaRampupRatio) as UViTParams;
    const replaced = (optState as [{ replaced: Tensor }])[0].replaced;
    return {
      state: { params, ema, opt: optState as PyTree<Tensor>, imagesSeen: add(state.imagesSeen, b), key: kNext },
      metrics: { loss, replaced },
    };
  };
}

/** The compiled step, the old state donated: `step(state, batch) -> { state, metrics }`. */
export function compileMaskdmStep(model: UViT, options: MaskdmTrainOptions) {
  return jit(maskdmStepFunction(model, options), { donate: [0], backend: options.backend, name: 'maskdmTrainStep' });
}
