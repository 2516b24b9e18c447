/**
 * Layers as pure `(init, apply)` pairs over plain pytrees, following EDM's `training/networks.py`
 * (Karras et al. 2022): the same initialisation rules, normalisation, attention and resampling, so
 * that parameters converted from the reference implementation give the same function.
 *
 * A layer is built from its static configuration (`conv2d({ inChannels: 3, ... })`); `init(key)`
 * returns its parameters as a record of tensors, and `apply(params, x, ...)` builds the graph of
 * its output. Nothing here computes: initial parameters are lazy random graphs too, so building a
 * 55M-parameter network costs no memory until its values are read.
 */
import {
  add, broadcastTo, concat, conv2d as conv2dOp, conv2dGradInput, cos, div, matmul, mean, mul, rsqrt, square, sub, sum,
  isTensor, ones, permute, reshape, scaledDotProductAttention, silu, sin, slice, tensor, transpose, where, zeros,
  random, stopGradient, ShapeError, TesseraError, fmtShape, type Tensor,
} from '../core/index.ts';
import { customVjp } from '../autodiff/index.ts';

// ---------------------------------------------------------------- initialisation

/** EDM's `weight_init` modes: Glorot (Xavier) or He (Kaiming) scaling, uniform or normal draws. */
export type InitMode = 'xavier_uniform' | 'xavier_normal' | 'kaiming_uniform' | 'kaiming_normal';

/** EDM's `init_mode`, `init_weight` and `init_bias`: the draw, then a factor for weights and one for biases. */
export interface InitOptions {
  readonly mode?: InitMode;
  readonly weight?: number;
  readonly bias?: number;
}

/**
 * EDM's `weight_init(shape, mode, fan_in, fan_out)`:
 * xavier_uniform sqrt(6/(fi+fo)) U(-1,1), xavier_normal sqrt(2/(fi+fo)) N(0,1),
 * kaiming_uniform sqrt(3/fi) U(-1,1), kaiming_normal sqrt(1/fi) N(0,1).
 * @example
 * const w = weightInit(random.key(0), [64, 32], 'kaiming_uniform', 32, 64);   // U(-sqrt(3/32), sqrt(3/32))
 */
export function weightInit(key: Tensor, shape: readonly number[], mode: InitMode, fanIn: number, fanOut: number): Tensor {
  switch (mode) {
    case 'xavier_uniform':
      return mul(random.uniform(key, shape, -1, 1), Math.sqrt(6 / (fanIn + fanOut)));
    case 'xavier_normal':
      return mul(random.normal(key, shape), Math.sqrt(2 / (fanIn + fanOut)));
    case 'kaiming_uniform':
      return mul(random.uniform(key, shape, -1, 1), Math.sqrt(3 / fanIn));
    case 'kaiming_normal':
      return mul(random.normal(key, shape), Math.sqrt(1 / fanIn));
    default:
      return mode satisfies never;
  }
}

/** `weight_init(...) * factor`; a zero factor gives zeros without drawing (EDM's biases all start at 0). */
function scaledInit(key: Tensor, shape: readonly number[], init: InitOptions, factor: number, fanIn: number, fanOut: number): Tensor {
  if (factor === 0) return zeros(shape);
  const w = weightInit(key, shape, init.mode ?? 'kaiming_normal', fanIn, fanOut);
  return factor === 1 ? w : mul(w, factor);
}

/**
 * Number of scalars in a parameter tree (shapes only: nothing is evaluated).
 * @example
 * parameterCount(linear({ inFeatures: 3, outFeatures: 2 }).init(random.key(0)));   // 8: weight [2, 3] and bias [2]
 */
export function parameterCount(params: unknown): number {
  if (isTensor(params)) return params.size;
  if (params !== null && typeof params === 'object') return Object.values(params).reduce((n: number, p) => n + parameterCount(p), 0);
  return 0;
}

// ---------------------------------------------------------------- linear

/** The parameters of `linear`: `weight` [out, in] and an optional `bias` [out] (EDM's names). */
export type LinearParams = { readonly weight: Tensor; readonly bias?: Tensor };

