/**
 * Transformer layers over token sequences [B, L, D] as `(init, apply)` pairs, after the Vision
 * Transformer (Dosovitskiy et al. 2021) as U-ViT (Bao et al. 2023, "All are Worth Words") builds it
 * from timm: patch embedding, learned positional embedding, layer norm, multi-head self-attention,
 * the MLP, and the pre-norm block with U-ViT's optional long-skip projection. Parameter names are
 * those of the reference modules (`proj`, `norm1`, `attn.qkv`, `mlp.fc1`, `skip_linear`, ...), and
 * initialisation follows U-ViT's `_init_weights`.
 *
 * Also here: `takeTokens` and `placeTokens`, the per-sample selections that drop masked tokens and
 * put predictions back on the patch grid (MaskDM, Lei et al. 2023).
 */
import {
  abs, add, cast, concat, conv2d as conv2dOp, equal, exp, gather, iota, matmul, mul,
  oneHot, ones, permute, reciprocal, reshape, scaledDotProductAttention, sign, slice, sub, sum, transpose, where, zeros,
  random, ShapeError, DTypeError, fmtShape, type Tensor,
} from '../core/index.ts';
import { customVjp } from '../autodiff/custom.ts';
import { linear, normAffine, weightInit, type LinearParams } from './nn.ts';

// ---------------------------------------------------------------- initialisation

/**
 * U-ViT's `_init_weights` for `nn.Linear`: weight ~ trunc_normal(std 0.02), bias 0. timm's
 * `trunc_normal_` truncates at +-2 in absolute terms, i.e. at 100 standard deviations, so this is a
 * plain normal. Written as EDM's kaiming_normal (sqrt(1/fan_in) N(0,1)) times 0.02 sqrt(fan_in).
 */
export function vitLinear(inFeatures: number, outFeatures: number, bias = true) {
  return linear({ inFeatures, outFeatures, bias, init: { mode: 'kaiming_normal', weight: 0.02 * Math.sqrt(inFeatures), bias: 0 } });
}

/**
 * PyTorch's default init of `nn.Conv2d` (kaiming_uniform with a = sqrt(5)): weight and bias
 * ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)), i.e. EDM's kaiming_uniform (sqrt(3/fan_in) U(-1,1)) times sqrt(1/3).
 */
export function torchConvInit(key: Tensor, outChannels: number, inChannels: number, kernel: number): { weight: Tensor; bias: Tensor } {
  const [kw, kb] = random.split(key, 2) as [Tensor, Tensor];
  const fanIn = inChannels * kernel * kernel;
  const bound = 1 / Math.sqrt(fanIn);
  return {
    weight: mul(weightInit(kw, [outChannels, inChannels, kernel, kernel], 'kaiming_uniform', fanIn, outChannels * kernel * kernel), Math.sqrt(1 / 3)),
    bias: random.uniform(kb, [outChannels], -bound, bound),
  };
}

// ---------------------------------------------------------------- patches

export type PatchEmbedParams = { readonly proj: { readonly weight: Tensor; readonly bias: Tensor } };

export interface PatchEmbedConfig {
  readonly patchSize: number;
  readonly inChannels: number;
  readonly embedDim: number;
}

/**
 * timm's `PatchEmbed`: a convolution with kernel = stride = patch size, flattened to one token per
 * patch in row-major order of the patch grid: [B, C, H, W] -> [B, (H/p)(W/p), D].
 */
export function patchEmbed(config: PatchEmbedConfig) {
  const { patchSize: p, inChannels, embedDim } = config;
  return {
    config,
    init(key: Tensor): PatchEmbedParams {
      return { proj: torchConvInit(key, embedDim, inChannels, p) };
    },
    apply(params: PatchEmbedParams, x: Tensor): Tensor {
      if (x.rank !== 4 || x.shape[1] !== inChannels || x.shape[2]! % p !== 0 || x.shape[3]! % p !== 0) {
        throw new ShapeError(`patchEmbed: expects [B,${inChannels},H,W] with H and W multiples of ${p}, got ${fmtShape(x.shape)}`);
      }
      const y = add(conv2dOp(x, params.proj.weight, { stride: p }), reshape(params.proj.bias, [1, embedDim, 1, 1]));
      const [b, d, h, w] = y.shape as [number, number, number, number];
      return permute(reshape(y, [b, d, h * w]), [0, 2, 1]);
    },
  };
}

