/**
 * Nearest training images of generated samples, by L2 distance in pixel space (values in [-1, 1]):
 * the visual check for memorisation that a small-data run needs, since a model that reproduces its
 * training images scores well on FD too. Pixel space, not classifier features: copying is a pixel
 * property, and a feature-space neighbour of a new digit is any digit of its class.
 *
 * `nearestImages` finds them, `neighbourGridPng` draws each sample beside its neighbours, and
 * `medianNearestDistance` summarises how close a set sits to the training images: a model that
 * copies puts its samples nearer to them than held-out real images of the same distribution are.
 */
import type { Dataset } from '../data/dataset.ts';
import { DataError } from '../errors.ts';
import { imageGridPng } from '../images.ts';
import type { HostImages } from './features.ts';

/** The `k` nearest training images of each query, nearest first: indices into the dataset and L2 distances. */
export interface Neighbours {
  readonly k: number;
  /** [queries, k] */
  readonly index: Int32Array;
  readonly distance: Float64Array;
}

/** The dataset's images as one array [count, C*H*W], read once for many queries. */
function allPixels(ds: Dataset): Float32Array {
  const size = ds.channels * ds.height * ds.width;
  const out = new Float32Array(ds.count * size);
  for (let i = 0; i < ds.count; i++) out.set(ds.get(i), i * size);
  return out;
}

/**
 * The `k` nearest images of `train` to each query image (exhaustive search).
 * @example
 * const nn = nearestImages(samples, trainingSubset, 3);   // nn.index[q * 3] is sample q's nearest training image
 */
export function nearestImages(queries: HostImages, train: Dataset, k: number): Neighbours {
  const size = train.channels * train.height * train.width;
  if (train.height !== queries.side || train.width !== queries.side || queries.data.length !== queries.count * size) {
    throw new DataError(`nearestImages: queries are ${queries.side}x${queries.side}, the training images ${train.channels}x${train.height}x${train.width}`);
  }
  if (!(Number.isInteger(k) && k >= 1 && k <= train.count)) throw new DataError(`nearestImages: k must be an integer in [1, ${train.count}], got ${k}`);
  const pixels = allPixels(train);
  const index = new Int32Array(queries.count * k).fill(-1);
  const distance = new Float64Array(queries.count * k).fill(Infinity);
  for (let q = 0; q < queries.count; q++) {
    const query = queries.data.subarray(q * size, (q + 1) * size);
    const best = distance.subarray(q * k, (q + 1) * k);
    const bestIndex = index.subarray(q * k, (q + 1) * k);
    for (let i = 0; i < train.count; i++) {
      let d = 0;
      const base = i * size;
      for (let p = 0; p < size; p++) d += (query[p]! - pixels[base + p]!) ** 2;
      if (d >= best[k - 1]!) continue;
      // Insert into the sorted top k.
      let at = k - 1;
      while (at > 0 && best[at - 1]! > d) {
        best[at] = best[at - 1]!;
        bestIndex[at] = bestIndex[at - 1]!;
        at--;
      }
      best[at] = d;
      bestIndex[at] = i;
    }
  }
  return { k, index, distance: distance.map(Math.sqrt) };
}

/**
 * The median over queries of the distance to the nearest training image.
 * @example
 * const ratio = medianNearestDistance(nearestImages(samples, train, 1)) / medianNearestDistance(nearestImages(heldOut, train, 1));
 */
export function medianNearestDistance(nn: Neighbours): number {
  const nearest = Array.from({ length: nn.index.length / nn.k }, (_, q) => nn.distance[q * nn.k]!).sort((a, b) => a - b);
  const n = nearest.length;
  if (n === 0) return NaN;
  return n % 2 === 1 ? nearest[(n - 1) / 2]! : (nearest[n / 2 - 1]! + nearest[n / 2]!) / 2;
}

/**
 * A PNG grid with one row per query: the query, then its neighbours nearest first.
 * @example
 * await writeFile('neighbours.png', neighbourGridPng(samples, train, nearestImages(samples, train, 3), { rows: 8 }));
 */
export function neighbourGridPng(queries: HostImages, train: Dataset, nn: Neighbours, options: { rows?: number; scale?: number } = {}): Uint8Array {
  const rows = Math.min(options.rows ?? queries.count, queries.count);
  const size = queries.side * queries.side;
  const columns = 1 + nn.k;
  const images = new Float32Array(rows * columns * size);
  for (let q = 0; q < rows; q++) {
    images.set(queries.data.subarray(q * size, (q + 1) * size), q * columns * size);
    for (let j = 0; j < nn.k; j++) images.set(train.get(nn.index[q * nn.k + j]!), (q * columns + 1 + j) * size);
  }
  return imageGridPng(images, [rows * columns, 1, queries.side, queries.side], { columns, scale: options.scale ?? Math.max(1, Math.floor(64 / queries.side)) });
}
