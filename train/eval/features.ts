/**
 * Penultimate classifier features of many images, in fixed-size batches so that one compiled
 * program serves every batch (the last one is padded with zeros and its padding rows dropped).
 */
import { jit, tensor, type Tensor } from '../../core/index.ts';
import { TesseraError } from '../../core/errors.ts';
import { CLASSIFIER_RESOLUTION, FEATURE_DIM, classifierFeatures, type Classifier, type ClassifierParams } from './classifier.ts';

/** Images on the host: [count, 1, side, side] values in [-1, 1]. */
export interface HostImages {
  readonly count: number;
  readonly side: number;
  readonly data: Float32Array;
}

const features = jit((p: ClassifierParams, x: Tensor) => classifierFeatures(p, x), { name: 'classifierFeatures' });

/**
 * Nearest-neighbour upsampling by an integer factor, for models trained below the classifier's
 * 32x32 (e.g. 16x16): real and generated images pass through the same map, so distances between
 * them stay meaningful even though the classifier never saw blocky digits.
 */
export function toClassifierResolution(images: HostImages): HostImages {
  const r = CLASSIFIER_RESOLUTION;
  if (images.side === r) return images;
  const f = r / images.side;
  if (!Number.isInteger(f)) throw new TesseraError(`features: images are ${images.side}x${images.side}; the classifier needs ${r}x${r} or an integer fraction of it`);
  const out = new Float32Array(images.count * r * r);
  for (let i = 0; i < images.count; i++) {
    for (let y = 0; y < r; y++) {
      for (let x = 0; x < r; x++) {
        out[(i * r + y) * r + x] = images.data[(i * images.side + Math.floor(y / f)) * images.side + Math.floor(x / f)]!;
      }
    }
  }
  return { count: images.count, side: r, data: out };
}

/** Features [count, 128] (row-major) of images, computed in batches of `batch`. */
export async function imageFeatures(classifier: Classifier, imagesIn: HostImages, options: { batch?: number } = {}): Promise<Float32Array> {
  const images = toClassifierResolution(imagesIn);
  const batch = options.batch ?? 250;
  const px = images.side * images.side;
  const out = new Float32Array(images.count * FEATURE_DIM);
  for (let start = 0; start < images.count; start += batch) {
    const n = Math.min(batch, images.count - start);
    const x = new Float32Array(batch * px);
    x.set(images.data.subarray(start * px, (start + n) * px));
    const f = (await (await features(classifier.params, tensor(x, [batch, 1, images.side, images.side]))).data()) as Float32Array;
    out.set(f.subarray(0, n * FEATURE_DIM), start * FEATURE_DIM);
  }
  return out;
}
