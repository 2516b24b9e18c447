/**
 * EDM's `SongUNet`: the DDPM++ and NCSN++ architectures of Song et al. 2021 ("Score-Based Generative
 * Modeling through Stochastic Differential Equations") as reimplemented in EDM's
 * `training/networks.py` (Karras et al. 2022), with Patch Diffusion's optional implicit-MLP stem.
 *
 * Parameters form a pytree whose flattened paths (`leafPaths`) are exactly the keys of the
 * reference `state_dict` (`map_layer0.weight`, `enc.32x32_conv.weight`,
 * `enc.16x16_block0.qkv.weight`, `dec.32x32_aux_norm.bias`, ...), so a converted checkpoint loads
 * without renaming. The reference's constant `resample_filter` buffers are rebuilt from the config.
 */
import { add, cast, concat, div, greaterEqual, mul, reshape, slice, zeros, random, ShapeError, TesseraError, fmtShape, type Tensor } from '../core/index.ts';
import {
  conv2d, dropout, fourierEmbedding, groupNorm, linear, positionalEmbedding, selfAttention, silu,
  type ApplyOptions, type Conv2dParams, type FourierEmbeddingParams, type GroupNormParams, type InitOptions, type LinearParams,
} from './nn.ts';
import { remat } from '../autodiff/custom.ts';

const { foldIn } = random;

// ---------------------------------------------------------------- UNet block

export interface UNetBlockConfig {
  readonly inChannels: number;
  readonly outChannels: number;
  readonly embChannels: number;
  readonly up?: boolean;
  readonly down?: boolean;
  readonly attention?: boolean;
  /** Default: outChannels / channelsPerHead. */
  readonly numHeads?: number;
  readonly channelsPerHead?: number;
  readonly dropout?: number;
  readonly skipScale?: number;
  readonly eps?: number;
  readonly resampleFilter?: readonly number[];
  /** A 1x1 conv on the skip path whenever it resamples (not only when channels change). */
  readonly resampleProj?: boolean;
  /** Embedding as scale and shift of the normalised features (else added before the norm). */
  readonly adaptiveScale?: boolean;
  readonly init?: InitOptions;
  readonly initZero?: InitOptions;
  readonly initAttn?: InitOptions;
}

export type UNetBlockParams = {
  readonly norm0: GroupNormParams;
  readonly conv0: Conv2dParams;
  readonly affine: LinearParams;
  readonly norm1: GroupNormParams;
  readonly conv1: Conv2dParams;
  readonly skip?: Conv2dParams;
  readonly norm2?: GroupNormParams;
  readonly qkv?: Conv2dParams;
  readonly proj?: Conv2dParams;
};

/**
 * EDM's `UNetBlock`: GroupNorm, SiLU, conv (optionally resampling), embedding injection, GroupNorm,
 * SiLU, dropout, conv, plus the (projected) skip, times `skipScale`; then optional self-attention
 * with its own residual, times `skipScale` again.
 * @example
 * const block = unetBlock({ inChannels: 32, outChannels: 64, embChannels: 128, down: true });
 * const y = block.apply(block.init(random.key(0)), x, emb);   // x [N, 32, H, W], emb [N, 128] -> [N, 64, H/2, W/2]
 */
