/**
 * A folder of PNG and JPEG images (searched recursively, other files ignored) as a dataset of
 * H x W images, each centre-cropped and area-resized (see resize.ts), RGB or grey.
 *
 * The folder is validated when opened: every image the dataset will use is decoded then, so a
 * corrupt file is reported by path before training starts rather than hours into it. A corrupt
 * image fails the open unless `skipCorrupt` is set; then it is left out and listed in `skipped`.
 * Files are taken in sorted path order, so the same folder gives the same dataset everywhere.
 * With `limit`, images are visited in a seeded order and the first `limit` good ones are kept,
 * so only those are decoded.
 */
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { left, right, type Either } from 'fp-ts/lib/Either.js';
import { DataError } from '../errors.ts';
import { limitOrder, pixelDataset, type Dataset } from './dataset.ts';
import { decodeImage } from './decodeImage.ts';
import { cropResize } from './resize.ts';

/** Options of `openImageFolder`: the size images are cropped and resized to, channels, a seeded limit. */
export interface ImageFolderOptions {
  readonly height: number;
  readonly width: number;
  /** 3 for RGB (default), 1 for grey. */
  readonly channels?: 1 | 3;
  /** Keep at most this many images, chosen by `seed`. */
  readonly limit?: number;
  readonly seed?: number;
  /** Leave out images that cannot be decoded (listed in `skipped`) instead of failing. */
  readonly skipCorrupt?: boolean;
}

/** An image `openImageFolder` left out (with `skipCorrupt`), and why. */
export interface SkippedImage {
  readonly path: string;
  readonly reason: string;
}

/** A dataset of the images under a folder, with their paths and the images skipped. */
export interface ImageFolderDataset extends Dataset {
  readonly root: string;
  /** Path of each image relative to `root`, in dataset order. */
  readonly files: readonly string[];
  readonly skipped: readonly SkippedImage[];
}

const IMAGE_EXTENSION = /\.(png|jpe?g)$/i;
// Decode a few files at a time: enough to overlap reads with decoding, few enough to bound memory.
const CONCURRENCY = 8;

/**
 * Opens every PNG and JPEG under `root` (recursively, in sorted order) as a dataset, each image centre-cropped
 * and area-resized to `height` x `width`. A Left names the folder or file that could not be used.
 * @example
 * ```ts
 * const ds = orThrow(await openImageFolder('data/faces', { height: 64, width: 64 }));
 * ```
 */
export async function openImageFolder(root: string, options: ImageFolderOptions): Promise<Either<DataError, ImageFolderDataset>> {
  const { height, width, channels = 3, limit, seed = 0, skipCorrupt = false } = options;
  for (const [name, v] of [['height', height], ['width', width]] as const) {
    if (!Number.isInteger(v) || v < 1) return left(new DataError(`${root}: ${name} must be an integer >= 1, got ${v}`));
  }
  if (limit !== undefined && (!Number.isInteger(limit) || limit < 1)) return left(new DataError(`${root}: limit must be an integer >= 1, got ${limit}`));
  let all: string[];
  try {
    all = (await readdir(root, { recursive: true })).filter((f) => IMAGE_EXTENSION.test(f)).sort();
  } catch (e) {
    return left(new DataError(`${root}: cannot list the image folder (${(e as Error).message})`));
  }
  if (all.length === 0) return left(new DataError(`${root}: no .png, .jpg or .jpeg files found`));

  const wanted = Math.min(limit ?? all.length, all.length);
  const order = limit === undefined ? Uint32Array.from(all.keys()) : limitOrder(all.length, seed);
  const size = channels * height * width;
  const kept: { index: number; pixels: Uint8Array }[] = [];
  const skipped: SkippedImage[] = [];
  for (let next = 0; kept.length < wanted && next < order.length;) {
    const chunk = Array.from(order.subarray(next, next + Math.min(CONCURRENCY, wanted - kept.length)));
    next += chunk.length;
    const results = await Promise.all(chunk.map(async (index) => {
      const path = join(root, all[index]!);
      const bytes = await readFile(path).catch((e: Error) => e);
      if (bytes instanceof Error) return { index, path, error: `cannot be read (${bytes.message})` };
      const img = decodeImage(bytes, channels);
      if (img._tag === 'Left') return { index, path, error: img.left };
      const { pixels, width: w, height: h } = img.right;
      const resized = w === width && h === height ? pixels : cropResize(pixels, channels, h, w, height, width);
      return { index, path, pixels: Uint8Array.from(resized, (v) => Math.round(v)) };
    }));
    for (const r of results) {
      if (r.pixels !== undefined) kept.push({ index: r.index, pixels: r.pixels });
      else if (skipCorrupt) skipped.push({ path: r.path, reason: r.error });
      else return left(new DataError(`${r.path}: ${r.error} (pass skipCorrupt: true to leave corrupt images out)`));
    }
  }
  if (kept.length === 0) return left(new DataError(`${root}: none of the ${all.length} images could be decoded (${skipped.length} skipped)`));

  kept.sort((a, b) => a.index - b.index);
  const pixels = new Uint8Array(kept.length * size);
  kept.forEach((k, i) => pixels.set(k.pixels, i * size));
  const dataset = pixelDataset({ count: kept.length, channels, height, width, pixels });
  return right(Object.freeze({
    ...dataset,
    root,
    files: Object.freeze(kept.map((k) => all[k.index]!)),
    skipped: Object.freeze(skipped),
  }));
}
