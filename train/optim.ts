/**
 * Optimizers shaped like optax: a transformation is a pair of pure functions over pytrees,
 * `init(params) -> state` and `update(grads, state, params) -> [updates, state]`, composed with
 * `chain`. Every quantity that changes per step (counts, moments) lives in the state as tensors,
 * so one jitted program runs every step.
 *
 * @module tessera/optim
 */
import {
  add, cast, cos, div, isFinite, isFloat, less, logicalNot, maximum, minimum, mul, pow, scalar, sqrt, sub, sum, treeLeaves, treeMap, where, zerosLike,
  type PyTree, type Tensor,
} from '../core/index.ts';

/** Parameters (and gradients, updates): any pytree of tensors. */
export type Params = PyTree<Tensor>;

/**
 * An optax-style optimizer or gradient transformation: `init(params)` makes its state (a pytree of tensors),
 * `update(grads, state, params)` returns the updates to add to the params and the next state.
 * Compose them with `chain`; apply updates with `applyUpdates`.
 *
 * ```ts
 * const opt = chain(clipByGlobalNorm(1), adam({ lr: 1e-3 }));
 * let state = opt.init(params);
 * const step = jit((p: Params, s: typeof state, x: Tensor) => {
 *   const [updates, next] = opt.update(grad(loss)(p, x), s, p);
 *   return [applyUpdates(p, updates), next] as const;
 * });
 * ```
 */
export interface GradientTransformation<S extends PyTree<Tensor> = PyTree<Tensor>> {
  init(params: Params): S;
  update(grads: Params, state: S, params: Params): [Params, S];
}

/** A learning rate: a constant or a function of the (float32 scalar) count of updates done. */
export type Schedule = number | ((count: Tensor) => Tensor);

const map = (f: (...xs: Tensor[]) => Tensor, ...trees: Params[]): Params => treeMap(f, trees[0]!, ...trees.slice(1));

/**
 * Applies several transformations in order; the state is a tuple of their states.
 * @example
 * ```ts
 * const opt = chain(replaceNonFinite(), clipByGlobalNorm(1), adam({ lr: 2e-4, weightDecay: 0.01 }));
 * ```
 */
export function chain(...ts: GradientTransformation[]): GradientTransformation<PyTree<Tensor>[]> {
  return {
    init: (params) => ts.map((t) => t.init(params)),
    update: (grads, state, params) => {
      let g = grads;
      const next = ts.map((t, i) => {
        const [u, s] = t.update(g, state[i]!, params);
        g = u;
        return s;
      });
      return [g, next];
    },
  };
}

/**
 * Options of `adam`: the learning rate (a number or a `Schedule`), betas, epsilon and decoupled weight decay.
 */
export interface AdamOptions {
  readonly lr: Schedule;
  readonly b1?: number;
  readonly b2?: number;
  readonly eps?: number;
  /** Decoupled weight decay (AdamW, Loshchilov & Hutter); 0 gives Adam. */
  readonly weightDecay?: number;
}

type AdamState = { count: Tensor; mu: Params; nu: Params };

/**
 * Adam (Kingma & Ba, Algorithm 1) with bias correction, as torch.optim.Adam which EDM uses
 * (betas 0.9/0.999, eps 1e-8 added to the corrected second moment's root). Updates are the negated
 * steps, to be added to the params.
 * @example
 * const opt = adam({ lr: 2e-4, weightDecay: 0.01 });  // AdamW
 * let state = opt.init(params);
 * const [updates, next] = opt.update(grads, state, params);
 * params = applyUpdates(params, updates);
 */
export function adam(o: AdamOptions): GradientTransformation<AdamState> {
  const b1 = o.b1 ?? 0.9;
  const b2 = o.b2 ?? 0.999;
  const eps = o.eps ?? 1e-8;
  const wd = o.weightDecay ?? 0;
  return {
    init: (params) => ({ count: scalar(0), mu: map(zerosLike, params), nu: map(zerosLike, params) }),
    update: (grads, state, params) => {
      const count = add(state.count, 1);
      const mu = map((m, g) => add(mul(m, b1), mul(g, 1 - b1)), state.mu, grads);
      const nu = map((v, g) => add(mul(v, b2), mul(mul(g, g), 1 - b2)), state.nu, grads);
      const lr = typeof o.lr === 'number' ? scalar(o.lr) : o.lr(state.count);
      const c1 = sub(1, pow(scalar(b1), count));
      const c2 = sub(1, pow(scalar(b2), count));
      const updates = map(
        (m, v, p) => {
          const step = div(div(m, c1), add(sqrt(div(v, c2)), eps));
          return mul(add(step, wd === 0 ? 0 : mul(p, wd)), mul(lr, -1));
        },
        mu, nu, params,
      );
      return [updates, { count, mu, nu }];
    },
  };
}

/**
 * EDM's learning-rate ramp-up: lr * min(images_seen / rampup_images, 1). Images, not steps, because
 * Patch Diffusion's batch size changes with the patch size. Build the optimizer inside the traced
 * step with `lr: () => edmLearningRate(...)` to feed it the step's count of images.
 * @example
 * const opt = adam({ lr: () => edmLearningRate(1e-3, 10_000_000, imagesSeen) });   // built inside the traced step
 */