/** The static configuration of `linear`, e.g. `{ inFeatures: 64, outFeatures: 256 }`. */
export interface LinearConfig {
  readonly inFeatures: number;
  readonly outFeatures: number;
  readonly bias?: boolean;
  readonly init?: InitOptions;
}

/**
 * EDM's `Linear`: y = x W^T + b with W [out, in]; fan_in = in, fan_out = out.
 * @example
 * const layer = linear({ inFeatures: 3, outFeatures: 16 });
 * const params = layer.init(random.key(0));           // { weight: [16, 3], bias: [16] }
 * const y = layer.apply(params, random.normal(random.key(1), [8, 3]));   // [8, 16]
 */
export function linear(config: LinearConfig) {
  const { inFeatures, outFeatures } = config;
  const init = config.init ?? {};
  return {
    config,
    init(key: Tensor): LinearParams {
      const [kw, kb] = random.split(key, 2) as [Tensor, Tensor];
      const weight = scaledInit(kw, [outFeatures, inFeatures], init, init.weight ?? 1, inFeatures, outFeatures);
      if (config.bias === false) return { weight };
      return { weight, bias: scaledInit(kb, [outFeatures], init, init.bias ?? 0, inFeatures, outFeatures) };
    },
    apply(params: LinearParams, x: Tensor): Tensor {
      const y = matmul(x, transpose(params.weight));
      return params.bias === undefined ? y : add(y, params.bias);
    },
  };
}

// ---------------------------------------------------------------- convolution with resampling

/**
 * The parameters of `conv2d`: `weight` [out, in / groups, k, k] (absent for a kernel-less resample) and `bias`.
 */
export type Conv2dParams = { readonly weight?: Tensor; readonly bias?: Tensor };

/** The static configuration of `conv2d`: channels, kernel, resampling and init (EDM's `Conv2d` arguments). */
export interface Conv2dConfig {
  readonly inChannels: number;
  readonly outChannels: number;
  /** Square kernel size; 0 means no weight (a pure up/downsampling layer, as EDM's `kernel=0`). */
  readonly kernel: number;
  readonly bias?: boolean;
  readonly up?: boolean;
  readonly down?: boolean;
  /** 1-D taps of the separable resampling filter: [1,1] (box, DDPM++) or [1,3,3,1] (NCSN++). */
  readonly resampleFilter?: readonly number[];
  /** Fuse the resampling into the convolution's padding (EDM's `fused_resample`). */
  readonly fusedResample?: boolean;
  readonly init?: InitOptions;
}

/**
 * The 2-D resampling filter f f^T / (sum f)^2 as [1, 1, k, k], EDM's `resample_filter` buffer.
 * @example
 * resampleFilter2d([1, 1]);                           // [1, 1, 2, 2], every entry 0.25
 */
export function resampleFilter2d(taps: readonly number[]): Tensor {
  const s = taps.reduce((a, b) => a + b, 0);
  const k = taps.length;
  return tensor(taps.flatMap((a) => taps.map((b) => (a * b) / (s * s))), [1, 1, k, k]);
}

/** The filter applied to each of `channels` channels alone: depthwise weight [C, 1, k, k]. */
function depthwise(f: Tensor, channels: number, gain = 1): Tensor {
  const k = f.shape[3]!;
  return broadcastTo(gain === 1 ? f : mul(f, gain), [channels, 1, k, k]);
}

/** Depthwise transposed convolution with stride 2: upsampling by 2 when `pad` = (k - 1) // 2. */
function upsampleWith(x: Tensor, f: Tensor, pad: number): Tensor {
  const [n, c, h, w] = x.shape as [number, number, number, number];
  const k = f.shape[3]!;
  // PyTorch's conv_transpose2d output size: (H - 1) * stride - 2 * padding + k.
  const oh = (h - 1) * 2 - 2 * pad + k;
  const ow = (w - 1) * 2 - 2 * pad + k;
  return conv2dGradInput(x, depthwise(f, c, 4), [n, c, oh, ow], { stride: 2, padding: pad, groups: c });
}

function downsampleWith(x: Tensor, f: Tensor, pad: number): Tensor {
  const c = x.shape[1]!;
  return conv2dOp(x, depthwise(f, c), { stride: 2, padding: pad, groups: c });
}