export function unetBlock(config: UNetBlockConfig) {
  const { inChannels: cin, outChannels: cout, embChannels } = config;
  const up = config.up ?? false;
  const down = config.down ?? false;
  const eps = config.eps ?? 1e-5;
  const init = config.init ?? {};
  const initZero = config.initZero ?? { weight: 0 };
  const adaptiveScale = config.adaptiveScale ?? true;
  const skipScale = config.skipScale ?? 1;
  const rate = config.dropout ?? 0;
  const resampleFilter = config.resampleFilter ?? [1, 1];
  const numHeads = !config.attention ? 0 : config.numHeads ?? Math.floor(cout / (config.channelsPerHead ?? 64));

  const norm0 = groupNorm({ numChannels: cin, eps });
  const conv0 = conv2d({ inChannels: cin, outChannels: cout, kernel: 3, up, down, resampleFilter, init });
  const affine = linear({ inFeatures: embChannels, outFeatures: cout * (adaptiveScale ? 2 : 1), init });
  const norm1 = groupNorm({ numChannels: cout, eps });
  const conv1 = conv2d({ inChannels: cout, outChannels: cout, kernel: 3, init: initZero });
  const skip = cout !== cin || up || down
    ? conv2d({ inChannels: cin, outChannels: cout, kernel: config.resampleProj || cout !== cin ? 1 : 0, up, down, resampleFilter, init })
    : undefined;
  const attn = numHeads > 0
    ? selfAttention({ channels: cout, numHeads, eps, init: config.initAttn ?? init, initZero })
    : undefined;

  return {
    config,
    init(key: Tensor): UNetBlockParams {
      const k = (i: number) => foldIn(key, i);
      return {
        norm0: norm0.init(),
        conv0: conv0.init(k(0)),
        affine: affine.init(k(1)),
        norm1: norm1.init(),
        conv1: conv1.init(k(2)),
        ...(skip === undefined ? {} : { skip: skip.init(k(3)) }),
        ...(attn === undefined ? {} : attn.init(k(4))),
      };
    },
    apply(params: UNetBlockParams, xIn: Tensor, emb: Tensor, options: ApplyOptions = {}): Tensor {
      if (xIn.rank !== 4 || xIn.shape[1] !== cin) throw new ShapeError(`unetBlock: expects [N,${cin},H,W], got ${fmtShape(xIn.shape)}`);
      let x = conv0.apply(params.conv0, silu(norm0.apply(params.norm0, xIn)));
      const p = affine.apply(params.affine, emb);
      const n = p.shape[0]!;
      if (adaptiveScale) {
        const scale = reshape(slice(p, [0, 0], [n, cout]), [n, cout, 1, 1]);
        const shift = reshape(slice(p, [0, cout], [n, 2 * cout]), [n, cout, 1, 1]);
        x = silu(add(shift, mul(norm1.apply(params.norm1, x), add(scale, 1))));
      } else {
        x = silu(norm1.apply(params.norm1, add(x, reshape(p, [n, cout, 1, 1]))));
      }
      x = conv1.apply(params.conv1, dropout(x, rate, options));
      x = mul(add(x, skip === undefined ? xIn : skip.apply(params.skip ?? {}, xIn)), skipScale);
      if (attn !== undefined) {
        const { norm2, qkv, proj } = params;
        if (norm2 === undefined || qkv === undefined || proj === undefined) throw new TesseraError('unetBlock: attention params (norm2, qkv, proj) are missing');
        x = mul(add(attn.apply({ norm2, qkv, proj }, x), x), skipScale);
      }
      return x;
    },
  };
}

// ---------------------------------------------------------------- SongUNet

/** EDM's `SongUNet` arguments (DDPM++ and NCSN++ are presets of them: `DDPMPP`, `NCSNPP`). */
export interface SongUNetConfig {
  /** Image resolution at input/output; names the levels (`32x32`, `16x16`, ...) and places attention. */
  readonly imgResolution: number;
  readonly inChannels: number;
  readonly outChannels: number;
  /** Number of class labels, 0 = unconditional. */
  readonly labelDim?: number;
  /** Augmentation label dimensionality, 0 = no augmentation. */
  readonly augmentDim?: number;
  /** Base multiplier for the number of channels (128). */
  readonly modelChannels?: number;
  /** Per-resolution multipliers ([1,2,2,2]). */
  readonly channelMult?: readonly number[];
  /** Multiplier for the embedding width (4). */
  readonly channelMultEmb?: number;
  /** Residual blocks per resolution (4). */
  readonly numBlocks?: number;
  /** Resolutions with self-attention ([16]). */
  readonly attnResolutions?: readonly number[];
  /** Dropout probability of intermediate activations (0.10). */
  readonly dropout?: number;
  /** Dropout probability of class labels, for classifier-free guidance (0). */
  readonly labelDropout?: number;
  /** 'positional' for DDPM++, 'fourier' for NCSN++. */
  readonly embeddingType?: 'positional' | 'fourier';
  /** Noise embedding width multiplier: 1 for DDPM++, 2 for NCSN++. */
  readonly channelMultNoise?: number;
  /** 'standard' for DDPM++, 'residual' for NCSN++, or 'skip'. */
  readonly encoderType?: 'standard' | 'skip' | 'residual';
  /** 'standard' for both, or 'skip'. */
  readonly decoderType?: 'standard' | 'skip';
  /** [1,1] for DDPM++, [1,3,3,1] for NCSN++. */
  readonly resampleFilter?: readonly number[];
  /** Patch Diffusion's stem: three 1x1 convs with SiLU before the first 3x3 conv. */
  readonly implicitMlp?: boolean;
  /**
   * Rematerialise every UNet block (gradient checkpointing): the backward pass recomputes a block's
   * intermediates from its input instead of keeping them, so a training step needs less memory for
   * more compute. Values and gradients are unchanged (false).
   */
  readonly remat?: boolean;
}

