/**
 * Rules of a training config that depend on several fields at once, checked when the config is
 * resolved so that nonsense fails at once with the field's path instead of deep inside a run:
 *
 *  - every image and patch side must survive the UNet's halvings (model.channel_mult levels);
 *  - train.patch_sizes are three sizes (small, medium, full) for the three probabilities
 *    ((1-p) 2/5, (1-p) 3/5, p), each dividing the image, the last the image itself;
 *  - train.batch_multiplier names only patch sizes that are drawn;
 *  - model.attn_resolutions name resolutions some level has (else attention never runs);
 *  - every block's channel count can be split into GroupNorm's groups;
 *  - a rough memory estimate of training must fit in the machine's memory.
 *
 * A maskdm model (a U-ViT) has no UNet levels: its own rules are in config.ts, and its memory
 * estimate counts tokens.
 *
 * Each problem is one line starting with the path of the field to change.
 */
import type { TrainingConfig } from './config.ts';

/** Images per dataset when `data.limit` is absent; folders are unknown until opened. */
const DATASET_IMAGES: Record<TrainingConfig['data']['name'], number | undefined> = { mnist: 10_000, 'fashion-mnist': 70_000, folder: undefined };

export interface RuleOptions {
  /** Bytes of memory to compare the estimate against (default os.totalmem()); Infinity skips the check. */
  readonly totalMemory?: number;
}

function sides(r: TrainingConfig['model']['img_resolution']): [number, number] {
  return typeof r === 'number' ? [r, r] : r;
}

/** The patch sizes a run would draw, as patches.ts does: default R/4, R/2, R (of the height). */
function drawnSizes(c: TrainingConfig, height: number): number[] {
  return c.train.patch_sizes ?? [Math.max(1, Math.floor(height / 4)), Math.max(1, Math.floor(height / 2)), height];
}

/** Whether steps on patches smaller than the image happen at all (only the patch model's do). */
export function drawsPatches(c: TrainingConfig): boolean {
  return c.model.kind === 'patch' && (c.train.real_p < 1 || c.train.progressive);
}

/** A patch's width for a patch height, as patches.ts `patchChoice` computes it. */
function patchWidth(size: number, height: number, width: number): number {
  return size === height ? width : Math.max(1, Math.round((size * width) / height));
}

/** Images per step for a patch size, as patches.ts `patchChoice` computes it. */
function batchFor(c: TrainingConfig, size: number, height: number): number {
  const m = c.train.batch_multiplier ?? 'auto';
  const mult = m === 'auto' ? Math.max(1, Math.round(height / size)) : m[String(size)] ?? 1;
  return c.train.batch_size * mult;
}

