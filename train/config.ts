/**
 * The training config: io-ts codecs, defaults, and how a run's config is put together:
 *
 *   defaults  <-  JSON file (partial)  <-  command-line overrides (`--train.lr=1e-4`)
 *
 * merged key by key (records merge, arrays and scalars replace, `null` removes a key so its
 * default or absence applies), then decoded into a fully typed config. Every problem is reported
 * as one line starting with its path, e.g. `train.lr: expected number > 0, got "fast"`, and keys
 * the codecs do not know are rejected (`data.nmae: unknown key`): a typo must not silently train
 * with a default. The resolved config is plain JSON, so it can be stored in a checkpoint manifest
 * and compared when a run resumes.
 *
 * Model fields follow EDM's SongUNet arguments; defaults are EDM's DDPM++ at 32x32. Training
 * defaults follow EDM's train.py and Patch Diffusion (real_p 0.5). `model.kind: "maskdm"` trains
 * MaskDM's U-ViT instead (`model.uvit`, `train.mask`); the SongUNet fields keep their defaults there
 * and a value that differs is refused, since it would change nothing.
 */
import { readFile } from 'node:fs/promises';
import { totalmem } from 'node:os';
import { left, right, type Either } from 'fp-ts/lib/Either.js';
import * as t from 'io-ts';
import { finite, integer, strictStruct } from './codecs.ts';
import { formatDecodeErrors } from './decodeErrors.ts';
import { architectureProblems, memoryProblem, type RuleOptions } from './configRules.ts';
import { ConfigError } from './errors.ts';
import { parseJsonBounded } from './jsonScan.ts';

const positiveInt = integer(1);
const nonNegativeInt = integer(0);
const probability = finite({ min: 0, max: 1 });

/** The largest image side we accept: beyond it, datasets and activations outgrow any machine we run on (and 2, the least, is what patch coordinates need). */
export const MAX_RESOLUTION = 4096;
const side = integer(2, MAX_RESOLUTION);

/** A square side, or [height, width]. */
const Resolution = t.union([side, t.tuple([side, side])], `integer in [2, ${MAX_RESOLUTION}] or [height, width]`);
export type Resolution = t.TypeOf<typeof Resolution>;

/** {patch size: multiplier}, e.g. {"16": 4, "32": 2}; keys must be integers >= 1. */
const PatchSizeMap = new t.Type<Record<string, number>, Record<string, number>, unknown>(
  '{patch size: multiplier}',
  (u): u is Record<string, number> => PatchSizeMap.validate(u, [])._tag === 'Right',
  (u, c) => {
    if (typeof u !== 'object' || u === null || Array.isArray(u)) return t.failure(u, c);
    const errors: t.ValidationError[] = [];
    for (const [key, value] of Object.entries(u)) {
      const context = t.appendContext(c, key, positiveInt, value);
      if (!/^[1-9]\d*$/.test(key)) errors.push({ value: key, context, message: 'not a patch size (integer >= 1)' });
      else if (!positiveInt.is(value)) errors.push({ value, context });
    }
    return errors.length > 0 ? t.failures(errors) : t.success(u as Record<string, number>);
  },
  t.identity,
);

/**
 * U-ViT's settings (Bao et al. 2023; models/uvit.ts), for `model.kind: "maskdm"`; each defaults to
 * `UVIT_DEFAULTS`. A resolved maskdm config holds every field.
 */
export const UViTConfig = strictStruct('uvit config', {}, {
  /** Pixels per patch side; must divide the image side (side / patch_size patches per side). */
  patch_size: positiveInt,
  /** Token width D (even, a multiple of num_heads). */
  embed_dim: positiveInt,
  /** Blocks in all: depth // 2 in, one mid, depth // 2 out. */
  depth: positiveInt,
  num_heads: positiveInt,
  mlp_ratio: finite({ min: 0, exclusiveMin: true }),
  qkv_bias: t.boolean,
  /** An MLP on the time token's sinusoidal embedding (U-ViT's mlp_time_embed). */
  mlp_time_embed: t.boolean,
  /** The head's 3 x 3 convolution on the unpatchified output. */
  final_conv: t.boolean,
});

