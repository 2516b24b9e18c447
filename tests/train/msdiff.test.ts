/** Training multi-scale non-uniform diffusion: the loss's value at initialisation, one scale per step, and learning. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { registerReferenceBackend } from '../../backends/reference/index.ts';
import { registerCpuBackend } from '../../backends/cpu/index.ts';
import { flatten, mul, random, setDefaultBackend, tanh, type Tensor } from '../../core/index.ts';
import { likelihoodWeight, msdiffModel, type NonUniformSchedule } from '../../models/msdiff.ts';
import { initMsdiffState, msdiffLoss, msdiffTrainStep, type MsdiffTrainState } from '../../train/msdiff.ts';

registerReferenceBackend();
registerCpuBackend();
setDefaultBackend('cpu');

const schedule: NonUniformSchedule = { levels: 2 };
const model = msdiffModel({
  imgResolution: 8, imgChannels: 1, schedule,
  networks: { modelChannels: 8, channelMult: [1], numBlocks: 1, attnResolutions: [], dropout: 0 },
});
const leaves = async (tree: unknown) => Promise.all((flatten(tree as never).leaves as Tensor[]).map(async (t) => Array.from(await t.data())));
/** Smooth toy images in (-1, 1): a random field squashed, so every Haar band has structure. */
const images = (seed: number, b: number) => tanh(mul(random.normal(random.key(seed), [b, 1, 8, 8]), 0.8));

test('at initialisation (the output conv starts near zero) the loss is half the weighted count of live entries per image', async () => {
  const params = model.init(random.key(0));
  // Entries per image: d1 3*4*4 = 48, d2 3*2*2 = 12, approximation 2*2 = 4; 64 in all.
  const entries = [48, 12, 4];
  const b = 512;
  for (const k of [0, 1, 2]) {
    const w = entries.slice(k).map((_, i) => likelihoodWeight(schedule, k + i) / 2);
    const expected = entries.slice(k).reduce((s, n, i) => s + w[i]! * n, 0) / 64;
    // Each entry adds w z^2 / (64 B) with z^2 ~ chi-square(1) (variance 2): four standard errors.
    const bound = (4 * Math.sqrt(entries.slice(k).reduce((s, n, i) => s + w[i]! ** 2 * 2 * n * b, 0))) / (64 * b);
    const loss = await msdiffLoss(model, params, images(1, b), k, random.key(10 + k), { train: false }).item();
    assert.ok(Math.abs(loss - expected) < bound, `scale ${k}: loss ${loss}, expected ${expected} +- ${bound}`);
  }
});

const perScale = async (s: MsdiffTrainState) => ({
  params: await Promise.all(s.params.scales.map(leaves)),
  ema: await Promise.all(s.ema.scales.map(leaves)),
  opt: await Promise.all(s.opt.map(leaves)),
});

test('a step trains only its scale: the other scales, their EMA and optimizer state pass through bit for bit', async () => {
  const options = { lr: 1e-3, emaHalflifeImages: 100 };
  const state0 = initMsdiffState(model, random.key(0), options);
  const before = await perScale(state0);
  const { state, loss } = await msdiffTrainStep(model, options)(state0, images(2, 8), 1, random.key(5));
  assert.ok(Number.isFinite(await loss.item()));
  const after = await perScale(state);
  for (const k of [0, 2]) {
    assert.deepEqual(after.params[k], before.params[k], `scale ${k} params`);
    assert.deepEqual(after.ema[k], before.ema[k], `scale ${k} EMA`);
    assert.deepEqual(after.opt[k], before.opt[k], `scale ${k} optimizer state`);
  }
  assert.notDeepEqual(after.params[1], before.params[1]);
  assert.notDeepEqual(after.opt[1], before.opt[1]);
  assert.deepEqual(await Promise.all(state.imagesSeen.map((t) => t.item())), [0, 8, 0]);
});

test('training that rotates over the scales lowers every scale\'s loss on held-out noise', async () => {
  const options = { lr: 3e-3, emaHalflifeImages: 50 };
  const data = images(3, 64);
  const evalLoss = (s: MsdiffTrainState, k: number) => msdiffLoss(model, s.params, data, k, random.key(100 + k), { train: false }).item();
  let state = initMsdiffState(model, random.key(0), options);
  const start = await Promise.all([0, 1, 2].map((k) => evalLoss(state, k)));
  const step = msdiffTrainStep(model, options);
  for (let i = 0; i < 90; i++) state = (await step(state, data, i % 3, random.key(1000 + i))).state;
  const end = await Promise.all([0, 1, 2].map((k) => evalLoss(state, k)));
  end.forEach((l, k) => assert.ok(l < 0.8 * start[k]!, `scale ${k}: loss ${start[k]} -> ${l}`));
});
