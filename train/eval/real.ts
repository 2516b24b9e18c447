/** A seeded sample of a dataset's real images as one host array, the reference set of the metrics. */
import type { Dataset } from '../data/dataset.ts';
import { DataError } from '../errors.ts';
import { mixSeed, permutation } from '../data/prng.ts';
import type { HostImages } from './features.ts';

/** `count` distinct images of a 1-channel square dataset, chosen by a seeded permutation. */
export function realImages(ds: Dataset, count: number, seed: number): HostImages {
  if (ds.channels !== 1 || ds.height !== ds.width) throw new DataError(`realImages: the metrics take 1-channel square images, got ${ds.channels}x${ds.height}x${ds.width}`);
  if (count > ds.count) throw new DataError(`realImages: asked for ${count} images of a dataset of ${ds.count}`);
  const px = ds.height * ds.width;
  const order = permutation(ds.count, mixSeed(seed, 0xfea7));
  const data = new Float32Array(count * px);
  for (let i = 0; i < count; i++) data.set(ds.get(order[i]!), i * px);
  return { count, side: ds.height, data };
}
