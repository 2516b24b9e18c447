/**
 * Batches from a dataset as a stream that depends only on (seed, position).
 *
 * The stream is an endless sequence of sample indices: epoch e is a seeded permutation of the
 * dataset, permutation(count, mix(seed, e)), and epochs follow one another without a seam, so a
 * batch may end one epoch and start the next (as EDM's InfiniteSampler does). A position is the
 * number of samples drawn so far. A batch reports the position after it, which is all a checkpoint
 * needs: resuming with `start: position` continues with exactly the samples that would have come.
 * Batch sizes may vary from step to step (Patch Diffusion draws more images for small patches);
 * `takeBatch` reads any size at any position.
 */
import { DataError } from '../errors.ts';
import type { Dataset } from './dataset.ts';
import { mixSeed, permutation } from './prng.ts';

/** A batch of images with their dataset indices, labels if any, and the stream position after it. */
export interface Batch {
  /** [size, C, H, W] in [-1, 1]. */
  readonly images: Float32Array;
  readonly shape: readonly [number, number, number, number];
  readonly labels?: Int32Array;
  /** Dataset index of each sample. */
  readonly indices: Uint32Array;
  /** The stream position after this batch: pass it as `start` to resume. */
  readonly position: number;
}

// One permutation per (dataset, seed, epoch) is kept: consecutive batches share an epoch, and a
// permutation of 70,000 indices is worth not recomputing for every batch.
const lastEpoch = new WeakMap<Dataset, { seed: number; epoch: number; order: Uint32Array }>();

function epochOrder(ds: Dataset, seed: number, epoch: number): Uint32Array {
  const cached = lastEpoch.get(ds);
  if (cached !== undefined && cached.seed === seed && cached.epoch === epoch) return cached.order;
  const order = permutation(ds.count, mixSeed(seed, epoch));
  lastEpoch.set(ds, { seed, epoch, order });
  return order;
}

function checkInteger(what: string, v: number, min: number): void {
  if (!Number.isSafeInteger(v) || v < min) throw new DataError(`batches: ${what} must be an integer >= ${min}, got ${v}`);
}

/**
 * The dataset index of the sample at stream `position`.
 * @example
 * const i = sampleIndex(ds, 1, 1000);                 // which image the stream of seed 1 yields at position 1000
 */
export function sampleIndex(ds: Dataset, seed: number, position: number): number {
  checkInteger('position', position, 0);
  return epochOrder(ds, seed, Math.floor(position / ds.count))[position % ds.count]!;
}

/**
 * The `batchSize` samples starting at stream `position`.
 * @example
 * const batch = takeBatch(ds, { seed: 1, position: savedPosition, batchSize: 64 });   // what batches() yields there
 * const x = tensor(batch.images, batch.shape);
 */
export function takeBatch(ds: Dataset, options: { readonly seed: number; readonly position: number; readonly batchSize: number }): Batch {
  const { seed, position, batchSize } = options;
  checkInteger('batchSize', batchSize, 1);
  checkInteger('position', position, 0);
  checkInteger('seed', seed, 0);
  if (ds.count < 1) throw new DataError('batches: the dataset is empty');
  const size = ds.channels * ds.height * ds.width;
  const images = new Float32Array(batchSize * size);
  const indices = new Uint32Array(batchSize);
  const labels = ds.labels === undefined ? undefined : new Int32Array(batchSize);
  for (let b = 0; b < batchSize; b++) {
    const i = sampleIndex(ds, seed, position + b);
    indices[b] = i;
    images.set(ds.get(i), b * size);
    if (labels !== undefined) labels[b] = ds.labels![i]!;
  }
  return Object.freeze({
    images,
    shape: Object.freeze([batchSize, ds.channels, ds.height, ds.width] as const),
    indices,
    position: position + batchSize,
    ...(labels === undefined ? {} : { labels }),
  });
}

/** Options of `batches`: batch size, seed, and the position to start (or resume) at. */
export interface BatchOptions {
  readonly batchSize: number;
  readonly seed: number;
  /** Stream position to start at (default 0): a previous batch's `position` to resume. */
  readonly start?: number;
}

/**
 * An endless stream of batches; stop it by breaking out of the loop.
 * @example
 * ```ts
 * const ds = xflipDataset(await loadMnist('mnist', { resolution: 32 }));
 * for await (const batch of batches(ds, { batchSize: 64, seed: 0 })) {
 *   const x = tensor(batch.images, batch.shape);        // [64, 1, 32, 32] in [-1, 1]
 *   if (batch.position >= 64 * 100) break;               // save batch.position to resume with `start`
 * }
 * ```
 */
export async function* batches(ds: Dataset, options: BatchOptions): AsyncGenerator<Batch, never, undefined> {
  let position = options.start ?? 0;
  for (;;) {
    const batch = takeBatch(ds, { seed: options.seed, position, batchSize: options.batchSize });
    position = batch.position;
    yield batch;
  }
}