/** EDM's DDPM++ settings (train.py, --arch=ddpmpp) at 32x32: 55.73M parameters with 3 channels. */
export const DDPMPP = {
  modelChannels: 128, channelMult: [2, 2, 2], channelMultNoise: 1, embeddingType: 'positional',
  encoderType: 'standard', decoderType: 'standard', resampleFilter: [1, 1],
} as const satisfies Partial<SongUNetConfig>;

/** EDM's NCSN++ settings (train.py, --arch=ncsnpp). */
export const NCSNPP = {
  modelChannels: 128, channelMult: [2, 2, 2], channelMultNoise: 2, embeddingType: 'fourier',
  encoderType: 'residual', decoderType: 'standard', resampleFilter: [1, 3, 3, 1],
} as const satisfies Partial<SongUNetConfig>;

/** Parameters of one encoder/decoder entry; the tree under `enc` and `dec`. */
export type ModuleParams = UNetBlockParams | Conv2dParams | GroupNormParams | { readonly [index: string]: Conv2dParams };

/**
 * Parameters the network keeps behind `stopGradient` (EDM's buffers: the Fourier embedding's
 * frequencies), by the end of their path. Their gradient is zero, so an optimizer started from zero
 * moments never moves them.
 */
export const FROZEN_PARAMETERS: readonly string[] = ['map_noise.freqs'];

/** The SongUNet's parameters, a pytree whose paths are EDM's `state_dict` keys. */
export type SongUNetParams = {
  readonly map_noise?: FourierEmbeddingParams;
  readonly map_label?: LinearParams;
  readonly map_augment?: LinearParams;
  readonly map_layer0: LinearParams;
  readonly map_layer1: LinearParams;
  readonly enc: { readonly [name: string]: ModuleParams };
  readonly dec: { readonly [name: string]: ModuleParams };
};

export interface SongUNetInputs extends ApplyOptions {
  /** [N, labelDim] one-hot (or soft) labels; zeros mean "no label" (the unconditional model of CFG). */
  readonly classLabels?: Tensor;
  /** [N, augmentDim] augmentation labels (EDM's non-leaky augmentation); ignored when absent. */
  readonly augmentLabels?: Tensor;
}

type Role = 'conv' | 'block' | 'aux_down' | 'aux_skip' | 'aux_residual' | 'aux_up' | 'aux_norm' | 'aux_conv';

/** One named entry of EDM's `enc`/`dec` ModuleDicts, in the reference's insertion order. */
interface Entry {
  readonly name: string;
  readonly role: Role;
  readonly inChannels: number;
  readonly outChannels: number;
  init(key: Tensor): ModuleParams | undefined;
  apply(params: ModuleParams | undefined, x: Tensor, emb: Tensor, options: ApplyOptions): Tensor;
}

function convEntry(name: string, role: Role, layer: ReturnType<typeof conv2d>): Entry {
  return {
    name, role, inChannels: layer.config.inChannels, outChannels: layer.config.outChannels,
    init: (key) => (layer.config.kernel === 0 ? undefined : layer.init(key)),
    apply: (p, x) => layer.apply((p ?? {}) as Conv2dParams, x),
  };
}

function blockEntry(name: string, layer: ReturnType<typeof unetBlock>, rematerialise: boolean): Entry {
  const apply = (p: ModuleParams | undefined, x: Tensor, emb: Tensor, options: ApplyOptions) => layer.apply(p as UNetBlockParams, x, emb, options);
  return {
    name, role: 'block', inChannels: layer.config.inChannels, outChannels: layer.config.outChannels,
    init: (key) => layer.init(key),
    apply: rematerialise ? remat(apply) : apply,
  };
}

