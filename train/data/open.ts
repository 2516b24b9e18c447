/**
 * Opens the dataset a config's `data` section describes: the source, then the seeded `limit`
 * subset, then x-flips (so a 5,000-image run with x-flips trains on 5,000 images and their
 * mirrors, as in EDM's small-data runs). Corrupt images skipped with `skipCorrupt` are returned
 * in `skipped` for the run's report.
 */
import { left, right, type Either } from 'fp-ts/lib/Either.js';
import type { TrainingConfig } from '../config.ts';
import { DataError } from '../errors.ts';
import { limitDataset, xflipDataset, type Dataset } from './dataset.ts';
import { openImageFolder, type SkippedImage } from './imageFolder.ts';
import { loadMnist } from './mnist.ts';

export interface OpenedData {
  readonly dataset: Dataset;
  readonly skipped: readonly SkippedImage[];
}

export async function openDataset(data: TrainingConfig['data'], seed: number): Promise<Either<DataError, OpenedData>> {
  const [height, width] = typeof data.resolution === 'number' ? [data.resolution, data.resolution] : data.resolution;
  let base: Dataset;
  let skipped: readonly SkippedImage[] = [];
  switch (data.name) {
    case 'mnist':
    case 'fashion-mnist': {
      if (height !== width) return left(new DataError(`${data.name}: images are square, data.resolution ${height}x${width} is not`));
      try {
        base = limitDataset(await loadMnist(data.name, { resolution: height }), data.limit, seed);
      } catch (e) {
        if (e instanceof DataError) return left(e);
        throw e;
      }
      break;
    }
    case 'folder': {
      if (data.path === undefined) return left(new DataError('data.path: required when data.name is "folder"'));
      const opened = await openImageFolder(data.path, {
        height, width, channels: data.channels ?? 3, limit: data.limit, seed, skipCorrupt: data.skipCorrupt,
      });
      if (opened._tag === 'Left') return opened;
      base = opened.right;
      skipped = opened.right.skipped;
      break;
    }
    default:
      return data.name satisfies never;
  }
  return right({ dataset: data.xflip ? xflipDataset(base) : base, skipped });
}
