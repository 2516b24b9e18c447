/**
 * The feature network of our FID-style metrics: a small CNN classifier for 1-channel 32x32 images,
 * trained by `scripts/train-classifier.ts` on MNIST or Fashion-MNIST. FID (Heusel et al. 2017)
 * measures distances in the penultimate features of Inception-v3; we cannot download Inception, and
 * Inception's ImageNet features say little about 32x32 digits anyway, so we do what papers on MNIST
 * do: train a classifier on the domain and take its penultimate layer. Numbers are therefore
 * comparable between runs of this repository, not with published FIDs.
 *
 *   conv 3x3 s2 1->16, ReLU      32 -> 16
 *   conv 3x3 s2 16->32, ReLU     16 -> 8
 *   conv 3x3 s2 32->64, ReLU      8 -> 4
 *   flatten 1024 -> linear 128, ReLU   (the features)
 *   linear 128 -> 10                   (the logits)
 *
 * Weights ship as safetensors under train/eval/weights/ with metadata recording how they were made;
 * `loadClassifier` checks the metadata so that a metric never silently uses an unverified network.
 */
import { readFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { left, right, type Either } from 'fp-ts/lib/Either.js';
import * as t from 'io-ts';
import {
  add, conv2d, matmul, random, relu, reshape, transpose, zeros, type Tensor,
} from '../../core/index.ts';
import { weightInit } from '../../models/nn.ts';
import { subsetDataset, type Dataset } from '../data/dataset.ts';
import { permutation } from '../data/prng.ts';
import { formatDecodeErrors } from '../decodeErrors.ts';
import { SafetensorsError } from '../errors.ts';
import { restoreLike } from '../run.ts';
import { treeFromSafetensors } from '../stateDict.ts';

export type ClassifierName = 'mnist' | 'fashion-mnist';

/** Input side: MNIST's 28x28 padded to 32x32, as the training data are. */
export const CLASSIFIER_RESOLUTION = 32;
export const FEATURE_DIM = 128;
export const CLASSES = 10;
const CHANNELS = [1, 16, 32, 64] as const;

type Layer = { readonly weight: Tensor; readonly bias: Tensor };
export type ClassifierParams = {
  readonly conv1: Layer;
  readonly conv2: Layer;
  readonly conv3: Layer;
  readonly fc: Layer;
  readonly out: Layer;
};

/** He-normal weights (right for ReLU: EDM's kaiming_normal is sqrt(1/fan_in), so fan_in/2 gives sqrt(2/fan_in)), zero biases. */
export function initClassifier(key: Tensor): ClassifierParams {
  const [k1, k2, k3, k4, k5] = random.split(key, 5) as [Tensor, Tensor, Tensor, Tensor, Tensor];
  const conv = (k: Tensor, cin: number, cout: number): Layer => ({
    weight: weightInit(k, [cout, cin, 3, 3], 'kaiming_normal', cin * 9 / 2, cout * 9),
    bias: zeros([cout]),
  });
  const flat = CHANNELS[3] * 4 * 4;
  return {
    conv1: conv(k1, CHANNELS[0], CHANNELS[1]),
    conv2: conv(k2, CHANNELS[1], CHANNELS[2]),
    conv3: conv(k3, CHANNELS[2], CHANNELS[3]),
    fc: { weight: weightInit(k4, [FEATURE_DIM, flat], 'kaiming_normal', flat / 2, FEATURE_DIM), bias: zeros([FEATURE_DIM]) },
    out: { weight: weightInit(k5, [CLASSES, FEATURE_DIM], 'kaiming_normal', FEATURE_DIM, CLASSES), bias: zeros([CLASSES]) },
  };
}

function convRelu(p: Layer, x: Tensor): Tensor {
  const y = conv2d(x, p.weight, { stride: 2, padding: 1 });
  return relu(add(y, reshape(p.bias, [1, p.bias.shape[0]!, 1, 1])));
}

/** Penultimate features [N, 128] of images [N, 1, 32, 32] in [-1, 1]. */
export function classifierFeatures(p: ClassifierParams, x: Tensor): Tensor {
  const h = convRelu(p.conv3, convRelu(p.conv2, convRelu(p.conv1, x)));
  const flat = reshape(h, [x.shape[0]!, CHANNELS[3] * 16]);
  return relu(add(matmul(flat, transpose(p.fc.weight)), p.fc.bias));
}

/** Class logits [N, 10]. */
export function classifierLogits(p: ClassifierParams, x: Tensor): Tensor {
  return add(matmul(classifierFeatures(p, x), transpose(p.out.weight)), p.out.bias);
}

/**
 * The classifier's held-out split. The npm packages store images grouped by class, without the
 * original train/test split, so the test set is the first 2,000 indices of a fixed seeded
 * permutation (about 200 images per class) and training uses all others (MNIST: 8,000 of 10,000,
 * Fashion-MNIST: 68,000 of 70,000).
 */
export function classifierSplit(ds: Dataset, testImages = 2000): { train: Dataset; test: Dataset } {
  const order = Array.from(permutation(ds.count, 0x7e57));
  const ascending = (xs: number[]) => xs.sort((a, b) => a - b);
  return { test: subsetDataset(ds, ascending(order.slice(0, testImages))), train: subsetDataset(ds, ascending(order.slice(testImages))) };
}

/** What a weights file records about itself (safetensors metadata is string to string). */
export const ClassifierMetadata = t.type({
  format: t.literal('tessera-classifier'),
  dataset: t.keyof({ mnist: null, 'fashion-mnist': null }),
  resolution: t.literal(String(CLASSIFIER_RESOLUTION)),
  test_accuracy: t.string,
  test_images: t.string,
  seed: t.string,
  command: t.string,
});
export type ClassifierMetadata = t.TypeOf<typeof ClassifierMetadata>;

export interface Classifier {
  readonly name: ClassifierName;
  readonly params: ClassifierParams;
  readonly metadata: ClassifierMetadata;
}

/** The committed weights file of a dataset's classifier. */
export function classifierPath(name: ClassifierName): string {
  return fileURLToPath(new URL(`./weights/${name}-classifier.safetensors`, import.meta.url));
}

/** Test accuracy below which a weights file is refused: the metric would measure a poor classifier. */
export const MIN_ACCURACY: Record<ClassifierName, number> = { mnist: 0.95, 'fashion-mnist': 0.8 };

/** Loads and verifies a classifier: tensor names and shapes, dataset, resolution, recorded accuracy. */
export async function loadClassifier(name: ClassifierName, path = classifierPath(name)): Promise<Either<SafetensorsError, Classifier>> {
  let bytes: Uint8Array;
  try {
    bytes = await readFile(path);
  } catch (e) {
    return left(new SafetensorsError(`${path}: cannot be read (${(e as Error).message}); train it with scripts/train-classifier.ts`));
  }
  const file = treeFromSafetensors(bytes, path);
  if (file._tag === 'Left') return file;
  const meta = ClassifierMetadata.decode(file.right.metadata);
  if (meta._tag === 'Left') return left(new SafetensorsError(`${path}: metadata: ${formatDecodeErrors(meta.left).join('; ')}`));
  if (meta.right.dataset !== name) return left(new SafetensorsError(`${path}: holds the ${meta.right.dataset} classifier, not ${name}`));
  const accuracy = Number(meta.right.test_accuracy);
  if (!(accuracy >= MIN_ACCURACY[name])) {
    return left(new SafetensorsError(`${path}: recorded test accuracy ${meta.right.test_accuracy} is below ${MIN_ACCURACY[name]}`));
  }
  try {
    const params = restoreLike(initClassifier(random.key(0)), file.right.tree, path);
    return right({ name, params, metadata: meta.right });
  } catch (e) {
    return left(new SafetensorsError((e as Error).message));
  }
}
