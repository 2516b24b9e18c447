/**
 * Trains the feature network of train/eval/metrics.ts with Tessera itself and writes
 * train/eval/weights/<dataset>-classifier.safetensors.
 *
 *   npx tsx scripts/train-classifier.ts --dataset mnist [--epochs 4] [--seed 0] [--backend cpu]
 *   npx tsx scripts/train-classifier.ts --dataset fashion-mnist [--epochs 1]
 *
 * Deterministic from the seed on a given backend: initial weights come from the tensor PRNG, the
 * data order from the seeded host shuffle of train/data, and the CPU backend's loops run in a
 * fixed order.
 *
 * Accuracy is measured on the held-out split of `classifierSplit` (2,000 images, fixed, independent
 * of --seed). Images are 28x28 centred on 32x32, as the diffusion models see them.
 */
import { mkdir, writeFile } from 'node:fs/promises';
import { dirname } from 'node:path';
import { parseArgs } from 'node:util';
import { add, cos, div, jit, logSoftmax, mean, minimum, mul, oneHot, random, setDefaultBackend, sum, tensor, valueAndGrad, type Tensor } from '../index.ts';
import { takeBatch } from '../train/data/batches.ts';
import type { Dataset } from '../train/data/dataset.ts';
import { loadMnist } from '../train/data/mnist.ts';
import {
  CLASSES, CLASSIFIER_RESOLUTION, classifierLogits, classifierPath, classifierSplit, initClassifier, type ClassifierName, type ClassifierParams,
} from '../train/eval/classifier.ts';
import { adam, applyUpdates, type Params } from '../train/optim.ts';
import { treeToSafetensors } from '../train/stateDict.ts';

/** Mean cross-entropy of the logits against integer labels. */
function crossEntropy(params: ClassifierParams, images: Tensor, labels: Tensor): Tensor {
  return mul(mean(sum(mul(logSoftmax(classifierLogits(params, images)), oneHot(labels, CLASSES)), -1)), -1);
}

/** Fraction of `ds` classified correctly, in fixed-size batches (one compiled program). */
async function accuracy(params: ClassifierParams, ds: Dataset, batch = 250): Promise<number> {
  const logits = jit((p: ClassifierParams, x: Tensor) => classifierLogits(p, x), { name: 'classifierLogits' });
  const labels = ds.labels!;
  let correct = 0;
  for (let start = 0; start < ds.count; start += batch) {
    const n = Math.min(batch, ds.count - start);
    const x = new Float32Array(batch * ds.height * ds.width);
    for (let i = 0; i < n; i++) x.set(ds.get(start + i), i * ds.height * ds.width);
    const out = (await (await logits(params, tensor(x, [batch, 1, ds.height, ds.width]))).data()) as Float32Array;
    for (let i = 0; i < n; i++) {
      const row = out.subarray(i * CLASSES, (i + 1) * CLASSES);
      if (row.indexOf(Math.max(...row)) === labels[start + i]) correct++;
    }
  }
  return correct / ds.count;
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      dataset: { type: 'string', default: 'mnist' },
      epochs: { type: 'string' },
      batch: { type: 'string', default: '64' },
      lr: { type: 'string', default: '0.002' },
      seed: { type: 'string', default: '0' },
      backend: { type: 'string', default: 'cpu' },
      out: { type: 'string' },
    },
  });
  const name = values.dataset as ClassifierName;
  if (name !== 'mnist' && name !== 'fashion-mnist') throw new Error(`--dataset: mnist or fashion-mnist, got ${values.dataset}`);
  const epochs = Number(values.epochs ?? (name === 'mnist' ? 4 : 1));
  const batchSize = Number(values.batch);
  const lr = Number(values.lr);
  const seed = Number(values.seed);
  setDefaultBackend(values.backend);
  const { train, test } = classifierSplit(await loadMnist(name, { resolution: CLASSIFIER_RESOLUTION }));

  // Adam with a cosine decay to 0 over the run: a few epochs reach a good optimum without tuning.
  const totalSteps = Math.floor((epochs * train.count) / batchSize);
  const opt = adam({ lr: (count) => mul(add(cos(mul(minimum(div(count, totalSteps), 1), Math.PI)), 1), 0.5 * lr) });
  const step = jit((state: { params: ClassifierParams; opt: Params }, images: Tensor, labels: Tensor) => {
    const [loss, grads] = valueAndGrad((p: ClassifierParams) => crossEntropy(p, images, labels))(state.params);
    const [updates, optState] = opt.update(grads, state.opt as never, state.params);
    return { state: { params: applyUpdates(state.params, updates) as ClassifierParams, opt: optState as Params }, loss };
  }, { donate: [0], name: 'classifierStep' });

  const params0 = initClassifier(random.key(seed));
  let state = { params: params0, opt: opt.init(params0) as Params };
  const began = performance.now();
  let position = 0;
  for (let s = 0; s < totalSteps; s++) {
    const b = takeBatch(train, { seed, position, batchSize });
    position = b.position;
    const out = await step(state, tensor(b.images, b.shape), tensor(b.labels!, [batchSize], 'int32'));
    state = out.state;
    if (s % 50 === 0 || s === totalSteps - 1) {
      const secs = (performance.now() - began) / 1000;
      process.stderr.write(`\rstep ${s + 1}/${totalSteps} loss ${(await out.loss.item()).toFixed(4)} ${secs.toFixed(0)}s   `);
    }
  }
  process.stderr.write('\n');
  const acc = await accuracy(state.params, test);
  const seconds = (performance.now() - began) / 1000;
  console.log(`${name}: test accuracy ${(acc * 100).toFixed(2)}% on ${test.count} held-out images after ${epochs} epoch(s) of ${train.count} images, ${seconds.toFixed(0)} s`);
  const command = `npx tsx scripts/train-classifier.ts --dataset ${name} --epochs ${epochs} --batch ${batchSize} --lr ${lr} --seed ${seed} --backend ${values.backend}`;
  const bytes = await treeToSafetensors(state.params, {
    format: 'tessera-classifier', dataset: name, resolution: String(CLASSIFIER_RESOLUTION),
    test_accuracy: acc.toFixed(4), test_images: String(test.count), seed: String(seed), command,
  });
  const out = values.out ?? classifierPath(name);
  await mkdir(dirname(out), { recursive: true });
  await writeFile(out, bytes);
  console.log(`wrote ${out} (${bytes.length} bytes)`);
}

await main();
