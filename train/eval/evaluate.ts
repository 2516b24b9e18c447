/**
 * Evaluates a checkpoint: samples images with its EMA parameters (by its model's sampler: EDM's
 * Heun sampler on the full coordinate grid, MSDiff's scale by scale, or DDIM for MaskDM's U-ViT),
 * and compares their classifier features with those of the dataset's real images
 * (FD, KID, precision/recall; metrics.ts). The real reference is drawn from the whole dataset, not
 * a run's `data.limit` subset, so small-data runs are judged against the distribution, as the
 * paper's FIDs are against the full dataset statistics.
 */
import { random, type PyTree, type Tensor } from '../../core/index.ts';
import { loadCheckpoint } from '../checkpoint.ts';
import { resolveConfig, type TrainingConfig } from '../config.ts';
import { loadMnist } from '../data/mnist.ts';
import { CheckpointError, orThrow } from '../errors.ts';
import { trainingMethod } from '../method.ts';
import { imagesSeen, restoreLike } from '../run.ts';
import { fullSize } from '../step.ts';
import { FEATURE_DIM, loadClassifier, type Classifier, type ClassifierName } from './classifier.ts';
import { imageFeatures, type HostImages } from './features.ts';
import { featureSet, sampleMetrics, type FeatureSet, type SampleMetrics } from './metrics.ts';
import { realImages } from './real.ts';

export interface EvalOptions {
  /** Generated images (and the default number of real ones). */
  readonly samples: number;
  /** Sampler steps (Heun's N makes 2N - 1 network evaluations); default: the model's (18 for Heun). */
  readonly steps?: number;
  /** Real images in the reference set; default max(samples, 1000). */
  readonly real?: number;
  readonly seed?: number;
  /** Images sampled per sampler call (bounds memory); default 100. */
  readonly batch?: number;
  /** Bootstrap replicates for FD's standard error (metrics.ts `fdBootstrapStderr`); none by default. */
  readonly fdBootstrap?: number;
}

export interface EvalResult extends SampleMetrics {
  readonly checkpoint: string;
  readonly step: number;
  readonly images_seen: number;
  readonly dataset: ClassifierName;
  readonly resolution: number;
  readonly sampler: { readonly name: string; readonly steps: number; readonly seed: number };
  readonly classifier: { readonly test_accuracy: string; readonly command: string };
  readonly sample_seconds: number;
}

/** Classifier and real features, computed once per (dataset, resolution, count, seed). */
export interface Reference {
  readonly classifier: Classifier;
  readonly features: FeatureSet;
  readonly key: string;
}

function classifierFor(config: TrainingConfig): ClassifierName {
  const name = config.data.name;
  if (name === 'folder') throw new CheckpointError('eval: metrics need a classifier for the data; there are classifiers for mnist and fashion-mnist only');
  if (config.model.img_channels !== 1) throw new CheckpointError(`eval: the classifiers take 1-channel images, the model makes ${config.model.img_channels}`);
  return name;
}

export async function referenceFor(config: TrainingConfig, count: number, seed: number, cached?: Reference): Promise<Reference> {
  const name = classifierFor(config);
  const { height } = fullSize(config);
  const key = `${name}|${height}|${count}|${seed}`;
  if (cached?.key === key) return cached;
  const classifier = orThrow(await loadClassifier(name));
  const real = realImages(await loadMnist(name, { resolution: height }), count, seed);
  return { classifier, features: featureSet(await imageFeatures(classifier, real), FEATURE_DIM), key };
}

/** Samples `count` images with the EMA params of a training state, clipped to [-1, 1]. */
export async function sampleImages(config: TrainingConfig, ema: PyTree<Tensor>, count: number, steps: number, seed: number, batch = 100): Promise<HostImages> {
  const method = trainingMethod(config);
  const { height, width } = fullSize(config);
  const c = config.model.img_channels;
  const data = new Float32Array(count * c * height * width);
  for (let start = 0, part = 0; start < count; start += batch, part++) {
    const n = Math.min(batch, count - start);
    const key: Tensor = random.foldIn(random.key(seed), part);
    const x = await method.sample(ema, n, steps, key);
    // Clipped to [-1, 1] as EDM's generate.py does when it writes images: the metrics judge images.
    data.set(((await x.data()) as Float32Array).map((v) => (v < -1 ? -1 : v > 1 ? 1 : v)), start * c * height * width);
  }
  return { count, side: height, data };
}

/** Evaluates one checkpoint folder (its config comes from its manifest). */
export async function evaluateCheckpoint(dir: string, options: EvalOptions, reference?: Reference): Promise<{ result: EvalResult; reference: Reference }> {
  const ck = orThrow(await loadCheckpoint(dir));
  const config = orThrow(resolveConfig(ck.config, {}));
  const method = trainingMethod(config);
  const steps = options.steps ?? method.defaultSampleSteps;
  const seed = options.seed ?? 0;
  const ref = await referenceFor(config, options.real ?? Math.max(options.samples, 1000), seed, reference);
  const ema = restoreLike(method.initState().ema, ck.trees['ema'] ?? {}, `${dir} ema`);
  const counters = ck.trees['counters'] as { imagesSeen?: Tensor } | undefined;
  const began = performance.now();
  const images = await sampleImages(config, ema, options.samples, steps, seed + 1, options.batch);
  const sampleSeconds = (performance.now() - began) / 1000;
  const generated = featureSet(await imageFeatures(ref.classifier, images), FEATURE_DIM);
  const metrics = sampleMetrics(ref.features, generated, { kid: { subsets: 100, subsetSize: Math.min(1000, options.samples), seed }, fdBootstrap: options.fdBootstrap });
  return {
    reference: ref,
    result: {
      checkpoint: dir,
      step: ck.step,
      images_seen: counters?.imagesSeen === undefined ? NaN : await imagesSeen({ imagesSeen: counters.imagesSeen }),
      dataset: ref.classifier.name,
      resolution: images.side,
      sampler: { name: method.sampler, steps, seed: seed + 1 },
      classifier: { test_accuracy: ref.classifier.metadata.test_accuracy, command: ref.classifier.metadata.command },
      sample_seconds: sampleSeconds,
      ...metrics,
    },
  };
}
