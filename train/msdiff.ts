/**
 * Training multi-scale non-uniform diffusion (Batzolis et al. 2022, Sec. 3.2): batches rotate over
 * the scales; scale k's step draws t uniformly on its interval, diffuses the live components
 * (j >= k) of the batch's Haar decomposition, and trains only scale k's network, with its own Adam
 * state and EMA, on continuous-time denoising score matching with likelihood weighting summed over
 * the live components. The state is one pytree (every scale's params, EMA and optimizer state), so
 * checkpoints hold it as they hold the patch model's.
 */
import { add, div, jit, mul, random, scalar, sub, sum, type BackendName, type PyTree, type Tensor } from '../core/index.ts';
import { valueAndGrad } from '../autodiff/index.ts';
import { haarDecompose } from '../models/haar.ts';
import { componentList, diffuseComponents, likelihoodWeight, msdiffModel, scaleInterval, type MsdiffParams } from '../models/msdiff.ts';
import type { SongUNetParams } from '../models/songunet.ts';
import { adam, applyUpdates, emaUpdate, type Params } from './optim.ts';

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
  const params = model.init(key);
  const opt = adam({ lr: options.lr });
  return {
    params,
    ema: params,
    opt: params.scales.map((p) => opt.init(p as Params)),
    imagesSeen: params.scales.map(() => scalar(0)),
  };
}

/**
 * `step(state, images, k, key)`: one Adam step of scale k's network (its EMA and count too), one
 * compiled program per scale and batch shape, with the old state donated. Scale k's network only
 * ever sees its own interval, so the other scales' parameters pass through unchanged.
 */
export function msdiffTrainStep(model: MsdiffModel, options: MsdiffTrainOptions) {
  const opt = adam({ lr: options.lr });
  return jit(
    (state: MsdiffTrainState, images: Tensor, k: number, key: Tensor) => {
      const replace = <T>(xs: readonly T[], x: T): T[] => xs.map((y, i) => (i === k ? x : y));
      const scaleLoss = (p: SongUNetParams) => msdiffLoss(model, { scales: replace(state.params.scales, p) }, images, k, key);
      const [loss, grads] = valueAndGrad(scaleLoss)(state.params.scales[k]!);
      const [updates, optK] = opt.update(grads as Params, state.opt[k]! as never, state.params.scales[k]! as Params);
      const paramsK = applyUpdates(state.params.scales[k]! as Params, updates) as SongUNetParams;
      const b = images.shape[0]!;
      const emaK = emaUpdate(state.ema.scales[k]! as Params, paramsK as Params, state.imagesSeen[k]!, b, options.emaHalflifeImages, options.emaRampupRatio) as SongUNetParams;
      return {
        state: {
          params: { scales: replace(state.params.scales, paramsK) },
          ema: { scales: replace(state.ema.scales, emaK) },
          opt: replace(state.opt, optK as PyTree<Tensor>),
          imagesSeen: replace(state.imagesSeen, add(state.imagesSeen[k]!, b)),
        },
        loss,
      };
    },
    { name: 'msdiffTrainStep', donate: [0], backend: options.backend },
  );
}