/**
 * EDM's `Conv2d`: an optional upsampling (transposed depthwise filter, stride 2) or downsampling
 * (depthwise filter, stride 2) followed by a `kernel` x `kernel` convolution with "same" padding.
 * With `fusedResample`, downsampling comes after the convolution, which is padded by
 * w_pad + f_pad instead. Weights are [out, in, k, k] with fan_in = in k^2, fan_out = out k^2.
 * @example
 * const down = conv2d({ inChannels: 3, outChannels: 16, kernel: 3, down: true });
 * const params = down.init(random.key(0));            // { weight: [16, 3, 3, 3], bias: [16] }
 * const y = down.apply(params, random.normal(random.key(1), [2, 3, 32, 32]));   // [2, 16, 16, 16]
 */
export function conv2d(config: Conv2dConfig) {
  const { inChannels, outChannels, kernel } = config;
  const up = config.up ?? false;
  const down = config.down ?? false;
  if (up && down) throw new TesseraError('conv2d layer: up and down are exclusive');
  const init = config.init ?? {};
  const f = up || down ? resampleFilter2d(config.resampleFilter ?? [1, 1]) : undefined;
  const wPad = Math.floor(kernel / 2);
  const fPad = f === undefined ? 0 : Math.floor((f.shape[3]! - 1) / 2);
  const fused = (config.fusedResample ?? false) && kernel > 0;
  // EDM's fused upsampling pads the transposed convolution by w_pad + f_pad and then convolves
  // without padding, which yields 2H - 4 w_pad, not 2H: only 1x1 kernels upsample correctly so.
  if (fused && up && kernel > 1) {
    throw new TesseraError(`conv2d layer: fused upsampling with a ${kernel}x${kernel} kernel does not double the size (EDM's padding gives 2H - ${4 * wPad}); use fusedResample: false`);
  }
  return {
    config,
    init(key: Tensor): Conv2dParams {
      if (kernel === 0) return {};
      const [kw, kb] = random.split(key, 2) as [Tensor, Tensor];
      const fanIn = inChannels * kernel * kernel;
      const fanOut = outChannels * kernel * kernel;
      const weight = scaledInit(kw, [outChannels, inChannels, kernel, kernel], init, init.weight ?? 1, fanIn, fanOut);
      if (config.bias === false) return { weight };
      return { weight, bias: scaledInit(kb, [outChannels], init, init.bias ?? 0, fanIn, fanOut) };
    },
    apply(params: Conv2dParams, xIn: Tensor): Tensor {
      let x = xIn;
      const w = params.weight;
      if (kernel > 0 && w === undefined) throw new TesseraError(`conv2d layer: params have no weight for a ${kernel}x${kernel} convolution`);
      if (x.rank !== 4 || x.shape[1] !== inChannels) {
        throw new ShapeError(`conv2d layer: expects [N,${inChannels},H,W], got ${fmtShape(x.shape)}`);
      }
      if (fused && up && w !== undefined) {
        x = conv2dOp(upsampleWith(x, f!, wPad + fPad), w);
      } else if (fused && down && w !== undefined) {
        x = downsampleWith(conv2dOp(x, w, { padding: wPad + fPad }), f!, 0);
      } else {
        if (up) x = upsampleWith(x, f!, fPad);
        if (down) x = downsampleWith(x, f!, fPad);
        if (w !== undefined) x = conv2dOp(x, w, { padding: wPad });
      }
      return params.bias === undefined ? x : add(x, reshape(params.bias, [1, outChannels, 1, 1]));
    },
  };
}

// ---------------------------------------------------------------- normalisation, activation, dropout

/** The parameters of `groupNorm`: per-channel `weight` and `bias`. */
export type GroupNormParams = { readonly weight: Tensor; readonly bias: Tensor };

/** The static configuration of `groupNorm` (EDM's `GroupNorm` arguments). */
export interface GroupNormConfig {
  readonly numChannels: number;
  readonly numGroups?: number;
  readonly minChannelsPerGroup?: number;
  readonly eps?: number;
}

/**
 * EDM's `GroupNorm`: min(32, C // 4) groups, eps 1e-5, affine initialised to (1, 0).
 * @example
 * const norm = groupNorm({ numChannels: 64 });        // 16 groups: min(32, 64 / 4)
 * const y = norm.apply(norm.init(), random.normal(random.key(0), [2, 64, 8, 8]));
 */