/** A small U-ViT for 32 x 32 images: 4-pixel patches (64 tokens), width 128, 3 + 1 + 3 blocks, 4 heads (U-ViT's MLP ratio 4, no qkv bias, final convolution). */
export const UVIT_DEFAULTS = {
  patch_size: 4, embed_dim: 128, depth: 7, num_heads: 4, mlp_ratio: 4, qkv_bias: false, mlp_time_embed: false, final_conv: true,
} as const;

export const ModelConfig = strictStruct('model config', {
  /**
   * 'patch': Patch Diffusion's patch-conditioned model; 'edm': the plain EDM baseline; 'msdiff':
   * multi-scale non-uniform diffusion, one SongUNet of these settings per Haar scale; 'maskdm':
   * MaskDM's U-ViT (`uvit`) trained with masked score matching (`train.mask`).
   */
  kind: t.keyof({ patch: null, edm: null, msdiff: null, maskdm: null }),
  model_channels: positiveInt,
  channel_mult: t.array(positiveInt),
  num_blocks: positiveInt,
  attn_resolutions: t.array(positiveInt),
  dropout: probability,
  channel_mult_emb: positiveInt,
  channel_mult_noise: positiveInt,
  embedding_type: t.keyof({ positional: null, fourier: null }),
  encoder_type: t.keyof({ standard: null, skip: null, residual: null }),
  decoder_type: t.keyof({ standard: null, skip: null }),
  resample_filter: t.array(finite({ min: 0 })),
  label_dim: nonNegativeInt,
  augment_dim: nonNegativeInt,
  /** Append Patch Diffusion's two coordinate channels to the input. */
  use_coords: t.boolean,
}, {
  /** Default: data.resolution. */
  img_resolution: Resolution,
  /** Default: the data's channels. */
  img_channels: positiveInt,
  /** MSDiff only: Haar levels L (L + 1 components and networks, the coarsest at R / 2^L); default 2. */
  haar_levels: integer(1, 8),
  /** MaskDM only: the U-ViT; fields default to UVIT_DEFAULTS. */
  uvit: UViTConfig,
});

export const DataConfig = strictStruct('data config', {
  name: t.keyof({ mnist: null, 'fashion-mnist': null, folder: null }),
  resolution: Resolution,
  xflip: t.boolean,
  skipCorrupt: t.boolean,
}, {
  /** The image folder (data.name "folder" only). */
  path: t.string,
  /** Keep a seeded subset of this many images (the paper's 5,000-image regime). */
  limit: positiveInt,
  /** 1 (grey) or 3 (RGB); image folders only, default 3. */
  channels: t.union([t.literal(1), t.literal(3)], '1 or 3'),
});

/**
 * MaskDM's mask on the patch grid (models/masks.ts): random patches, random aligned blocks of
 * block_size x block_size patches (default 4, MaskDM's main setting), or one visible crop of
 * crop_size x crop_size patches. `ratio` in [0, 1) for patch and block masks.
 */
export const MaskSettings = strictStruct('mask config', {
  kind: t.keyof({ patch: null, block: null, crop: null }),
}, {
  ratio: probability,
  block_size: positiveInt,
  crop_size: positiveInt,
});

