/**
 * EDM preconditioning (Karras et al. 2022, Table 1 and eq. 7) around a SongUNet, with Patch
 * Diffusion's coordinate channels (Wang et al. 2023; `Patch_EDMPrecond` in the reference code):
 *
 *   D(x; sigma) = c_skip(sigma) x + c_out(sigma) F([c_in(sigma) x, coords]; c_noise(sigma))
 *
 * The coordinates are appended unscaled. `useCoords: false` gives the plain EDM model
 * (`EDMPrecond`) with the same network otherwise.
 */
import { add, broadcastTo, concat, log, mul, reshape, rsqrt, shapesEqual, square, TesseraError, ShapeError, fmtShape, type Tensor } from '../core/index.ts';
import { batchCoordinates, fullCoordinates } from './patch.ts';
import { songUNet, type SongUNetConfig, type SongUNetParams } from './songunet.ts';

/**
 * The denoiser interface every sampler is written against (EDM's D(x; sigma)): the expected clean
 * image given a noisy `x` [N, ...] at noise level `sigma` ([N], one per sample, or a scalar []).
 * A denoiser builds a graph and never computes; it must be pure (same inputs, same graph).
 */
export type Denoiser = (x: Tensor, sigma: Tensor, extra?: DenoiserExtra) => Tensor;

/** Conditioning and mode passed through a denoiser to the network. */
export interface DenoiserExtra {
  /** Patch coordinates [2, h, w] or [N, 2, h, w] (see patch.ts); default: the full grid of x's size. */
  readonly coords?: Tensor;
  /** One-hot class labels [N, labelDim]; absent or zero rows mean unconditional. */
  readonly labels?: Tensor;
  /** EDM's augmentation labels [N, augmentDim]. */
  readonly augmentLabels?: Tensor;
  /** Training mode (dropout, label dropout); needs `key`. */
  readonly train?: boolean;
  readonly key?: Tensor;
}

/** The coefficients of EDM's preconditioning at `sigma` (any shape). */
export interface PreconditionCoefficients {
  readonly cSkip: Tensor;
  readonly cOut: Tensor;
  readonly cIn: Tensor;
  readonly cNoise: Tensor;
}

/**
 * EDM Table 1 (eq. 7): c_skip = sd^2 / (s^2 + sd^2), c_out = s sd / sqrt(s^2 + sd^2),
 * c_in = 1 / sqrt(s^2 + sd^2), c_noise = ln(s) / 4, with sd = sigma_data.
 * @example
 * const { cSkip, cOut, cIn, cNoise } = edmPrecondition(reshape(sigma, [-1, 1, 1, 1]));   // sigma [N], x [N, C, H, W]
 * const denoised = add(mul(cSkip, x), mul(cOut, F(mul(cIn, x), reshape(cNoise, [-1]))));   // EDM eq. 7
 */
export function edmPrecondition(sigma: Tensor, sigmaData = 0.5): PreconditionCoefficients {
  const sd2 = sigmaData * sigmaData;
  const r = rsqrt(add(square(sigma), sd2)); // 1 / sqrt(s^2 + sd^2)
  return {
    cSkip: mul(square(r), sd2),
    cOut: mul(mul(sigma, r), sigmaData),
    cIn: r,
    cNoise: mul(log(sigma), 0.25),
  };
}

/**
 * The configuration of `patchModel`: image size, the SongUNet's options, EDM's sigma_data, and whether
 * to append the coordinate channels (see the README's "Models, denoisers and samplers").
 */
export interface PatchModelConfig {
  /** Full image side (or height; the network's level names use it). */
  readonly imgResolution: number;
  readonly imgChannels: number;
  /** Append the [x, y] coordinate channels (Patch Diffusion); false is the EDM baseline. Default true. */
  readonly useCoords?: boolean;
  /** Expected standard deviation of the data (0.5). */
  readonly sigmaData?: number;
  readonly labelDim?: number;
  /** The SongUNet's architecture (channels, levels, dropout, ...); default EDM's SongUNet defaults. */
  readonly network?: Omit<SongUNetConfig, 'imgResolution' | 'inChannels' | 'outChannels' | 'labelDim'>;
}

/** Parameters of the preconditioned model; `model` holds the network, as in EDM's `EDMPrecond` state_dict (`model.enc...`). */
export type PatchModelParams = { readonly model: SongUNetParams };

/**
 * The patch-conditioned score model with EDM preconditioning, as an `(init, apply)` pair.
 * @example
 * const model = patchModel({ imgResolution: 32, imgChannels: 3, network: { modelChannels: 16, channelMult: [1, 2], numBlocks: 1 } });
 * const params = model.init(random.key(0));
 * const D = makeDenoiser(params, model);              // see README, section 'Models, denoisers and samplers'
 */