export function groupNorm(config: GroupNormConfig) {
  const c = config.numChannels;
  const groups = Math.min(config.numGroups ?? 32, Math.floor(c / (config.minChannelsPerGroup ?? 4)));
  const eps = config.eps ?? 1e-5;
  const normalize = normAffine('groupNorm', c, groupLayout(groups), eps);
  return {
    config,
    groups,
    init(_key?: Tensor): GroupNormParams {
      return { weight: ones([c]), bias: zeros([c]) };
    },
    apply(params: GroupNormParams, x: Tensor): Tensor {
      if (x.rank < 2 || x.shape[1] !== c) throw new ShapeError(`groupNorm: the layer normalises [N, ${c}, ...], got ${fmtShape(x.shape)}`);
      return normalize(x, params.weight, params.bias);
    },
  };
}

/**
 * Where a normalisation with a per-channel affine works, for an input of some shape: its statistics
 * over `axes` of the input seen as `grouped`, the affine's weight and bias seen as `perChannel`, and
 * the axes the affine's gradients sum over.
 */
export interface NormLayout {
  readonly grouped: readonly number[];
  readonly axes: readonly number[];
  readonly perChannel: readonly number[];
  readonly channelAxes: readonly number[];
}

/** The statistics and affine output (the same ops as core's `groupNorm` and `layerNorm`). */
function normForward(layout: NormLayout, eps: number, x: Tensor, w: Tensor, b: Tensor) {
  const xg = reshape(x, layout.grouped);
  const mu = mean(xg, layout.axes, true);
  const centred = sub(xg, mu);
  const rstd = rsqrt(add(mean(square(centred), layout.axes, true), eps));
  const y = add(mul(reshape(mul(centred, rstd), x.shape), reshape(w, layout.perChannel)), reshape(b, layout.perChannel));
  return { y, residuals: { x, w, mu, rstd, layout } };
}

/**
 * A normalisation with an affine (group norm, layer norm) over `channels` channels, its weight and
 * bias checked (errors name `op`), differentiated by its closed form (what torch's native kernels
 * compute): with x^ = (x - mu) rstd over each group and g = dy w,
 *   dx = rstd (g - mean(g) - x^ mean(g x^)),   dw = sum over the non-channel axes of dy x^,   db = the same of dy.
 * The two group means read the same tensors and have one shape, so the kernel layer takes them in one
 * pass, and the weight's and bias's sums in another. Autodiff's rule for the forward ops chains them
 * instead (the mean of the centred input's cotangent needs the variance path's sum first), with a
 * full-size tensor written and read back in between.
 * @example
 * // Instance norm over [N, C, H, W] (statistics per sample and channel), differentiated the same way.
 * const instanceNorm = normAffine('instanceNorm', 8, (s) => ({ grouped: s, axes: [2, 3], perChannel: [1, s[1]!, 1, 1], channelAxes: [0, 2, 3] }), 1e-5);
 * const y = instanceNorm(random.normal(random.key(0), [2, 8, 4, 4]), ones([8]), zeros([8]));
 */
export function normAffine(op: string, channels: number, layoutOf: (shape: readonly number[]) => NormLayout, eps: number): (x: Tensor, w: Tensor, b: Tensor) => Tensor {
  const normalize = customVjp(
    (x: Tensor, w: Tensor, b: Tensor) => normForward(layoutOf(x.shape), eps, x, w, b).y,
    (x: Tensor, w: Tensor, b: Tensor) => {
      const { y, residuals } = normForward(layoutOf(x.shape), eps, x, w, b);
      return [y, residuals] as const;
    },
    (r: ReturnType<typeof normForward>['residuals'], dy: Tensor) => {
      const { grouped, axes, perChannel, channelAxes } = r.layout;
      const xhat = mul(sub(reshape(r.x, grouped), r.mu), r.rstd);
      const g = reshape(mul(dy, reshape(r.w, perChannel)), grouped);
      const dx = mul(sub(sub(g, mean(g, axes, true)), mul(xhat, mean(mul(g, xhat), axes, true))), r.rstd);
      return [reshape(dx, r.x.shape), sum(mul(dy, reshape(xhat, r.x.shape)), channelAxes), sum(dy, channelAxes)];
    },
  );
  return (x, w, b) => {
    for (const [name, p] of [['weight', w], ['bias', b]] as const) {
      if (p.rank !== 1 || p.size !== channels) throw new ShapeError(`${op}: ${name} must be [${channels}], got ${fmtShape(p.shape)}`);
    }
    return normalize(x, w, b);
  };
}