export const TrainConfig = strictStruct('train config', {
  batch_size: positiveInt,
  lr: finite({ min: 0, exclusiveMin: true }),
  lr_rampup_images: finite({ min: 0 }),
  ema_halflife_images: finite({ min: 0 }),
  ema_rampup_ratio: finite({ min: 0 }),
  /** Probability of training on full-size images (Patch Diffusion's p). */
  real_p: probability,
  /** R/4, R/2, R for 20%, 30%, 50% of training instead of random sizes. */
  progressive: t.boolean,
  P_mean: finite(),
  P_std: finite({ min: 0, exclusiveMin: true }),
  sigma_data: finite({ min: 0, exclusiveMin: true }),
  seed: nonNegativeInt,
  checkpoint_every: positiveInt,
  sample_every: positiveInt,
  log_every: positiveInt,
  keep_checkpoints: positiveInt,
}, {
  /** Training length in optimizer steps (exactly one of steps and duration_images; default steps). */
  steps: positiveInt,
  /** Training length in images shown. */
  duration_images: positiveInt,
  /** Clip the gradient's global norm to this. */
  grad_clip: finite({ min: 0, exclusiveMin: true }),
  /** Patch sizes to draw from; default R/4, R/2, R. */
  patch_sizes: t.array(positiveInt),
  /** Images per step for each patch size, relative to batch_size: 'auto' (R/s, capped at 4) or a map. */
  batch_multiplier: t.union([t.literal('auto'), PatchSizeMap], '"auto" or {patch size: multiplier}'),
  /**
   * The learning rate over training: "edm" (default) EDM's linear ramp-up over lr_rampup_images;
   * "cosine" a linear warm-up over warmup_images, then cosine decay to 0 at the run's last step
   * (MaskDM's fine-tuning).
   */
  lr_schedule: t.keyof({ edm: null, cosine: null }),
  /** The cosine schedule's warm-up, in images (default 0). */
  warmup_images: nonNegativeInt,
  /** MaskDM only: the mask of pre-training; absent, every patch is visible (training from scratch, fine-tuning). */
  mask: MaskSettings,
  /**
   * A checkpoint folder (or a run folder: its newest checkpoint) whose EMA weights start a new run
   * (fine-tuning), loaded by name, non-strictly: names missing from it keep their initial values,
   * names the model does not have are ignored (both listed), a shape that differs is refused.
   */
  init_from: t.string,
});

export const Backend = t.keyof({ cpu: null, webgpu: null, reference: null });

export const Config = strictStruct('config', { model: ModelConfig, data: DataConfig, train: TrainConfig }, { backend: Backend });
type DecodedConfig = t.TypeOf<typeof Config>;

/** A resolved config: defaults applied, derived fields filled, cross-field rules checked. */
export type TrainingConfig = Omit<DecodedConfig, 'model'> & {
  readonly model: Omit<DecodedConfig['model'], 'uvit'> & {
    readonly img_resolution: Resolution;
    readonly img_channels: number;
    /** Every field, for model.kind "maskdm" (absent otherwise). */
    readonly uvit?: Readonly<Required<t.TypeOf<typeof UViTConfig>>>;
  };
};

const DEFAULT_STEPS = 100_000;

export const DEFAULTS = {
  model: {
    kind: 'patch',
    model_channels: 128,
    channel_mult: [2, 2, 2],
    num_blocks: 4,
    attn_resolutions: [16],
    dropout: 0.13,
    channel_mult_emb: 4,
    channel_mult_noise: 1,
    embedding_type: 'positional',
    encoder_type: 'standard',
    decoder_type: 'standard',
    resample_filter: [1, 1],
    label_dim: 0,
    augment_dim: 0,
    use_coords: true,
  },
  data: { name: 'mnist', resolution: 32, xflip: false, skipCorrupt: false },
  train: {
    batch_size: 128,
    lr: 1e-3,
    lr_rampup_images: 10_000_000,
    ema_halflife_images: 500_000,
    ema_rampup_ratio: 0.05,
    real_p: 0.5,
    progressive: false,
    P_mean: -1.2,
    P_std: 1.2,
    sigma_data: 0.5,
    seed: 0,
    checkpoint_every: 5000,
    sample_every: 1000,
    log_every: 100,
    keep_checkpoints: 3,
  },
} as const;

type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

function isRecord(x: unknown): x is Record<string, unknown> {
  return typeof x === 'object' && x !== null && !Array.isArray(x);
}

/** `over` on top of `base`: records merge key by key, anything else replaces, null deletes. */
export function mergeConfig(base: unknown, over: unknown): unknown {
  if (!isRecord(base) || !isRecord(over)) return over;
  const out: Record<string, unknown> = { ...base };
  for (const [k, v] of Object.entries(over)) {
    if (v === null) delete out[k];
    else out[k] = mergeConfig(base[k], v);
  }
  return out;
}

