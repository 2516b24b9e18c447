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
 * defaults follow EDM's train.py and Patch Diffusion (real_p 0.5).
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

export const ModelConfig = strictStruct('model config', {
  /**
   * 'patch': Patch Diffusion's patch-conditioned model; 'edm': the plain EDM baseline; 'msdiff':
   * multi-scale non-uniform diffusion, one SongUNet of these settings per Haar scale.
   */
  kind: t.keyof({ patch: null, edm: null, msdiff: null }),
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
});

export const Backend = t.keyof({ cpu: null, webgpu: null, reference: null });

export const Config = strictStruct('config', { model: ModelConfig, data: DataConfig, train: TrainConfig }, { backend: Backend });
type DecodedConfig = t.TypeOf<typeof Config>;

/** A resolved config: defaults applied, derived fields filled, cross-field rules checked. */
export type TrainingConfig = Omit<DecodedConfig, 'model'> & {
  readonly model: DecodedConfig['model'] & { readonly img_resolution: Resolution; readonly img_channels: number };
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
  if (problems.length > 0) return left(new ConfigError(problems));
  const train = c.train.steps === undefined && c.train.duration_images === undefined ? { ...c.train, steps: DEFAULT_STEPS } : c.train;
  const model = { ...c.model, img_resolution: imgResolution, img_channels: imgChannels, ...(isMsdiff ? { haar_levels: c.model.haar_levels ?? 2 } : {}) };
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
