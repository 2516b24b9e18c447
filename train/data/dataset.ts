/**
 * A dataset is an immutable value: a count, an image shape, and `get(i)`, which returns image i as
 * a fresh Float32Array [C, H, W] with values in [-1, 1] (EDM's convention: pixel / 127.5 - 1).
 * Sources store 8-bit pixels, as EDM's preprocessed datasets do, and convert on `get`, so memory is
 * one byte per value. Subsets and x-flips are new datasets over the same pixels.
 */
import { DataError } from '../errors.ts';
import { mixSeed, permutation } from './prng.ts';

/**
 * An immutable image dataset: `get(i)` returns image i as [C, H, W] values in [-1, 1].
 * Make one with `pixelDataset`, `loadMnist` or `openImageFolder`; batch it with `batches`.
 */
export interface Dataset {
  readonly count: number;
  readonly channels: number;
  readonly height: number;
  readonly width: number;
  /** Image i as [C, H, W] in [-1, 1]; a new array each call. */
  get(i: number): Float32Array;
  /** Class label of each image, when the source has labels. */
  readonly labels?: readonly number[];
  /** Number of classes (labels are in [0, classCount)). */
  readonly classCount?: number;
}

function checkIndex(ds: { count: number }, i: number): void {
  if (!Number.isInteger(i) || i < 0 || i >= ds.count) throw new DataError(`dataset: index ${i} is out of range [0, ${ds.count})`);
}

/** 8-bit images (and optional labels) for `pixelDataset`. */
export interface PixelSource {
  readonly count: number;
  readonly channels: number;
  readonly height: number;
  readonly width: number;
  /** [count, C, H, W] 8-bit pixels. Not copied: the caller hands it over and never changes it. */
  readonly pixels: Uint8Array;
  readonly labels?: readonly number[];
  readonly classCount?: number;
}

/**
 * A dataset over 8-bit pixels.
 * @example
 * const pixels = new Uint8Array(10 * 1 * 2 * 2);     // [count, C, H, W]
 * const ds = pixelDataset({ count: 10, channels: 1, height: 2, width: 2, pixels });
 * ds.get(0);                                          // Float32Array [1, 2, 2], values pixel / 127.5 - 1
 */
export function pixelDataset(src: PixelSource): Dataset {
  const size = src.channels * src.height * src.width;
  if (src.pixels.length !== src.count * size) {
    throw new DataError(`dataset: ${src.pixels.length} pixels do not fill ${src.count} images of ${src.channels}x${src.height}x${src.width}`);
  }
  if (src.labels !== undefined && src.labels.length !== src.count) throw new DataError(`dataset: ${src.labels.length} labels for ${src.count} images`);
  return Object.freeze({
    count: src.count,
    channels: src.channels,
    height: src.height,
    width: src.width,
    get(i: number): Float32Array {
      checkIndex(src, i);
      const out = new Float32Array(size);
      const base = i * size;
      for (let k = 0; k < size; k++) out[k] = src.pixels[base + k]! / 127.5 - 1;
      return out;
    },
    ...(src.labels === undefined ? {} : { labels: Object.freeze([...src.labels]), classCount: src.classCount }),
  });
}

/**
 * The images at `indices` (in that order).
 * @example
 * const evens = subsetDataset(ds, [0, 2, 4, 6]);      // 4 images; evens.get(1) is ds.get(2)
 */
export function subsetDataset(ds: Dataset, indices: readonly number[]): Dataset {
  for (const i of indices) checkIndex(ds, i);
  const idx = Object.freeze([...indices]);
  return Object.freeze({
    count: idx.length,
    channels: ds.channels,
    height: ds.height,
    width: ds.width,
    get(i: number): Float32Array {
      checkIndex({ count: idx.length }, i);
      return ds.get(idx[i]!);
    },
    ...(ds.labels === undefined ? {} : { labels: Object.freeze(idx.map((i) => ds.labels![i]!)), classCount: ds.classCount }),
  });
}

/**
 * The order in which a seeded subset picks items: a seeded subset of `limit` items is the first
 * `limit` of this permutation (skipping unusable ones, for sources that have them).
 */
export function limitOrder(count: number, seed: number): Uint32Array {
  return permutation(count, mixSeed(seed, 0x5eed));
}

/**
 * A seeded subset of `limit` images, the paper's small-data regime (e.g. 5,000 images), kept in
 * ascending index order (a subset, not a reordering: batching shuffles anyway). The whole dataset
 * when `limit` is undefined or at least its count.
 * @example
 * const small = limitDataset(await loadMnist('mnist'), 5000, 0);   // the same 5,000 images for seed 0
 */
export function limitDataset(ds: Dataset, limit: number | undefined, seed: number): Dataset {
  if (limit === undefined || limit >= ds.count) return ds;
  if (!Number.isInteger(limit) || limit < 1) throw new DataError(`dataset: limit must be an integer >= 1, got ${limit}`);
  const chosen = Array.from(limitOrder(ds.count, seed).subarray(0, limit)).sort((a, b) => a - b);
  return subsetDataset(ds, chosen);
}

/**
 * X-flip augmentation as EDM does it: the dataset doubled, images [N, 2N) being the mirror images
 * of [0, N). Deterministic, so a data position means the same images on resume.
 * @example
 * const doubled = xflipDataset(ds);                   // doubled.count = 2 * ds.count; image ds.count + i mirrors image i
 */
export function xflipDataset(ds: Dataset): Dataset {
  const n = ds.count;
  const { channels: c, height: h, width: w } = ds;
  return Object.freeze({
    count: 2 * n,
    channels: c,
    height: h,
    width: w,
    get(i: number): Float32Array {
      checkIndex({ count: 2 * n }, i);
      const img = ds.get(i % n);
      if (i < n) return img;
      for (let row = 0; row < c * h; row++) img.subarray(row * w, (row + 1) * w).reverse();
      return img;
    },
    ...(ds.labels === undefined ? {} : { labels: Object.freeze([...ds.labels, ...ds.labels]), classCount: ds.classCount }),
  });
}