/** U-ViT's `patchify`: [B, C, H, W] -> [B, (H/p)(W/p), p p C], each token's pixels in (p1, p2, C) order. */
export function patchify(x: Tensor, p: number): Tensor {
  if (x.rank !== 4 || x.shape[2]! % p !== 0 || x.shape[3]! % p !== 0) throw new ShapeError(`patchify: expects [B,C,H,W] with H and W multiples of ${p}, got ${fmtShape(x.shape)}`);
  const [b, c, h, w] = x.shape as [number, number, number, number];
  const t = permute(reshape(x, [b, c, h / p, p, w / p, p]), [0, 2, 4, 3, 5, 1]);
  return reshape(t, [b, (h / p) * (w / p), p * p * c]);
}

/** U-ViT's `unpatchify` (the inverse of `patchify`) for a square grid: [B, L, p p C] -> [B, C, sqrt(L) p, sqrt(L) p]. */
export function unpatchify(tokens: Tensor, channels: number): Tensor {
  const [b, l, f] = tokens.shape as [number, number, number];
  const side = Math.round(Math.sqrt(l));
  const p = Math.round(Math.sqrt(f / channels));
  if (tokens.rank !== 3 || side * side !== l || p * p * channels !== f) {
    throw new ShapeError(`unpatchify: expects [B, L, p*p*${channels}] with L a square, got ${fmtShape(tokens.shape)}`);
  }
  const t = permute(reshape(tokens, [b, side, side, p, p, channels]), [0, 5, 1, 3, 2, 4]);
  return reshape(t, [b, channels, side * p, side * p]);
}

/** A learned positional embedding [1, length, dim] added to the tokens; U-ViT's `pos_embed`, trunc_normal(std 0.02). */
export function learnedPositionalEmbedding(config: { readonly length: number; readonly dim: number }) {
  return {
    config,
    init(key: Tensor): Tensor {
      return mul(random.normal(key, [1, config.length, config.dim]), 0.02);
    },
    apply(posEmbed: Tensor, tokens: Tensor): Tensor {
      return add(tokens, posEmbed);
    },
  };
}

// ---------------------------------------------------------------- per-sample token selection

function takeTokensForward(x: Tensor, indices: Tensor): Tensor {
  const [b, k, d] = x.shape as [number, number, number];
  const m = indices.shape[1]!;
  // Row b*k + i of the flattened tokens is token i of sample b.
  return gather(reshape(x, [b * k, d]), add(indices, mul(iota([b, m], 0), k)), 0);
}

/**
 * Token `indices[b, j]` of sample b for every j: x [B, K, D], int32 indices [B, M] -> [B, M, D].
 * The forward pass is one gather (so dropping masked tokens costs nothing per dropped token); its
 * gradient scatters back per sample with a batched one-hot product, B K M D work instead of the
 * B^2 K M D of the flattened gather's own rule.
 */
export const takeTokens: (x: Tensor, indices: Tensor) => Tensor = customVjp(
  takeTokensForward,
  (x: Tensor, indices: Tensor) => [takeTokensForward(x, indices), { indices, k: x.shape[1]! }] as const,
  (r: { indices: Tensor; k: number }, ct: Tensor) => [matmul(transpose(oneHot(r.indices, r.k, ct.dtype)), ct), null],
);

function checkIndices(op: string, x: Tensor, indices: Tensor): void {
  if (indices.dtype !== 'int32') throw new DTypeError(`${op}: indices must be int32, got ${indices.dtype}`);
  if (x.rank !== 3 || indices.rank !== 2 || indices.shape[0] !== x.shape[0]) {
    throw new ShapeError(`${op}: expects tokens [B, K, D] and indices [B, M], got ${fmtShape(x.shape)} and ${fmtShape(indices.shape)}`);
  }
}

/** `takeTokens` with its arguments checked. */
export function selectTokens(x: Tensor, indices: Tensor): Tensor {
  checkIndices('selectTokens', x, indices);
  return takeTokens(x, indices);
}