/**
 * Parses `--a.b.c=value` arguments into a nested override. The value is read as JSON when it is
 * valid JSON (numbers, booleans, null, arrays), otherwise as a string; `--a.b` alone means true.
 */
export function parseOverrides(args: readonly string[]): Either<ConfigError, Record<string, unknown>> {
  const out: Record<string, unknown> = {};
  const problems: string[] = [];
  for (const arg of args) {
    const m = /^--([^=]+?)(?:=(.*))?$/s.exec(arg);
    const path = m?.[1]?.split('.');
    if (m === null || path === undefined || path.some((p) => p === '')) {
      problems.push(`${arg}: expected --path.to.key=value`);
      continue;
    }
    let value: unknown = true;
    if (m[2] !== undefined) {
      try {
        value = JSON.parse(m[2]) as Json;
      } catch {
        value = m[2];
      }
    }
    let node = out;
    path.slice(0, -1).forEach((key) => {
      if (!isRecord(node[key])) node[key] = {};
      node = node[key] as Record<string, unknown>;
    });
    node[path[path.length - 1]!] = value;
  }
  return problems.length > 0 ? left(new ConfigError(problems)) : right(out);
}

function sameResolution(a: Resolution, b: Resolution): boolean {
  const [ah, aw] = typeof a === 'number' ? [a, a] : a;
  const [bh, bw] = typeof b === 'number' ? [b, b] : b;
  return ah === bh && aw === bw;
}

function fmt(x: unknown): string {
  return JSON.stringify(x);
}

/** `model.uvit` with every field, defaults where unset. */
function uvitSettings(u: t.TypeOf<typeof UViTConfig> = {}): Readonly<Required<t.TypeOf<typeof UViTConfig>>> {
  const d = UVIT_DEFAULTS;
  return {
    patch_size: u.patch_size ?? d.patch_size, embed_dim: u.embed_dim ?? d.embed_dim, depth: u.depth ?? d.depth, num_heads: u.num_heads ?? d.num_heads,
    mlp_ratio: u.mlp_ratio ?? d.mlp_ratio, qkv_bias: u.qkv_bias ?? d.qkv_bias, mlp_time_embed: u.mlp_time_embed ?? d.mlp_time_embed, final_conv: u.final_conv ?? d.final_conv,
  };
}

/** The SongUNet's fields, which a maskdm model does not use. */
const SONGUNET_FIELDS = [
  'model_channels', 'channel_mult', 'num_blocks', 'attn_resolutions', 'dropout', 'channel_mult_emb', 'channel_mult_noise',
  'embedding_type', 'encoder_type', 'decoder_type', 'resample_filter', 'augment_dim', 'use_coords',
] as const;

/**
 * `model.kind: "maskdm"`'s rules: square images, no class labels (the data stream has none), the
 * U-ViT's patches, width and heads, the mask on its patch grid; `model.uvit` and `train.mask` belong
 * to maskdm only, and SongUNet fields set to anything but their defaults are refused there.
 */