export function edmLearningRate(lr: number, rampupImages: number, imagesSeen: Tensor): Tensor {
  return rampupImages > 0 ? mul(minimum(div(imagesSeen, rampupImages), 1), lr) : scalar(lr);
}

/**
 * Linear warm-up then cosine decay (MaskDM's fine-tuning: e.g. lr 1e-5, 5k warm-up steps), a
 * `Schedule` of the optimizer's step count c (steps done before this one): lr (c + 1) / warmup
 * while c < warmup, then minLr + (lr - minLr) (1 + cos(pi min(1, (c - warmup) / (total - warmup)))) / 2.
 * @example
 * ```ts
 * const opt = adam({ lr: warmupCosine({ lr: 1e-5, warmupSteps: 5000, totalSteps: 50_000 }) });
 * ```
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

/**
 * Scales gradients so that their global L2 norm is at most `maxNorm`.
 * @example
 * const opt = chain(clipByGlobalNorm(1), adam({ lr: 1e-3 }));
 */
export function clipByGlobalNorm(maxNorm: number): GradientTransformation<Record<string, never>> {
  return {
    init: () => ({}),
    update: (grads, state) => {
      const norm = sqrt(treeLeaves(grads).reduce<Tensor>((acc, g) => add(acc, sum(mul(g, g))), scalar(0)));
      const factor = minimum(div(maxNorm, add(norm, 1e-6)), 1);
      return [map((g) => mul(g, factor), grads), state];
    },
  };
}

/**
 * EDM replaces non-finite gradient entries (torch.nan_to_num(nan=0, posinf=1e5, neginf=-1e5)); we
 * replace them by 0 and keep a running count of replaced entries in the state for the log.
 * @example
 * const opt = chain(replaceNonFinite(), adam({ lr: 1e-3 }));
 * const [updates, next] = opt.update(grads, state, params);   // next[0]: { replaced }, the entries replaced so far
 */
export function replaceNonFinite(): GradientTransformation<{ replaced: Tensor }> {
  return {
    init: () => ({ replaced: scalar(0) }),
    update: (grads, state) => {
      // Counted over same-shape gradients together: a few reductions, not one per parameter.
      const bad = countNonFinite([grads]);
      return [map((g) => where(isFinite(g), g, 0), grads), { replaced: add(state.replaced, bad) }];
    },
  };
}

/** Leaves counted by one reduction of `countNonFinite`. */
const COUNT_GROUP = 15;

/**
 * How many entries of the trees' floating-point leaves are NaN or infinite (float32 scalar). Leaves
 * of one shape (a parameter, its EMA and its two Adam moments) are counted elementwise together and
 * reduced once, up to 15 at a time, so the check costs a few dozen reductions rather than one per
 * leaf, and reductions of one shape share their compiled kernel (15 inputs and the output are the
 * 16 storage buffers a WebGPU kernel may bind on lavapipe; one more, and each reduction is split in
 * two). Concatenating leaves of different shapes would take fewer reductions, but each would be a
 * kernel of its own, branching over its inputs: on lavapipe the first step then spent 3-4 s more
 * compiling them.
 * @example
 * const bad = countNonFinite([params, ema, optState]);   // float32 scalar: 0 when every entry is finite
 */
export function countNonFinite(trees: readonly PyTree<Tensor>[]): Tensor {
  const byShape = new Map<string, Tensor[]>();
  for (const x of trees.flatMap((tree) => treeLeaves(tree))) {
    if (!isFloat(x.dtype)) continue;
    const key = `${x.dtype} ${x.shape.join('x')}`;
    byShape.set(key, [...(byShape.get(key) ?? []), x]);
  }
  const bad = (x: Tensor) => cast(logicalNot(isFinite(x)), 'float32');
  const sums: Tensor[] = [];
  for (const group of byShape.values()) {
    for (let i = 0; i < group.length; i += COUNT_GROUP) sums.push(sum(group.slice(i + 1, i + COUNT_GROUP).reduce((acc, x) => add(acc, bad(x)), bad(group[i]!))));
  }
  return sums.reduce((acc, s) => add(acc, s), scalar(0));
}

/**
 * `params + updates`, leaf by leaf: the last step of an optimizer update (see `GradientTransformation`).
 * @example
 * const [updates, next] = opt.update(grads, state, params);
 * const newParams = applyUpdates(params, updates);
 */
export function applyUpdates(params: Params, updates: Params): Params {
  return map((p, u) => add(p, u), params, updates);
}

/**
 * EDM's EMA of the params: half-life in images, ramped up early in training
 * (ema_nimg = min(halflife, seen * rampup_ratio); beta = 0.5^(batch / max(ema_nimg, 1e-8))).
 * @example
 * const ema2 = emaUpdate(ema, params, imagesSeen, 64, 500_000, 0.05);   // half-life 500k images, ramp-up 5%
 */
export function emaUpdate(ema: Params, params: Params, imagesSeen: Tensor, batchImages: number, halflifeImages: number, rampupRatio?: number): Params {
  const halflife = rampupRatio === undefined ? scalar(halflifeImages) : minimum(mul(imagesSeen, rampupRatio), halflifeImages);
  const beta = pow(scalar(0.5), div(batchImages, maximum(halflife, 1e-8)));
  return map((e, p) => add(p, mul(sub(e, p), beta)), ema, params);
}
