/**
 * U-ViT (Bao et al. 2023, "All are Worth Words: A ViT Backbone for Diffusion Models", Sec. 3 and
 * Fig. 1), the backbone of MaskDM (Lei et al. 2023), as an `(init, apply)` pair whose parameter
 * paths are the reference `state_dict` keys (`patch_embed.proj.weight`, `pos_embed`,
 * `in_blocks.0.attn.qkv.weight`, `mid_block.mlp.fc1.bias`, `out_blocks.0.skip_linear.weight`,
 * `norm.weight`, `decoder_pred.weight`, `final_layer.weight`, ...).
 *
 * Everything is a token: [label], time, then one token per patch, each with its learned position.
 * depth // 2 in-blocks, a mid-block and depth // 2 out-blocks; out-block i takes the output of
 * in-block depth//2 - 1 - i as its long skip. Head: layer norm, a linear map of each patch token to
 * its p x p x C pixels, unpatchify, and a 3 x 3 convolution.
 *
 * `apply` takes an optional list of visible patch indices (MaskDM, Sec. 3.2): the masked patch
 * tokens are dropped after the positional embedding (a per-sample gather, so the blocks' work scales
 * with the visible fraction), the extra tokens are always kept, and the visible tokens' predictions
 * are placed back on the grid with zeros at masked patches before the head's unpatchify and
 * convolution. With every patch visible this is exactly the unmasked network.
 */
import { add, cast, concat, conv2d as conv2dOp, matmul, zeros, reshape, slice, random, ShapeError, TesseraError, fmtShape, type Tensor } from '../core/index.ts';
import type { EpsModel } from './ddpm.ts';
import { positionalEmbedding, silu, type LinearParams } from './nn.ts';
import {
  block, layerNorm, learnedPositionalEmbedding, patchEmbed, placeTokens, selectTokens, torchConvInit, unpatchify, vitLinear,
  type BlockParams, type LayerNormParams, type PatchEmbedParams,
} from './transformer.ts';

/** A U-ViT's shape: image and patch size, channels, width, depth, heads, and U-ViT's options. */
export interface UViTConfig {
  /** Image side (square images), a multiple of `patchSize`. */
  readonly imgSize: number;
  readonly patchSize: number;
  readonly inChannels: number;
  /** Token width D (even: the time token starts as a sinusoidal embedding of width D). */
  readonly embedDim: number;
  /** Blocks in all: depth // 2 in, one mid, depth // 2 out (U-ViT counts 13 for 6 + 1 + 6). */
  readonly depth: number;
  readonly numHeads: number;
  /** MLP hidden width over D (4). */
  readonly mlpRatio?: number;
  /** Bias on the qkv projections (false, as U-ViT). */
  readonly qkvBias?: boolean;
  /** An MLP (Linear D->4D, SiLU, Linear 4D->D) on the time token's sinusoidal embedding (U-ViT's `mlp_time_embed`, default false). */
  readonly mlpTimeEmbed?: boolean;
  /** Classes for a class token (0: unconditional, no class token). */
  readonly numClasses?: number;
  /** U-ViT's final 3 x 3 convolution on the unpatchified output (`conv`, default true). */
  readonly finalConv?: boolean;
  /** Layer-norm epsilon (PyTorch's 1e-5). */
  readonly eps?: number;
}

/** A U-ViT's parameters, a pytree whose paths are the reference implementation's `state_dict` keys. */
export type UViTParams = {
  readonly patch_embed: PatchEmbedParams;
  readonly time_embed?: { readonly '0': LinearParams; readonly '2': LinearParams };
  readonly label_emb?: { readonly weight: Tensor };
  readonly pos_embed: Tensor;
  /** Keyed '0', '1', ... (records, so that paths read `in_blocks.0.norm1.weight` as the state_dict's). */
  readonly in_blocks: Readonly<Record<string, BlockParams>>;
  readonly mid_block: BlockParams;
  readonly out_blocks: Readonly<Record<string, BlockParams>>;
  readonly norm: LayerNormParams;
  readonly decoder_pred: LinearParams;
  readonly final_layer?: { readonly weight: Tensor; readonly bias: Tensor };
};