/** Problems with the UNet's levels, the patch sizes, the batch multipliers and attention. */
export function architectureProblems(c: TrainingConfig): string[] {
  if (c.model.kind === 'maskdm') return [];
  const problems: string[] = [];
  const [height, width] = sides(c.model.img_resolution);
  const levels = c.model.channel_mult.length;
  const factor = 2 ** Math.max(0, levels - 1);
  const needs = `model.channel_mult's ${levels} levels halve the image ${levels - 1} time(s), so every side must be a multiple of ${factor}`;

  const badSides = [height, width].filter((s) => s % factor !== 0);
  if (badSides.length > 0) {
    problems.push(`data.resolution: ${JSON.stringify(c.data.resolution)} does not fit the UNet: ${needs}; use such a resolution or fewer levels`);
  }

  const explicit = c.train.patch_sizes;
  if (explicit !== undefined) {
    if (explicit.length !== 3) {
      problems.push(`train.patch_sizes: expected 3 sizes [small, medium, full], drawn with probabilities (1-p)*2/5, (1-p)*3/5 and p = train.real_p, got ${explicit.length}`);
    } else {
      if (explicit[2] !== height) problems.push(`train.patch_sizes[2]: the full-size patch, drawn with probability train.real_p, must be the image height ${height}, got ${explicit[2]}`);
      if (!(explicit[0]! <= explicit[1]! && explicit[1]! <= explicit[2]!)) problems.push(`train.patch_sizes: expected sizes in increasing order [small, medium, full], got ${JSON.stringify(explicit)}`);
    }
    explicit.forEach((s, i) => {
      if (s > height) return; // reported by config.ts as larger than the image
      if (height % s !== 0) problems.push(`train.patch_sizes[${i}]: ${s} does not divide the image height ${height}`);
      else if (s % factor !== 0 || patchWidth(s, height, width) % factor !== 0) {
        problems.push(`train.patch_sizes[${i}]: a ${s}x${patchWidth(s, height, width)} patch does not fit the UNet: ${needs}`);
      }
    });
  } else if (drawsPatches(c) && badSides.length === 0) {
    const defaults = drawnSizes(c, height);
    const bad = defaults.filter((s) => s % factor !== 0 || patchWidth(s, height, width) % factor !== 0);
    if (bad.length > 0) {
      problems.push(`train.patch_sizes: the default sizes ${JSON.stringify(defaults)} (R/4, R/2, R) include ${bad.join(', ')}, which do not fit the UNet: ${needs}; set train.patch_sizes, use fewer levels, or train on full images (train.real_p = 1)`);
    }
  }

  const multiplier = c.train.batch_multiplier;
  if (multiplier !== undefined && multiplier !== 'auto') {
    const drawn = drawsPatches(c) ? drawnSizes(c, height) : [height];
    for (const key of Object.keys(multiplier)) {
      if (!drawn.includes(Number(key))) problems.push(`train.batch_multiplier.${key}: ${key} is not one of the patch sizes drawn, ${JSON.stringify(drawn)}, so it would never apply`);
    }
  }

  problems.push(...groupNormProblems(c));

  // MSDiff: one network per scale k at R / 2^k, each of which must survive the UNet's halvings.
  const scaleSides = c.model.kind === 'msdiff' ? Array.from({ length: (c.model.haar_levels ?? 2) + 1 }, (_, k) => height / 2 ** k) : [height];
  const coarsest = scaleSides[scaleSides.length - 1]!;
  if (c.model.kind === 'msdiff' && badSides.length === 0 && (!Number.isInteger(coarsest) || coarsest % factor !== 0)) {
    problems.push(`model.haar_levels: ${scaleSides.length - 1} Haar levels take the image to ${coarsest}x${coarsest}, where the coarsest network must still fit the UNet: ${needs}; use fewer Haar levels or fewer UNet levels`);
  }
  const levelResolutions = [...new Set(scaleSides.flatMap((side) => c.model.channel_mult.map((_, l) => side >> l)))];
  c.model.attn_resolutions.forEach((r, i) => {
    if (!levelResolutions.includes(r)) {
      problems.push(`model.attn_resolutions[${i}]: no level has resolution ${r} (the levels are ${levelResolutions.join(', ')}), so this attention would never run`);
    }
  });
  return problems;
}

/** GroupNorm's group count for a channel count, as models/nn.ts chooses it (EDM: min(32, C / 4)). */
const groupsFor = (channels: number): number => Math.min(32, Math.floor(channels / 4));

/**
 * Every UNet block normalises its input and output channels in groups of at least four that must
 * divide the channel count. The counts follow the network's channel flow (models/songunet.ts):
 * the encoder's blocks, and the decoder's, whose inputs concatenate a skip connection.
 */
function groupNormProblems(c: TrainingConfig): string[] {
  const { model_channels: base, channel_mult: mult, num_blocks: blocks } = c.model;
  const counts = new Set<number>();
  let cout = base;
  const skips = [cout];
  mult.forEach((m, level) => {
    if (level > 0) skips.push(cout);
    for (let b = 0; b < blocks; b++) {
      counts.add(cout);
      cout = base * m;
      counts.add(cout);
      skips.push(cout);
    }
  });
  for (let level = mult.length - 1; level >= 0; level--) {
    counts.add(cout);
    for (let b = 0; b <= blocks; b++) {
      counts.add(cout + (skips.pop() ?? 0));
      cout = base * mult[level]!;
      counts.add(cout);
    }
  }
  const bad = [...counts].filter((n) => groupsFor(n) < 1 || n % groupsFor(n) !== 0).sort((a, b) => a - b);
  if (bad.length === 0) return [];
  return [`model.model_channels: the UNet's blocks would have ${bad.join(', ')} channels, which GroupNorm cannot split into groups (min(32, channels / 4) groups must divide the channels; at least 4 channels); change model.model_channels or model.channel_mult`];
}

export interface MemoryEstimate {
  readonly total: number;
  readonly activations: number;
  readonly attention: number;
  readonly weights: number;
  readonly dataset: number;
  /** The step shape that needs the most: images and patch size. */
  readonly worstStep: { readonly images: number; readonly height: number; readonly width: number };
}