function maskdmProblems(c: DecodedConfig): string[] {
  const problems: string[] = [];
  const kind = c.model.kind;
  if (kind !== 'maskdm') {
    if (c.model.uvit !== undefined) problems.push(`model.uvit: only used when model.kind is "maskdm", not ${fmt(kind)}`);
    if (c.train.mask !== undefined) problems.push(`train.mask: only used when model.kind is "maskdm", not ${fmt(kind)}`);
    return problems;
  }
  for (const field of SONGUNET_FIELDS) {
    if (fmt(c.model[field]) !== fmt(DEFAULTS.model[field])) problems.push(`model.${field}: a SongUNet setting, not used when model.kind is "maskdm" (set model.uvit instead)`);
  }
  if (c.model.label_dim > 0) problems.push(`model.label_dim: model.kind "maskdm" is unconditional here, got ${c.model.label_dim}`);
  const [h, w] = typeof c.data.resolution === 'number' ? [c.data.resolution, c.data.resolution] : c.data.resolution;
  if (h !== w) problems.push(`data.resolution: model.kind "maskdm" takes square images, got ${fmt(c.data.resolution)}`);
  const u = uvitSettings(c.model.uvit);
  const side = h / u.patch_size;
  if (!Number.isInteger(side)) problems.push(`model.uvit.patch_size: ${u.patch_size} does not divide the image side ${h}`);
  if (u.embed_dim % 2 !== 0) problems.push(`model.uvit.embed_dim: must be even (the time token starts as a sinusoidal embedding), got ${u.embed_dim}`);
  if (u.embed_dim % u.num_heads !== 0) problems.push(`model.uvit.num_heads: ${u.embed_dim} channels (model.uvit.embed_dim) do not split into ${u.num_heads} heads`);
  const m = c.train.mask;
  if (m === undefined) return problems;
  const only = (field: 'ratio' | 'block_size' | 'crop_size', kinds: string) => {
    if (m[field] !== undefined) problems.push(`train.mask.${field}: not used by a ${fmt(m.kind)} mask (only by ${kinds})`);
  };
  if (m.kind === 'crop') {
    only('ratio', '"patch" and "block" masks');
    only('block_size', '"block" masks');
    if (m.crop_size === undefined) problems.push('train.mask.crop_size: required for a "crop" mask (the visible crop\'s side in patches)');
    else if (Number.isInteger(side) && m.crop_size > side) problems.push(`train.mask.crop_size: ${m.crop_size} is larger than the patch grid's side ${side}`);
    return problems;
  }
  only('crop_size', '"crop" masks');
  if (m.kind === 'patch') only('block_size', '"block" masks');
  if (m.ratio === undefined) problems.push(`train.mask.ratio: required for a ${fmt(m.kind)} mask (the fraction of patches masked, in [0, 1))`);
  else if (m.ratio >= 1) problems.push(`train.mask.ratio: must be below 1 (some patches must stay visible), got ${m.ratio}`);
  const k = m.block_size ?? 4;
  if (m.kind === 'block' && Number.isInteger(side) && side % k !== 0) {
    problems.push(`train.mask.block_size: ${k} does not divide the patch grid's side ${side} (${h} px / model.uvit.patch_size ${u.patch_size})`);
  }
  return problems;
}