/** Group norm's layout over [N, C, ...]: `groups` groups of channels. */
function groupLayout(groups: number) {
  return (shape: readonly number[]): NormLayout => {
    const [n, c, ...spatial] = shape as [number, number, ...number[]];
    const grouped = [n, groups, c / groups, ...spatial];
    return {
      grouped, axes: grouped.map((_, i) => i).slice(2), perChannel: [1, c, ...spatial.map(() => 1)], channelAxes: shape.map((_, i) => i).filter((i) => i !== 1),
    };
  };
}

/** SiLU, x sigmoid(x) (EDM imports torch's `silu`). */
export { silu };

/** Whether a layer runs in training mode, and the key its randomness (dropout) draws from. */
export interface ApplyOptions {
  readonly train?: boolean;
  readonly key?: Tensor;
}

/**
 * Inverted dropout: in training each entry is zeroed with probability `rate` and the rest scaled by
 * 1 / (1 - rate), as torch's `dropout`; the identity when not training or the rate is 0. The mask
 * is a pure function of the key.
 * @example
 * const h = dropout(x, 0.1, { train: true, key: random.key(step) });   // the identity when train is false
 */
export function dropout(x: Tensor, rate: number, options: ApplyOptions = {}): Tensor {
  if (!(rate >= 0 && rate < 1)) throw new TesseraError(`dropout: rate must be in [0, 1), got ${rate}`);
  if (!options.train || rate === 0) return x;
  if (options.key === undefined) throw new TesseraError('dropout: training with a non-zero rate needs a key (options.key)');
  const keep = random.bernoulli(options.key, 1 - rate, x.shape);
  return where(keep, div(x, 1 - rate), 0);
}

// ---------------------------------------------------------------- self-attention

/** The parameters of `selfAttention`: its norm, the qkv and the output 1x1 convolutions. */
export type AttentionParams = { readonly norm2: GroupNormParams; readonly qkv: Conv2dParams; readonly proj: Conv2dParams };

/** The static configuration of `selfAttention`: channels and heads. */
export interface AttentionConfig {
  readonly channels: number;
  readonly numHeads: number;
  readonly eps?: number;
  /** Init of the qkv projection (EDM's `init_attn`). */
  readonly init?: InitOptions;
  /** Init of the output projection (EDM's `init_zero`). */
  readonly initZero?: InitOptions;
}

/**
 * Multi-head self-attention over the pixels of a feature map, as in EDM's UNetBlock: a group norm,
 * a 1x1 conv to 3C channels laid out [heads, C/heads, (q,k,v)] per pixel, softmax(q^T k / sqrt(C/heads))
 * over key pixels, and a 1x1 output projection. Returns the projection (the block adds the residual).
 * The parameter names (`norm2`, `qkv`, `proj`) are the block's, as in EDM's state_dict.
 * @example
 * const attn = selfAttention({ channels: 64, numHeads: 4 });
 * const x = random.normal(random.key(1), [2, 64, 16, 16]);
 * const y = add(x, attn.apply(attn.init(random.key(0)), x));   // the block adds the residual
 */