function normEntry(name: string, layer: ReturnType<typeof groupNorm>): Entry {
  const c = layer.config.numChannels;
  return { name, role: 'aux_norm', inChannels: c, outChannels: c, init: () => layer.init(), apply: (p, x) => layer.apply(p as GroupNormParams, x) };
}

/** Patch Diffusion's `implicit_mlp` stem, a torch Sequential: keys 0, 2, 4, 6 (SiLUs at 1, 3, 5). */
function implicitMlpEntry(name: string, cin: number, cout: number, init: InitOptions): Entry {
  const layers = [
    conv2d({ inChannels: cin, outChannels: cout, kernel: 1, init }),
    conv2d({ inChannels: cout, outChannels: cout, kernel: 1, init }),
    conv2d({ inChannels: cout, outChannels: cout, kernel: 1, init }),
    conv2d({ inChannels: cout, outChannels: cout, kernel: 3, init }),
  ];
  return {
    name, role: 'conv', inChannels: cin, outChannels: cout,
    init: (key) => Object.fromEntries(layers.map((l, i) => [String(2 * i), l.init(foldIn(key, i))])),
    apply: (p, x) => {
      const ps = p as { readonly [index: string]: Conv2dParams };
      return layers.reduce((h, l, i) => (i === 0 ? l.apply(ps['0']!, h) : l.apply(ps[String(2 * i)]!, silu(h))), x);
    },
  };
}

/**
 * EDM's SongUNet with its defaults filled in; `init` and `apply` as any layer.
 * @example
 * const net = songUNet({ imgResolution: 32, inChannels: 3, outChannels: 3, modelChannels: 16, channelMult: [1, 2], numBlocks: 1 });
 * const params = net.init(random.key(0));             // EDM's state_dict names: enc['32x32_conv'], ...
 * const y = net.apply(params, random.normal(random.key(1), [2, 3, 32, 32]), tensor([0.1, 0.5]));   // [2, 3, 32, 32]
 */