/**
 * A rough estimate of the bytes a training run holds at its peak: float32 activations kept for
 * the backward pass (about four tensors per UNet block), attention score matrices, weights with
 * EMA, gradient and Adam's two moments (five copies), and the dataset's 8-bit pixels. Meant to
 * catch configs that are off by orders of magnitude, not to budget a machine.
 */
export function estimateTrainingMemory(c: TrainingConfig): MemoryEstimate {
  const [height, width] = sides(c.model.img_resolution);
  const m = c.model;
  const images = c.data.limit ?? DATASET_IMAGES[c.data.name] ?? 0;
  const dataset = images * m.img_channels * height * width;
  if (m.kind === 'maskdm' && m.uvit !== undefined) return uvitMemory(c, m.uvit, dataset);
  const blocksPerLevel = 2 * m.num_blocks + 1;
  const channels = m.channel_mult.map((mult) => m.model_channels * mult);
  const steps = (drawsPatches(c) ? drawnSizes(c, height) : [height]).map((s) => ({ images: batchFor(c, s, height), height: s, width: patchWidth(s, height, width) }));

  let activations = 0;
  let attention = 0;
  let worstStep = steps[0]!;
  for (const step of steps) {
    let act = 0;
    let att = 0;
    channels.forEach((ch, l) => {
      const pixels = Math.max(1, step.height >> l) * Math.max(1, step.width >> l);
      act += step.images * ch * pixels * blocksPerLevel * 4 * 4;
      const attentionBlocks = (m.attn_resolutions.includes(height >> l) ? m.num_blocks + 1 : 0) + (l === channels.length - 1 ? 1 : 0);
      att += attentionBlocks * step.images * pixels * pixels * 4 * 2;
    });
    if (act + att > activations + attention) {
      activations = act;
      attention = att;
      worstStep = step;
    }
  }
  const params = channels.reduce((sum, ch) => sum + blocksPerLevel * 20 * ch * ch, 0);
  const weights = params * 4 * 5;
  return { total: activations + attention + weights + dataset, activations, attention, weights, dataset, worstStep };
}

/**
 * A U-ViT's share: per block about (6 + 2 mlp_ratio) float32 token-width tensors kept for the
 * backward pass and the heads' score matrices twice (softmax input and output), over every token
 * (a mask only lowers it); weights about (4 + 2 mlp_ratio) D^2 per block, five copies.
 */
function uvitMemory(c: TrainingConfig, u: NonNullable<TrainingConfig['model']['uvit']>, dataset: number): MemoryEstimate {
  const [height, width] = sides(c.model.img_resolution);
  const tokens = 1 + (height / u.patch_size) * (width / u.patch_size);
  const b = c.train.batch_size;
  const activations = u.depth * b * tokens * u.embed_dim * (6 + 2 * u.mlp_ratio) * 4;
  const attention = u.depth * b * u.num_heads * tokens * tokens * 4 * 2;
  const weights = u.depth * (4 + 2 * u.mlp_ratio) * u.embed_dim * u.embed_dim * 4 * 5;
  return { total: activations + attention + weights + dataset, activations, attention, weights, dataset, worstStep: { images: b, height, width } };
}

const gib = (bytes: number): string => `${(bytes / 2 ** 30).toFixed(bytes < 2 ** 30 ? 2 : 1)} GiB`;

/** A problem line when the estimate exceeds `totalMemory`, naming the field that weighs most. */
export function memoryProblem(c: TrainingConfig, totalMemory: number): string | undefined {
  const e = estimateTrainingMemory(c);
  if (!(e.total > totalMemory)) return undefined;
  const parts: [number, string, string][] = [
    [e.activations, 'train.batch_size', `activations ${gib(e.activations)} for ${e.worstStep.images} images of ${e.worstStep.height}x${e.worstStep.width}`],
    [e.attention, c.model.kind === 'maskdm' ? 'model.uvit.patch_size' : 'model.attn_resolutions', `attention ${gib(e.attention)}`],
    [e.weights, c.model.kind === 'maskdm' ? 'model.uvit.embed_dim' : 'model.model_channels', `weights and optimizer state ${gib(e.weights)}`],
    [e.dataset, e.dataset > 0 && c.data.limit !== undefined ? 'data.limit' : 'data.resolution', `dataset ${gib(e.dataset)}`],
  ];
  const [, field] = parts.reduce((a, b) => (b[0] > a[0] ? b : a));
  return `${field}: training would need roughly ${gib(e.total)} (${parts.map((p) => p[2]).join(', ')}), more than this machine's ${gib(totalMemory)} of memory; lower ${field}`;
}
