/**
 * EDM's training loss (Karras et al. 2022, Sec. 5 and Table 1; `EDMLoss` in the reference code), as
 * Patch Diffusion uses it on patches: ln(sigma) ~ N(P_mean, P_std^2) per sample,
 * weight lambda(sigma) = (sigma^2 + sd^2) / (sigma * sd)^2, loss = lambda * ||D(y + n; sigma) - y||^2
 * summed over the patch's pixels and averaged over the samples.
 *
 * @module tessera/losses
 */
import { add, div, exp, mul, random, sub, sum, type Tensor } from '../core/index.ts';

/** EDM's training-noise distribution, ln(sigma) ~ N(pMean, pStd^2), and the data's standard deviation. */
export interface EdmLossOptions {
  readonly pMean: number;
  readonly pStd: number;
  readonly sigmaData: number;
}

/** EDM's values: pMean -1.2, pStd 1.2, sigmaData 0.5. */
export const EDM_LOSS_DEFAULTS: EdmLossOptions = { pMean: -1.2, pStd: 1.2, sigmaData: 0.5 };

/**
 * EDM's loss of a denoiser on a clean batch `y` [B, C, h, w]. `denoise(x, sigma)` gets the noisy
 * batch and sigma [B, 1, 1, 1]; `key` draws the noise levels and the noise.
 * @example
 * ```ts
 * const D = (p: PatchModelParams) => (x: Tensor, sigma: Tensor) => model.apply(p, x, reshape(sigma, [-1]));
 * const gradient = grad((p: PatchModelParams, y: Tensor, k: Tensor) => edmLoss(D(p), y, k))(params, images, key);
 * ```
 */
export function edmLoss(denoise: (x: Tensor, sigma: Tensor) => Tensor, y: Tensor, key: Tensor, o: EdmLossOptions = EDM_LOSS_DEFAULTS): Tensor {
  const b = y.shape[0]!;
  const [kSigma, kNoise] = random.split(key, 2) as [Tensor, Tensor];
  const sigma = exp(add(mul(random.normal(kSigma, [b, 1, 1, 1]), o.pStd), o.pMean));
  const sd2 = o.sigmaData * o.sigmaData;
  const weight = div(add(mul(sigma, sigma), sd2), mul(mul(sigma, sigma), sd2));
  const noisy = add(y, mul(random.normal(kNoise, y.shape), sigma));
  const err = sub(denoise(noisy, sigma), y);
  return div(sum(mul(weight, mul(err, err))), b);
}