/**
 * The inverse placement: tokens [B, M, F] at the distinct grid positions `indices` [B, M] of a grid
 * of `length` -> [B, length, F], zeros where no token was placed. Built as a gather from the tokens
 * with one zero row appended, at each position's place in `indices` (M where it has none).
 */
export function placeTokens(tokens: Tensor, indices: Tensor, length: number): Tensor {
  checkIndices('placeTokens', tokens, indices);
  const [b, m, f] = tokens.shape as [number, number, number];
  const hit = equal(reshape(indices, [b, 1, m]), iota([b, length, m], 1)); // [B, length, M]
  const slot = sum(where(hit, iota([b, length, m], 2), 0), 2);
  const found = sum(cast(hit, 'int32'), 2);
  const source = where(equal(found, 0), m, slot);
  return takeTokens(concat([tokens, zeros([b, 1, f], tokens.dtype)], 1), source);
}

// ---------------------------------------------------------------- layer norm, GELU, MLP

export type LayerNormParams = { readonly weight: Tensor; readonly bias: Tensor };

/**
 * PyTorch's `nn.LayerNorm(dim)` over the last axis: eps 1e-5, affine initialised to (1, 0); its
 * gradient by the closed form (`normAffine`), as torch's.
 */
export function layerNorm(config: { readonly dim: number; readonly eps?: number }) {
  const d = config.dim;
  const normalize = normAffine('layerNorm', d, (shape) => ({
    grouped: shape, axes: [shape.length - 1], perChannel: [d], channelAxes: shape.map((_, i) => i).slice(0, -1),
  }), config.eps ?? 1e-5);
  return {
    config,
    init(_key?: Tensor): LayerNormParams {
      return { weight: ones([d]), bias: zeros([d]) };
    },
    apply(params: LayerNormParams, x: Tensor): Tensor {
      if (x.rank < 1 || x.shape[x.rank - 1] !== d) throw new ShapeError(`layerNorm: the layer normalises [..., ${d}], got ${fmtShape(x.shape)}`);
      return normalize(x, params.weight, params.bias);
    },
  };
}

/**
 * erf by Abramowitz & Stegun 7.1.26: 1 - (a1 t + ... + a5 t^5) exp(-x^2), t = 1 / (1 + p |x|),
 * odd in x; |error| < 1.5e-7, below float32 resolution of GELU's output.
 */
export function erf(x: Tensor): Tensor {
  const a = abs(x);
  const t = reciprocal(add(mul(a, 0.3275911), 1));
  // Horner's rule for t (a1 + t (a2 + t (a3 + t (a4 + t a5)))).
  const [a5, a4, a3, a2, a1] = [1.061405429, -1.453152027, 1.421413741, -0.284496736, 0.254829592];
  const poly = mul(add(mul(add(mul(add(mul(add(mul(t, a5), a4), t), a3), t), a2), t), a1), t);
  return mul(sign(x), sub(1, mul(poly, exp(mul(mul(a, a), -1)))));
}

/** PyTorch's exact `nn.GELU()` (timm's Mlp default): x Phi(x) = x (1 + erf(x / sqrt 2)) / 2. */
export function geluErf(x: Tensor): Tensor {
  return mul(mul(x, 0.5), add(erf(mul(x, Math.SQRT1_2)), 1));
}

export type MlpParams = { readonly fc1: LinearParams; readonly fc2: LinearParams };

/** timm's `Mlp`: fc1, GELU, fc2 (no dropout). */
export function mlp(config: { readonly inFeatures: number; readonly hiddenFeatures: number; readonly outFeatures?: number }) {
  const fc1 = vitLinear(config.inFeatures, config.hiddenFeatures);
  const fc2 = vitLinear(config.hiddenFeatures, config.outFeatures ?? config.inFeatures);
  return {
    config,
    init(key: Tensor): MlpParams {
      const [k1, k2] = random.split(key, 2) as [Tensor, Tensor];
      return { fc1: fc1.init(k1), fc2: fc2.init(k2) };
    },
    apply(params: MlpParams, x: Tensor): Tensor {
      return fc2.apply(params.fc2, geluErf(fc1.apply(params.fc1, x)));
    },
  };
}

// ---------------------------------------------------------------- attention

export type AttentionParams = { readonly qkv: LinearParams; readonly proj: LinearParams };

