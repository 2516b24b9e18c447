/**
 * Patch Diffusion's patch schedule (Wang et al. 2023, Sec. 3.2 and the reference code's
 * `train_patch`): one patch size per step, drawn from {R/4, R/2, R} with probabilities
 * ((1-p)*2/5, (1-p)*3/5, p), or the progressive alternative; each sample cut at its own uniformly
 * random corner; small patches come with a larger batch. Everything here is host-side and a pure
 * function of (seed, step), so a resumed run draws exactly what an uninterrupted one would.
 */
import { ShapeError } from '../core/index.ts';
import { mixSeed, splitmix32 } from './data/prng.ts';

export interface PatchScheduleOptions {
  readonly height: number;
  readonly width: number;
  /** Probability of a full-resolution step (`real_p`, default 0.5). */
  readonly realP: number;
  /** The three patch heights (small, medium, full), default [H/4, H/2, H]; widths keep the aspect ratio. */
  readonly sizes?: readonly [number, number, number];
  /** 'auto': H / size images per base sample (x4 for R/4, x2 for R/2, as the paper); or a factor per size. */
  readonly batchMultiplier?: 'auto' | Readonly<Record<string, number>>;
  /** R/4 for the first 20% of training, R/2 until 50%, then R (the paper's ablation). */
  readonly progressive?: boolean;
  readonly totalSteps?: number;
}

export interface PatchChoice {
  readonly height: number;
  readonly width: number;
  /** Samples in this step's batch. */
  readonly batchSize: number;
}

/** A uniform in [0, 1) from (seed, step, stream): stateless, so a resumed run draws the same. */
export function hashUniform(seed: number, step: number, stream: number): number {
  return splitmix32(mixSeed(seed, step, stream))() / 4294967296;
}

export function defaultPatchSizes(height: number): [number, number, number] {
  return [Math.max(1, Math.floor(height / 4)), Math.max(1, Math.floor(height / 2)), height];
}

export function patchChoice(o: PatchScheduleOptions, step: number, seed: number, baseBatch: number): PatchChoice {
  const sizes = o.sizes ?? defaultPatchSizes(o.height);
  if (!(o.realP >= 0 && o.realP <= 1)) throw new ShapeError(`patch schedule: real_p must be in [0, 1], got ${o.realP}`);
  for (const s of sizes) {
    if (!Number.isInteger(s) || s < 1 || s > o.height) throw new ShapeError(`patch schedule: patch size ${s} must be an integer in [1, ${o.height}]`);
  }
  let size: number;
  if (o.progressive === true) {
    const total = o.totalSteps ?? 0;
    if (total <= 0) throw new ShapeError('patch schedule: the progressive schedule needs totalSteps > 0');
    const frac = step / total;
    size = frac < 0.2 ? sizes[0] : frac < 0.5 ? sizes[1] : sizes[2];
  } else {
    const u = hashUniform(seed, step, 0);
    const p0 = (1 - o.realP) * (2 / 5);
    const p1 = (1 - o.realP) * (3 / 5);
    size = u < p0 ? sizes[0] : u < p0 + p1 ? sizes[1] : sizes[2];
  }
  const width = size === o.height ? o.width : Math.max(1, Math.round((size * o.width) / o.height));
  const m = o.batchMultiplier ?? 'auto';
  const mult = m === 'auto' ? Math.max(1, Math.round(o.height / size)) : m[String(size)] ?? 1;
  if (!Number.isInteger(mult) || mult < 1) throw new ShapeError(`patch schedule: batch multiplier for patch size ${size} must be an integer >= 1, got ${mult}`);
  return { height: size, width, batchSize: baseBatch * mult };
}

export interface Crops {
  /** [B, C, h, w] */
  readonly patches: Float32Array;
  /** Per-sample top-left corners (rows, columns) in the full image. */
  readonly top: Int32Array;
  readonly left: Int32Array;
}

/**
 * Cuts one patch per image at a uniformly random corner in [0, H-h] x [0, W-w] (no padding; a full
 * size crop sits at (0, 0)), drawn from (seed, step).
 */
export function cropPatches(images: Float32Array, shape: readonly [number, number, number, number], h: number, w: number, seed: number, step: number): Crops {
  const [b, c, H, W] = shape;
  if (h > H || w > W) throw new ShapeError(`cropPatches: patch ${h}x${w} larger than image ${H}x${W}`);
  const patches = new Float32Array(b * c * h * w);
  const top = new Int32Array(b);
  const left = new Int32Array(b);
  for (let i = 0; i < b; i++) {
    const y0 = Math.floor(hashUniform(seed, step, 1 + 2 * i) * (H - h + 1));
    const x0 = Math.floor(hashUniform(seed, step, 2 + 2 * i) * (W - w + 1));
    top[i] = y0;
    left[i] = x0;
    for (let ch = 0; ch < c; ch++) {
      for (let y = 0; y < h; y++) {
        const src = ((i * c + ch) * H + y0 + y) * W + x0;
        patches.set(images.subarray(src, src + w), ((i * c + ch) * h + y) * w);
      }
    }
  }
  return { patches, top, left };
}