export function patchModel(config: PatchModelConfig) {
  const useCoords = config.useCoords ?? true;
  const sigmaData = config.sigmaData ?? 0.5;
  const network = songUNet({
    ...config.network,
    imgResolution: config.imgResolution,
    inChannels: config.imgChannels + (useCoords ? 2 : 0),
    outChannels: config.imgChannels,
    labelDim: config.labelDim ?? 0,
  });
  return {
    config,
    network,
    init(key: Tensor): PatchModelParams {
      return { model: network.init(key) };
    },
    /** D(x; sigma) for x [N, imgChannels, h, w] and sigma [N] or []. */
    apply(params: PatchModelParams, x: Tensor, sigma: Tensor, extra: DenoiserExtra = {}): Tensor {
      if (x.rank !== 4 || x.shape[1] !== config.imgChannels) throw new ShapeError(`patchModel: expects x [N,${config.imgChannels},h,w], got ${fmtShape(x.shape)}`);
      const [n, , h, w] = x.shape as [number, number, number, number];
      const s = sigmaPerSample(sigma, n);
      const { cSkip, cOut, cIn, cNoise } = edmPrecondition(reshape(s, [n, 1, 1, 1]), sigmaData);
      let input = mul(cIn, x);
      if (useCoords) {
        const coords = batchCoordinates(extra.coords ?? fullCoordinates({ height: h, width: w }), n);
        if (coords.shape[2] !== h || coords.shape[3] !== w) throw new ShapeError(`patchModel: coords ${fmtShape(coords.shape)} do not match x ${fmtShape(x.shape)}`);
        input = concat([input, coords], 1);
      }
      const f = network.apply(params.model, input, reshape(cNoise, [n]), {
        classLabels: extra.labels, augmentLabels: extra.augmentLabels, train: extra.train, key: extra.key,
      });
      return add(mul(cSkip, x), mul(cOut, f));
    },
  };
}

/**
 * A `Denoiser` from parameters and a model config (or a model built by `patchModel`); its output is checked like `checkedDenoiser`'s.
 * @example
 * const D = makeDenoiser(model.init(random.key(0)), model);   // model from patchModel
 * const images = await heunSampler(D, { key: random.key(1), shape: [4, 3, 32, 32] });
 */
export function makeDenoiser(params: PatchModelParams, model: PatchModelConfig | ReturnType<typeof patchModel>): Denoiser {
  const m = 'apply' in model ? model : patchModel(model);
  return (x, sigma, extra) => checkDenoised(m.apply(params, x, sigma, extra), x, sigma, 'makeDenoiser');
}

/**
 * `out` if it has x's shape and dtype, as D(x, sigma) must; otherwise a ShapeError from `who` that
 * names both and says how sigma usually causes it: sigma is per sample ([N]), and combining it with
 * x [N, ...] without reshaping it to [N, 1, ...] broadcasts to a wrong, often huge, shape.
 * @example
 * const D: Denoiser = (x, sigma) => checkDenoised(myNet(x, sigma), x, sigma, 'myNet');
 */
export function checkDenoised(out: Tensor, x: Tensor, sigma: Tensor, who: string): Tensor {
  const sameShape = shapesEqual(out.shape, x.shape);
  if (sameShape && out.dtype === x.dtype) return out;
  const n = x.shape[0] ?? 1;
  const perSample = `[${[n, ...x.shape.slice(1).map(() => 1)].join(', ')}]`;
  throw new ShapeError(
    `${who}: the denoiser returned ${out.dtype} ${fmtShape(out.shape)} for x ${x.dtype} ${fmtShape(x.shape)}; D(x, sigma) must return x's shape and dtype. `
    + `sigma ${fmtShape(sigma.shape)} is per sample (one noise level for each of the ${n} samples): reshape it to [B, 1, ...], here ${perSample}, `
    + `before combining it with x (reshape(sigma, ${perSample})), or it broadcasts against x's other axes.`,
  );
}

/**
 * `denoiser` with every output checked by `checkDenoised` (for samplers, built in or a user's own).
 * @example
 * const D = checkedDenoiser(myDenoiser, 'mySampler');  // a wrong output shape throws, naming mySampler and sigma's usual mistake
 */
export function checkedDenoiser(denoiser: Denoiser, who: string): Denoiser {
  return (x, sigma, extra) => checkDenoised(denoiser(x, sigma, extra), x, sigma, who);
}

/**
 * sigma as [n]: a scalar, [1] or [n].
 * @example
 * sigmaPerSample(tensor(0.5), 4);                     // [0.5, 0.5, 0.5, 0.5]
 */
export function sigmaPerSample(sigma: Tensor, n: number): Tensor {
  if (sigma.size === n && sigma.rank <= 1) return reshape(sigma, [n]);
  if (sigma.size === 1) return broadcastTo(reshape(sigma, [1]), [n]);
  throw new TesseraError(`denoiser: sigma ${fmtShape(sigma.shape)} is neither a scalar nor one value per sample (${n})`);
}