/** What `apply` takes besides the images and time steps: class labels, visible patches. */
export interface UViTApplyOptions {
  /** One-hot class labels [B, numClasses]; absent (or a zero row) gives a zero class embedding. */
  readonly labels?: Tensor;
  /** Visible patch indices, int32 [B, nVisible] (see masks.ts); absent: every patch. */
  readonly visible?: Tensor;
}

/** U-ViT-S/2 for CIFAR-10 (the paper's Table 1 and its released config: 44M parameters). */
export const UVIT_SMALL = { embedDim: 512, depth: 13, numHeads: 8, patchSize: 2 } as const;

/**
 * A U-ViT as an `(init, apply)` pair, with its grid (`side`, `numPatches`) and extra tokens.
 * @example
 * ```ts
 * const model = uvit({ imgSize: 32, patchSize: 4, inChannels: 1, embedDim: 64, depth: 5, numHeads: 4 });
 * const params = model.init(random.key(0));
 * const eps = model.apply(params, x, t, { visible: drawVisible(key, { kind: 'block', ratio: 0.9, blockSize: 2 }, b, model.side) });
 * ```
 */
export function uvit(config: UViTConfig) {
  const { imgSize, patchSize: p, inChannels: c, embedDim: d, depth } = config;
  if (!Number.isInteger(imgSize / p)) throw new ShapeError(`uvit: image side ${imgSize} is not a multiple of the patch size ${p}`);
  if (d % 2 !== 0) throw new ShapeError(`uvit: embedDim ${d} must be even (the time token's sinusoidal embedding)`);
  if (!Number.isInteger(depth) || depth < 1) throw new ShapeError(`uvit: depth must be an integer >= 1, got ${depth}`);
  const side = imgSize / p;
  const numPatches = side * side;
  const numClasses = config.numClasses ?? 0;
  const extras = numClasses > 0 ? 2 : 1;
  const half = Math.floor(depth / 2);
  const blockConfig = { dim: d, numHeads: config.numHeads, mlpRatio: config.mlpRatio, qkvBias: config.qkvBias, eps: config.eps };

  const embed = patchEmbed({ patchSize: p, inChannels: c, embedDim: d });
  // U-ViT's timestep_embedding: [cos(t f_j), sin(t f_j)], f_j = 10000^(-j / (D/2)).
  const timeFeatures = positionalEmbedding({ numChannels: d, maxPositions: 10000, endpoint: false });
  const time0 = vitLinear(d, 4 * d);
  const time2 = vitLinear(4 * d, d);
  const pos = learnedPositionalEmbedding({ length: extras + numPatches, dim: d });
  const inBlock = block(blockConfig);
  const outBlock = block({ ...blockConfig, skip: true });
  const norm = layerNorm({ dim: d, eps: config.eps });
  const decoderPred = vitLinear(d, p * p * c);
  const finalConv = config.finalConv ?? true;

  return {
    config,
    /** Patches per side of the grid, and in all. */
    side,
    numPatches,
    /** Tokens before the patches: [class,] time. */
    extras,
    init(key: Tensor): UViTParams {
      const k = (i: number) => random.foldIn(key, i);
      const params: UViTParams = {
        patch_embed: embed.init(k(0)),
        pos_embed: pos.init(k(1)),
        in_blocks: numbered(half, (i) => inBlock.init(k(100 + i))),
        mid_block: inBlock.init(k(2)),
        out_blocks: numbered(half, (i) => outBlock.init(k(200 + i))),
        norm: norm.init(),
        decoder_pred: decoderPred.init(k(3)),
      };
      return {
        ...params,
        ...(config.mlpTimeEmbed ? { time_embed: { '0': time0.init(k(4)), '2': time2.init(k(5)) } } : {}),
        // nn.Embedding's default init, N(0, 1) (U-ViT's _init_weights leaves it).
        ...(numClasses > 0 ? { label_emb: { weight: random.normal(k(6), [numClasses, d]) } } : {}),
        ...(finalConv ? { final_layer: torchConvInit(k(7), c, c, 3) } : {}),
      };
    },
    /** The network's output (U-ViT: the noise prediction) for x [B, C, H, W] at time steps t [B]. */
    apply(params: UViTParams, x: Tensor, t: Tensor, options: UViTApplyOptions = {}): Tensor {
      if (x.rank !== 4 || x.shape[1] !== c || x.shape[2] !== imgSize || x.shape[3] !== imgSize) {
        throw new ShapeError(`uvit: expects x [B,${c},${imgSize},${imgSize}], got ${fmtShape(x.shape)}`);
      }
      const b = x.shape[0]!;
      if (t.size !== b) throw new ShapeError(`uvit: expects one time step per sample (${b}), got t ${fmtShape(t.shape)}`);
      const posExtras = slice(params.pos_embed, [0, 0, 0], [1, extras, d]);
      const posPatches = slice(params.pos_embed, [0, extras, 0], [1, extras + numPatches, d]);
      let patches = pos.apply(posPatches, embed.apply(params.patch_embed, x));
      if (options.visible !== undefined) patches = selectTokens(patches, options.visible);

      // The features are float32 constants; cast to x's dtype so that float64 gradient checks run.
      let time = cast(timeFeatures.apply({}, reshape(cast(t, 'float32'), [b])), x.dtype);
      if (config.mlpTimeEmbed) {
        if (params.time_embed === undefined) throw new TesseraError('uvit: mlpTimeEmbed needs time_embed params');
        time = time2.apply(params.time_embed['2'], silu(time0.apply(params.time_embed['0'], time)));
      }
      const extraTokens = [reshape(time, [b, 1, d])];
      if (numClasses > 0) {
        if (params.label_emb === undefined) throw new TesseraError('uvit: numClasses > 0 needs label_emb params');
        const labels = options.labels;
        if (labels !== undefined && (labels.rank !== 2 || labels.shape[0] !== b || labels.shape[1] !== numClasses)) {
          throw new ShapeError(`uvit: labels must be one-hot [${b}, ${numClasses}], got ${fmtShape(labels.shape)}`);
        }
        extraTokens.unshift(labels === undefined ? zeros([b, 1, d], x.dtype) : reshape(matmul(labels, params.label_emb.weight), [b, 1, d]));
      }
      let h = concat([pos.apply(posExtras, concat(extraTokens, 1)), patches], 1);

      const skips: Tensor[] = [];
      for (let i = 0; i < half; i++) {
        h = inBlock.apply(params.in_blocks[i]!, h);
        skips.push(h);
      }
      h = inBlock.apply(params.mid_block, h);
      for (let i = 0; i < half; i++) h = outBlock.apply(params.out_blocks[i]!, h, skips.pop());

      const n = h.shape[1]!;
      let out = slice(decoderPred.apply(params.decoder_pred, norm.apply(params.norm, h)), [0, extras, 0], [b, n, p * p * c]);
      if (options.visible !== undefined) out = placeTokens(out, options.visible, numPatches);
      const image = unpatchify(out, c);
      if (!finalConv) return image;
      if (params.final_layer === undefined) throw new TesseraError('uvit: finalConv needs final_layer params');
      return add(conv2dOp(image, params.final_layer.weight, { padding: 1 }), reshape(params.final_layer.bias, [1, c, 1, 1]));
    },
  };
}

/** The model `uvit` returns. */
export type UViT = ReturnType<typeof uvit>;

/**
 * The network as DDPM's epsilon model (ddpm.ts), class labels from `extra.labels`: sample it with
 * `ddimSample`, or wrap it in `vpDenoiser` for EDM's samplers.
 * @example
 * const eps = uvitEps(model, params);                 // model from uvit
 * const images = await ddimSample(eps, { schedule: linearSchedule(), steps: 50, key: random.key(0), shape: [16, 1, 32, 32] });
 */
export function uvitEps(model: UViT, params: UViTParams): EpsModel {
  return (x, t, extra) => model.apply(params, x, t, { labels: extra?.labels });
}

/** { '0': f(0), ..., 'n-1': f(n - 1) }. */
function numbered<T>(n: number, f: (i: number) => T): Record<string, T> {
  return Object.fromEntries(Array.from({ length: n }, (_, i) => [String(i), f(i)]));
}