export function songUNet(configIn: SongUNetConfig) {
  const config: Required<SongUNetConfig> = {
    labelDim: 0, augmentDim: 0, modelChannels: 128, channelMult: [1, 2, 2, 2], channelMultEmb: 4, numBlocks: 4,
    attnResolutions: [16], dropout: 0.1, labelDropout: 0, embeddingType: 'positional', channelMultNoise: 1,
    encoderType: 'standard', decoderType: 'standard', resampleFilter: [1, 1], implicitMlp: false, remat: false,
    ...stripUndefined(configIn),
    imgResolution: configIn.imgResolution, inChannels: configIn.inChannels, outChannels: configIn.outChannels,
  };
  const { imgResolution, inChannels, outChannels, labelDim, augmentDim, modelChannels, channelMult, numBlocks, resampleFilter } = config;
  const embChannels = modelChannels * config.channelMultEmb;
  const noiseChannels = modelChannels * config.channelMultNoise;
  const init: InitOptions = { mode: 'xavier_uniform' };
  const initZero: InitOptions = { mode: 'xavier_uniform', weight: 1e-5 };
  const initAttn: InitOptions = { mode: 'xavier_uniform', weight: Math.sqrt(0.2) };
  const block = (cin: number, cout: number, extra: Partial<UNetBlockConfig>) => unetBlock({
    inChannels: cin, outChannels: cout, embChannels, numHeads: 1, dropout: config.dropout, skipScale: Math.sqrt(0.5), eps: 1e-6,
    resampleFilter, resampleProj: true, adaptiveScale: false, init, initZero, initAttn, ...extra,
  });

  // Mapping.
  const mapNoise = config.embeddingType === 'positional'
    ? { kind: 'positional' as const, layer: positionalEmbedding({ numChannels: noiseChannels, endpoint: true }) }
    : { kind: 'fourier' as const, layer: fourierEmbedding({ numChannels: noiseChannels }) };
  const mapLabel = labelDim ? linear({ inFeatures: labelDim, outFeatures: noiseChannels, init }) : undefined;
  const mapAugment = augmentDim ? linear({ inFeatures: augmentDim, outFeatures: noiseChannels, bias: false, init }) : undefined;
  const mapLayer0 = linear({ inFeatures: noiseChannels, outFeatures: embChannels, init });
  const mapLayer1 = linear({ inFeatures: embChannels, outFeatures: embChannels, init });

  // Encoder.
  const enc: Entry[] = [];
  let cout = inChannels;
  let caux = inChannels;
  channelMult.forEach((mult, level) => {
    const res = imgResolution >> level;
    const at = `${res}x${res}`;
    if (level === 0) {
      const cin = cout;
      cout = modelChannels;
      enc.push(config.implicitMlp
        ? implicitMlpEntry(`${at}_conv`, cin, cout, init)
        : convEntry(`${at}_conv`, 'conv', conv2d({ inChannels: cin, outChannels: cout, kernel: 3, init })));
    } else {
      enc.push(blockEntry(`${at}_down`, block(cout, cout, { down: true }), config.remat));
      if (config.encoderType === 'skip') {
        enc.push(convEntry(`${at}_aux_down`, 'aux_down', conv2d({ inChannels: caux, outChannels: caux, kernel: 0, down: true, resampleFilter })));
        enc.push(convEntry(`${at}_aux_skip`, 'aux_skip', conv2d({ inChannels: caux, outChannels: cout, kernel: 1, init })));
      }
      if (config.encoderType === 'residual') {
        enc.push(convEntry(`${at}_aux_residual`, 'aux_residual', conv2d({ inChannels: caux, outChannels: cout, kernel: 3, down: true, resampleFilter, fusedResample: true, init })));
        caux = cout;
      }
    }
    for (let idx = 0; idx < numBlocks; idx++) {
      const cin = cout;
      cout = modelChannels * mult;
      enc.push(blockEntry(`${at}_block${idx}`, block(cin, cout, { attention: config.attnResolutions.includes(res) }), config.remat));
    }
  });
  const skips = enc.filter((e) => !e.role.startsWith('aux')).map((e) => e.outChannels);

  // Decoder.
  const dec: Entry[] = [];
  for (let level = channelMult.length - 1; level >= 0; level--) {
    const mult = channelMult[level]!;
    const res = imgResolution >> level;
    const at = `${res}x${res}`;
    if (level === channelMult.length - 1) {
      dec.push(blockEntry(`${at}_in0`, block(cout, cout, { attention: true }), config.remat));
      dec.push(blockEntry(`${at}_in1`, block(cout, cout, {}), config.remat));
    } else {
      dec.push(blockEntry(`${at}_up`, block(cout, cout, { up: true }), config.remat));
    }
    for (let idx = 0; idx <= numBlocks; idx++) {
      const cin = cout + skips.pop()!;
      cout = modelChannels * mult;
      const attention = idx === numBlocks && config.attnResolutions.includes(res);
      dec.push(blockEntry(`${at}_block${idx}`, block(cin, cout, { attention }), config.remat));
    }
    if (config.decoderType === 'skip' || level === 0) {
      if (config.decoderType === 'skip' && level < channelMult.length - 1) {
        dec.push(convEntry(`${at}_aux_up`, 'aux_up', conv2d({ inChannels: outChannels, outChannels, kernel: 0, up: true, resampleFilter })));
      }
      dec.push(normEntry(`${at}_aux_norm`, groupNorm({ numChannels: cout, eps: 1e-6 })));
      dec.push(convEntry(`${at}_aux_conv`, 'aux_conv', conv2d({ inChannels: cout, outChannels, kernel: 3, init: initZero })));
    }
  }

  const initEntries = (key: Tensor, entries: readonly Entry[]) => {
    const out: { [name: string]: ModuleParams } = {};
    entries.forEach((e, i) => {
      const p = e.init(foldIn(key, i));
      if (p !== undefined) out[e.name] = p;
    });
    return out;
  };

  return {
    config,
    /** Inputs need sides divisible by this: 2^(levels - 1). */
    downsampling: 2 ** (channelMult.length - 1),
    init(key: Tensor): SongUNetParams {
      const k = (i: number) => foldIn(key, i);
      return {
        ...(mapNoise.kind === 'fourier' ? { map_noise: mapNoise.layer.init(k(0)) } : {}),
        ...(mapLabel === undefined ? {} : { map_label: mapLabel.init(k(1)) }),
        ...(mapAugment === undefined ? {} : { map_augment: mapAugment.init(k(2)) }),
        map_layer0: mapLayer0.init(k(3)),
        map_layer1: mapLayer1.init(k(4)),
        enc: initEntries(k(5), enc),
        dec: initEntries(k(6), dec),
      };
    },

    /**
     * The network F(x, c_noise; labels): x [N, inChannels, H, W] with H, W divisible by
     * 2^(levels - 1), noise labels [N] -> [N, outChannels, H, W].
     */
    apply(params: SongUNetParams, x: Tensor, noiseLabels: Tensor, inputs: SongUNetInputs = {}): Tensor {
      const n = x.shape[0]!;
      const train = inputs.train ?? false;
      const needKey = train && (config.dropout > 0 || (mapLabel !== undefined && config.labelDropout > 0));
      if (needKey && inputs.key === undefined) throw new TesseraError('songUNet: training with dropout needs a key (inputs.key)');
      const blockOptions = (i: number): ApplyOptions => (needKey ? { train, key: foldIn(inputs.key!, i + 1) } : { train });

      // Mapping. EDM swaps the embedding's halves to [sin, cos] before the MLP.
      if (mapNoise.kind === 'fourier' && params.map_noise === undefined) throw new TesseraError('songUNet: params have no map_noise.freqs for the Fourier embedding');
      let emb = mapNoise.kind === 'fourier' ? mapNoise.layer.apply(params.map_noise!, noiseLabels) : mapNoise.layer.apply({}, noiseLabels);
      const half = noiseChannels / 2;
      emb = concat([slice(emb, [0, half], [emb.shape[0]!, noiseChannels]), slice(emb, [0, 0], [emb.shape[0]!, half])], 1);
      if (mapLabel !== undefined) {
        if (params.map_label === undefined) throw new TesseraError('songUNet: params have no map_label for a class-conditional model');
        // No labels: EDM's zero vector, which label dropout trains as the unconditional model.
        let labels = inputs.classLabels ?? zeros([1, labelDim]);
        if (train && config.labelDropout > 0) {
          const keep = greaterEqual(random.uniform(foldIn(inputs.key!, 0), [n, 1]), config.labelDropout);
          labels = mul(labels, cast(keep, 'float32'));
        }
        emb = add(emb, mapLabel.apply(params.map_label, mul(labels, Math.sqrt(labelDim))));
      }
      if (mapAugment !== undefined && inputs.augmentLabels !== undefined && params.map_augment !== undefined) {
        emb = add(emb, mapAugment.apply(params.map_augment, inputs.augmentLabels));
      }
      emb = silu(mapLayer0.apply(params.map_layer0, emb));
      emb = silu(mapLayer1.apply(params.map_layer1, emb));

      // Encoder.
      const skipStack: Tensor[] = [];
      let h = x;
      let aux = x;
      enc.forEach((e, i) => {
        const p = params.enc[e.name];
        switch (e.role) {
          case 'aux_down':
            aux = e.apply(p, aux, emb, {});
            break;
          case 'aux_skip':
            h = add(h, e.apply(p, aux, emb, {}));
            skipStack[skipStack.length - 1] = h;
            break;
          case 'aux_residual':
            h = div(add(h, e.apply(p, aux, emb, {})), Math.SQRT2);
            skipStack[skipStack.length - 1] = h;
            aux = h;
            break;
          default:
            h = e.apply(p, h, emb, blockOptions(i));
            skipStack.push(h);
        }
      });

      // Decoder.
      let out: Tensor | undefined;
      let tmp: Tensor | undefined;
      dec.forEach((e, i) => {
        const p = params.dec[e.name];
        switch (e.role) {
          case 'aux_up':
            out = e.apply(p, out!, emb, {});
            break;
          case 'aux_norm':
            tmp = e.apply(p, h, emb, {});
            break;
          case 'aux_conv':
            tmp = e.apply(p, silu(tmp!), emb, {});
            out = out === undefined ? tmp : add(tmp, out);
            break;
          default:
            if (h.shape[1] !== e.inChannels) h = concat([h, skipStack.pop()!], 1);
            h = e.apply(p, h, emb, blockOptions(enc.length + i));
        }
      });
      return out!;
    },
  };
}

function stripUndefined<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}