/** Checks rules between fields and fills derived ones. */
function resolve(c: DecodedConfig, options: RuleOptions): Either<ConfigError, TrainingConfig> {
  const problems: string[] = [];
  const isFolder = c.data.name === 'folder';
  if (isFolder && c.data.path === undefined) problems.push('data.path: required when data.name is "folder"');
  if (!isFolder && c.data.path !== undefined) problems.push(`data.path: only used when data.name is "folder", not ${fmt(c.data.name)}`);
  if (!isFolder && c.data.channels !== undefined && c.data.channels !== 1) problems.push(`data.channels: ${c.data.name} has 1 channel, got ${c.data.channels}`);
  const channels = isFolder ? (c.data.channels ?? 3) : 1;
  const imgResolution = c.model.img_resolution ?? c.data.resolution;
  if (!sameResolution(imgResolution, c.data.resolution)) {
    problems.push(`model.img_resolution: ${fmt(imgResolution)} does not match data.resolution ${fmt(c.data.resolution)}`);
  }
  const isMsdiff = c.model.kind === 'msdiff';
  if (!isMsdiff && c.model.haar_levels !== undefined) problems.push(`model.haar_levels: only used when model.kind is "msdiff", not ${fmt(c.model.kind)}`);
  if (isMsdiff && typeof c.data.resolution !== 'number' && c.data.resolution[0] !== c.data.resolution[1]) {
    problems.push(`data.resolution: model.kind "msdiff" takes square images, got ${fmt(c.data.resolution)}`);
  }
  if (isMsdiff && c.model.label_dim > 0) problems.push(`model.label_dim: model.kind "msdiff" is unconditional here, got ${c.model.label_dim}`);
  problems.push(...maskdmProblems(c));
  const imgChannels = c.model.img_channels ?? channels;
  if (imgChannels !== channels) problems.push(`model.img_channels: ${imgChannels} does not match the data's ${channels} channel(s)`);
  if (c.model.channel_mult.length === 0) problems.push('model.channel_mult: needs at least one level');
  const shortSide = typeof c.data.resolution === 'number' ? c.data.resolution : Math.min(...c.data.resolution);
  (c.train.patch_sizes ?? []).forEach((s, i) => {
    if (s > shortSide) problems.push(`train.patch_sizes[${i}]: ${s} is larger than the image (${shortSide})`);
  });
  if (c.train.steps !== undefined && c.train.duration_images !== undefined) {
    problems.push('train.duration_images: set either train.steps or train.duration_images, not both');
  }
  if (c.train.lr_schedule !== 'cosine' && c.train.warmup_images !== undefined) problems.push(`train.warmup_images: only used when train.lr_schedule is "cosine", not ${fmt(c.train.lr_schedule ?? 'edm')}`);
  if (c.train.lr_schedule === 'cosine' && isMsdiff) problems.push('train.lr_schedule: "cosine" decays over the run\'s optimizer steps, but model.kind "msdiff" gives each scale its own; use "edm"');
  if (c.train.init_from !== undefined && c.train.init_from.trim() === '') problems.push('train.init_from: expected a checkpoint or run folder, got ""');
  if (problems.length > 0) return left(new ConfigError(problems));
  const steps = c.train.steps === undefined && c.train.duration_images === undefined ? { steps: DEFAULT_STEPS } : {};
  const mask = c.train.mask?.kind === 'block' ? { mask: { block_size: 4, ...c.train.mask } } : {};
  const train = { ...c.train, ...steps, ...mask };
  const { uvit, ...unet } = c.model;
  const model = {
    ...unet, img_resolution: imgResolution, img_channels: imgChannels,
    ...(isMsdiff ? { haar_levels: c.model.haar_levels ?? 2 } : {}),
    ...(c.model.kind === 'maskdm' ? { uvit: uvitSettings(uvit) } : {}),
  };
  const resolved: TrainingConfig = { ...c, model, train };
  // Rules that need the derived fields: the UNet's levels against image and patch sizes, attention, memory.
  const architecture = architectureProblems(resolved);
  if (architecture.length > 0) return left(new ConfigError(architecture));
  const memory = memoryProblem(resolved, options.totalMemory ?? totalmem());
  return memory === undefined ? right(resolved) : left(new ConfigError([memory]));
}

/**
 * Decodes a user's partial config (already merged with any overrides) on top of the defaults.
 * `options.totalMemory` replaces os.totalmem() in the memory estimate (Infinity: no check).
 */
export function resolveConfig(user: unknown, overrides: unknown = {}, options: RuleOptions = {}): Either<ConfigError, TrainingConfig> {
  if (!isRecord(user)) return left(new ConfigError([`<root>: expected a JSON object, got ${fmt(user) ?? typeof user}`]));
  const merged = mergeConfig(mergeConfig(DEFAULTS, user), overrides);
  const decoded = Config.decode(merged);
  if (decoded._tag === 'Left') return left(new ConfigError(formatDecodeErrors(decoded.left)));
  return resolve(decoded.right, options);
}

/** The run's length in optimizer steps: train.steps, or train.duration_images in batches (rounded up). */
export function totalSteps(config: TrainingConfig): number {
  const t = config.train;
  return t.steps ?? Math.ceil((t.duration_images ?? 0) / t.batch_size);
}

/** Reads a JSON config file (or none) and applies command-line overrides. */
export async function loadConfig(path: string | undefined, args: readonly string[] = [], options: RuleOptions = {}): Promise<Either<ConfigError, TrainingConfig>> {
  let user: unknown = {};
  if (path !== undefined) {
    let text: string;
    try {
      text = await readFile(path, 'utf8');
    } catch (e) {
      return left(new ConfigError([`${path}: cannot be read: ${(e as Error).message}`]));
    }
    const parsed = parseJsonBounded(text);
    if (parsed._tag === 'Left') return left(new ConfigError([`${path}: ${parsed.left}`]));
    user = parsed.right;
  }
  const overrides = parseOverrides(args);
  if (overrides._tag === 'Left') return overrides;
  return resolveConfig(user, overrides.right, options);
}
