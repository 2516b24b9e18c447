/**
 * Patch Diffusion's patch schedule (Wang et al. 2023, Sec. 3.2 and the reference code's
 * `train_patch`): one patch size per step, drawn from {R/4, R/2, R} with probabilities
 * ((1-p)*2/5, (1-p)*3/5, p), or the progressive alternative; each sample cut at its own uniformly
 * random corner; small patches come with a larger batch. Everything here is host-side and a pure
 * function of (seed, step), so a resumed run draws exactly what an uninterrupted one would.
 */
import { ShapeError } from '../core/index.ts';

export interface PatchScheduleOptions {
  readonly height: number;
  readonly width: number;
  /** Probability of a full-resolution step (`real_p`, default 0.5). */
  readonly realP: number;
  /** Divisors of the resolution for the three sizes, default [4, 2, 1] (R/4, R/2, R). */
  readonly divisors?: readonly [number, number, number];
  /** 'auto': R / size (x4 for R/4, x2 for R/2, as the paper at R = 64); or a factor per divisor. */
  readonly batchMultiplier?: 'auto' | Readonly<Record<string, number>>;
  /** R/4 for the first 20% of training, R/2 until 50%, then R (the paper's ablation). */
  readonly progressive?: boolean;
  readonly totalSteps?: number;
}

export interface PatchChoice {
  /** Resolution divisor: 1 is the full image. */
  readonly divisor: number;
  readonly height: number;
  readonly width: number;
  /** Samples in this step's batch. */
  readonly batchSize: number;
}

/** SplitMix32-style hash of (seed, step, stream) to a uniform in [0, 1): stateless, so resumable. */
export function hashUniform(seed: number, step: number, stream: number): number {
  let h = (Math.imul(seed | 0, 0x9e3779b1) ^ Math.imul(step | 0, 0x85ebca6b) ^ Math.imul(stream | 0, 0xc2b2ae35)) >>> 0;
  h = Math.imul(h ^ (h >>> 16), 0x21f0aaad);
  h = Math.imul(h ^ (h >>> 15), 0x735a2d97);
  h ^= h >>> 15;
  return (h >>> 0) / 4294967296;
}

export function patchChoice(o: PatchScheduleOptions, step: number, seed: number, baseBatch: number): PatchChoice {
  const divisors = o.divisors ?? [4, 2, 1];
  if (!(o.realP >= 0 && o.realP <= 1)) throw new ShapeError(`patch schedule: real_p must be in [0, 1], got ${o.realP}`);
  let divisor: number;
  if (o.progressive === true) {
    const total = o.totalSteps ?? 0;
    if (total <= 0) throw new ShapeError('patch schedule: the progressive schedule needs totalSteps > 0');
    const frac = step / total;
    divisor = frac < 0.2 ? divisors[0] : frac < 0.5 ? divisors[1] : divisors[2];
  } else {
    const u = hashUniform(seed, step, 0);
    const p0 = (1 - o.realP) * (2 / 5);
    const p1 = (1 - o.realP) * (3 / 5);
    divisor = u < p0 ? divisors[0] : u < p0 + p1 ? divisors[1] : divisors[2];
  }
  const height = Math.floor(o.height / divisor);
  const width = Math.floor(o.width / divisor);
  if (height < 1 || width < 1) throw new ShapeError(`patch schedule: divisor ${divisor} leaves no pixels of ${o.height}x${o.width}`);
  const m = o.batchMultiplier ?? 'auto';
  const mult = m === 'auto' ? divisor : m[String(divisor)] ?? 1;
  if (!Number.isInteger(mult) || mult < 1) throw new ShapeError(`patch schedule: batch multiplier for divisor ${divisor} must be an integer >= 1, got ${mult}`);
  return { divisor, height, width, batchSize: baseBatch * mult };
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