export function selfAttention(config: AttentionConfig) {
  const { channels, numHeads } = config;
  if (numHeads < 1 || channels % numHeads !== 0) throw new ShapeError(`selfAttention: ${channels} channels do not split into ${numHeads} heads`);
  const norm = groupNorm({ numChannels: channels, eps: config.eps ?? 1e-5 });
  const qkv = conv2d({ inChannels: channels, outChannels: channels * 3, kernel: 1, init: config.init });
  const proj = conv2d({ inChannels: channels, outChannels: channels, kernel: 1, init: config.initZero ?? { weight: 0 } });
  return {
    config,
    init(key: Tensor): AttentionParams {
      const [k1, k2] = random.split(key, 2) as [Tensor, Tensor];
      return { norm2: norm.init(), qkv: qkv.init(k1), proj: proj.init(k2) };
    },
    apply(params: AttentionParams, x: Tensor): Tensor {
      const [n, c, h, w] = x.shape as [number, number, number, number];
      const d = c / numHeads;
      const l = h * w;
      const t = reshape(qkv.apply(params.qkv, norm.apply(params.norm2, x)), [n * numHeads, d, 3, l]);
      // [n*heads, d, L] -> [n*heads, L, d] for attention over the L pixels.
      const part = (j: number) => permute(reshape(slice(t, [0, 0, j, 0], [n * numHeads, d, j + 1, l]), [n * numHeads, d, l]), [0, 2, 1]);
      const a = scaledDotProductAttention(part(0), part(1), part(2), { scale: 1 / Math.sqrt(d) });
      return proj.apply(params.proj, reshape(permute(a, [0, 2, 1]), [n, c, h, w]));
    },
  };
}

// ---------------------------------------------------------------- noise-level embeddings

/** The static configuration of `positionalEmbedding` (DDPM++'s noise embedding). */
export interface PositionalEmbeddingConfig {
  readonly numChannels: number;
  readonly maxPositions?: number;
  readonly endpoint?: boolean;
}

/**
 * EDM's `PositionalEmbedding` (the transformer's sinusoidal embedding, Vaswani et al. 2017):
 * freqs_j = (1 / max_positions)^(j / (C/2 - endpoint)), j < C/2; output [cos(x freqs), sin(x freqs)].
 * No parameters.
 * @example
 * const emb = positionalEmbedding({ numChannels: 128, endpoint: true });
 * const e = emb.apply({}, tensor([0.1, 2.5]));        // [2, 128]: cosines, then sines
 */
export function positionalEmbedding(config: PositionalEmbeddingConfig) {
  const half = Math.floor(config.numChannels / 2);
  const denom = half - (config.endpoint ? 1 : 0);
  const maxPositions = config.maxPositions ?? 10000;
  const freqs = tensor(Array.from({ length: half }, (_, j) => (1 / maxPositions) ** (j / denom)), [1, half]);
  return {
    config,
    init(_key?: Tensor): Record<string, never> {
      return {};
    },
    apply(_params: unknown, x: Tensor): Tensor {
      const arg = mul(reshape(x, [x.size, 1]), freqs);
      return concat([cos(arg), sin(arg)], 1);
    },
  };
}

/** The parameters of `fourierEmbedding`: its random frequencies (held fixed by `stopGradient`). */
export type FourierEmbeddingParams = { readonly freqs: Tensor };

/** The static configuration of `fourierEmbedding` (NCSN++'s noise embedding). */
export interface FourierEmbeddingConfig {
  readonly numChannels: number;
  readonly scale?: number;
}

/**
 * EDM's `FourierEmbedding` (random Fourier features, Tancik et al. 2020; NCSN++): fixed
 * freqs ~ N(0, scale^2) (scale 16), output [cos(2 pi x freqs), sin(2 pi x freqs)]. EDM keeps `freqs`
 * as a buffer, not a trained parameter: it stays in the params (so EDM's state_dict name
 * `map_noise.freqs` loads) behind `stopGradient`, so its gradient is zero and an optimizer started
 * from zero moments never moves it.
 * @example
 * const emb = fourierEmbedding({ numChannels: 128 });
 * const e = emb.apply(emb.init(random.key(0)), tensor([0.1, 2.5]));   // [2, 128]
 */
export function fourierEmbedding(config: FourierEmbeddingConfig) {
  const half = Math.floor(config.numChannels / 2);
  return {
    config,
    init(key: Tensor): FourierEmbeddingParams {
      return { freqs: mul(random.normal(key, [half]), config.scale ?? 16) };
    },
    apply(params: FourierEmbeddingParams, x: Tensor): Tensor {
      const arg = mul(reshape(x, [x.size, 1]), reshape(mul(stopGradient(params.freqs), 2 * Math.PI), [1, half]));
      return concat([cos(arg), sin(arg)], 1);
    },
  };
}