export interface AttentionConfig {
  readonly dim: number;
  readonly numHeads: number;
  /** A bias on the qkv projection (U-ViT's `qkv_bias`, default false). */
  readonly qkvBias?: boolean;
}

/**
 * U-ViT's `Attention`: qkv = Linear(D, 3D) laid out per token as (q|k|v, head, head dim),
 * softmax(q k^T / sqrt(D/heads)) v per head (Vaswani et al. 2017, eq. 1), heads concatenated and
 * projected by Linear(D, D). [B, N, D] -> [B, N, D].
 */
export function attention(config: AttentionConfig) {
  const { dim, numHeads } = config;
  if (numHeads < 1 || dim % numHeads !== 0) throw new ShapeError(`attention: ${dim} channels do not split into ${numHeads} heads`);
  const qkv = vitLinear(dim, 3 * dim, config.qkvBias ?? false);
  const proj = vitLinear(dim, dim);
  const hd = dim / numHeads;
  return {
    config,
    init(key: Tensor): AttentionParams {
      const [k1, k2] = random.split(key, 2) as [Tensor, Tensor];
      return { qkv: qkv.init(k1), proj: proj.init(k2) };
    },
    apply(params: AttentionParams, x: Tensor): Tensor {
      const [b, n] = x.shape as [number, number, number];
      // 'B N (K H D) -> K B H N D'
      const t = permute(reshape(qkv.apply(params.qkv, x), [b, n, 3, numHeads, hd]), [2, 0, 3, 1, 4]);
      const part = (j: number) => reshape(slice(t, [j, 0, 0, 0, 0], [j + 1, b, numHeads, n, hd]), [b, numHeads, n, hd]);
      const a = scaledDotProductAttention(part(0), part(1), part(2), { scale: 1 / Math.sqrt(hd) });
      return proj.apply(params.proj, reshape(permute(a, [0, 2, 1, 3]), [b, n, dim]));
    },
  };
}

// ---------------------------------------------------------------- pre-norm block

export type BlockParams = {
  readonly norm1: LayerNormParams;
  readonly attn: AttentionParams;
  readonly norm2: LayerNormParams;
  readonly mlp: MlpParams;
  readonly skip_linear?: LinearParams;
};

export interface BlockConfig {
  readonly dim: number;
  readonly numHeads: number;
  /** Hidden width of the MLP over the width (4). */
  readonly mlpRatio?: number;
  readonly qkvBias?: boolean;
  /** U-ViT's long skip: `skip_linear` = Linear(2D, D) on concat(x, skip) before the attention. */
  readonly skip?: boolean;
  readonly eps?: number;
}

/**
 * U-ViT's `Block`: [x = skip_linear(concat(x, skip))], x = x + attn(norm1(x)), x = x + mlp(norm2(x)).
 */
export function block(config: BlockConfig) {
  const { dim } = config;
  const norm = layerNorm({ dim, eps: config.eps });
  const attn = attention({ dim, numHeads: config.numHeads, qkvBias: config.qkvBias });
  const ffn = mlp({ inFeatures: dim, hiddenFeatures: Math.floor(dim * (config.mlpRatio ?? 4)) });
  const skipLinear = config.skip ? vitLinear(2 * dim, dim) : undefined;
  return {
    config,
    init(key: Tensor): BlockParams {
      const [k1, k2, k3] = random.split(key, 3) as [Tensor, Tensor, Tensor];
      const params: BlockParams = { norm1: norm.init(), attn: attn.init(k1), norm2: norm.init(), mlp: ffn.init(k2) };
      return skipLinear === undefined ? params : { ...params, skip_linear: skipLinear.init(k3) };
    },
    apply(params: BlockParams, xIn: Tensor, skip?: Tensor): Tensor {
      let x = xIn;
      if (skipLinear !== undefined) {
        if (skip === undefined || params.skip_linear === undefined) throw new ShapeError('block: a skip block needs its skip input and skip_linear params');
        x = skipLinear.apply(params.skip_linear, concat([x, skip], -1));
      }
      x = add(x, attn.apply(params.attn, norm.apply(params.norm1, x)));
      return add(x, ffn.apply(params.mlp, norm.apply(params.norm2, x)));
    },
  };
}
