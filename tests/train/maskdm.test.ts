/**
 * MaskDM's masked score matching: masked pixels change neither the loss nor its gradient, no mask
 * (or ratio 0) is DDPM's L_simple, the blocks see only the visible tokens, a whole masked training
 * step agrees on the reference and cpu backends, and masked pre-training then fine-tuning learns.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { registerReferenceBackend } from '../../backends/reference/index.ts';
import { registerCpuBackend } from '../../backends/cpu/index.ts';
import { add, cast, flatten, mean, mul, random, scalar, setDefaultBackend, square, sub, tanh, type Tensor } from '../../core/index.ts';
import { grad } from '../../autodiff/index.ts';
import { alphaBarAt, diffuse, linearSchedule } from '../../models/ddpm.ts';
import { visiblePixelMask, type MaskConfig } from '../../models/masks.ts';
import { uvit, type UViTParams } from '../../models/uvit.ts';
import { compileMaskdmStep, initMaskdmState, maskdmDraws, maskedLoss, type MaskdmTrainOptions, type MaskdmTrainState } from '../../train/maskdm.ts';
import { warmupCosine } from '../../train/optim.ts';

registerReferenceBackend();
registerCpuBackend();
setDefaultBackend('reference');

const model = uvit({ imgSize: 8, patchSize: 2, inChannels: 1, embedDim: 16, depth: 3, numHeads: 2 });
const leaves = async (tree: unknown) => Promise.all((flatten(tree as never).leaves as Tensor[]).map(async (t) => Array.from(await t.data())));
/** Smooth toy images in (-1, 1). */
const images = (seed: number, b: number) => tanh(mul(random.normal(random.key(seed), [b, 1, 8, 8]), 0.8));
const block: MaskConfig = { kind: 'block', ratio: 0.5, blockSize: 2 };

test('the masked loss and its gradient do not change when the pixels of masked patches change', async () => {
  const params = model.init(random.key(0));
  const key = random.key(1);
  const x = images(2, 3);
  for (const mask of [block, { kind: 'patch', ratio: 0.75 }, { kind: 'crop', cropSize: 2 }] as MaskConfig[]) {
    const { visible } = maskdmDraws(model, x.shape, key, { mask });
    const hidden = sub(1, visiblePixelMask(visible!, 4, 2));
    const scrambled = add(x, mul(hidden, random.normal(random.key(3), x.shape)));
    assert.notDeepEqual(await scrambled.data(), await x.data());
    const lossOf = (imgs: Tensor) => (p: UViTParams) => maskedLoss(model, p, imgs, key, { mask });
    assert.equal(await lossOf(scrambled)(params).item(), await lossOf(x)(params).item(), mask.kind);
    assert.deepEqual(await leaves(grad(lossOf(scrambled))(params)), await leaves(grad(lossOf(x))(params)), mask.kind);
  }
});

test('without a mask, or at ratio 0, the loss is DDPM\'s L_simple of the plain U-ViT', async () => {
  const params = model.init(random.key(4));
  const key = random.key(5);
  const x = images(6, 4);
  const { t, noise } = maskdmDraws(model, x.shape, key);
  const xt = diffuse(x, alphaBarAt(linearSchedule(), t), noise);
  const direct = await mean(square(sub(model.apply(params, xt, cast(t, 'float32')), noise))).item();
  assert.equal(await maskedLoss(model, params, x, key).item(), direct);
  const ratio0 = await maskedLoss(model, params, x, key, { mask: { kind: 'patch', ratio: 0 } }).item();
  assert.ok(Math.abs(ratio0 - direct) < 1e-6 * direct, `${ratio0} vs ${direct}`);
  // At initialisation the prediction is near 0, so the loss is near E[eps^2] = 1.
  assert.ok(Math.abs(direct - 1) < 0.3, `${direct}`);
});

test('the blocks attend over the time token and the visible patches only (compute scales with the visible fraction)', () => {
  const params = model.init(random.key(7));
  const x = images(8, 2);
  const loss = maskedLoss(model, params, x, random.key(9), { mask: { kind: 'patch', ratio: 0.75 } });
  const logits = new Set<string>();
  const seen = new Set<Tensor>();
  const walk = (n: Tensor): void => {
    if (seen.has(n)) return;
    seen.add(n);
    if (n.prim.op === 'matmul' && n.rank === 4) logits.add(n.shape.join('x'));
    n.inputs.forEach(walk);
  };
  walk(loss);
  // [B, heads, 1 + 4, 5] logits and [B, heads, 5, 8] outputs: 4 of 16 patches visible, plus the time token.
  assert.deepEqual([...logits].sort(), ['2x2x5x5', '2x2x5x8']);
});

const options: MaskdmTrainOptions = { lr: 2e-3, emaHalflifeImages: 50, mask: block, gradClip: 1 };

test('a whole masked training step agrees on the reference and cpu backends', async () => {
  const x = images(10, 2);
  const run = async (backend: 'reference' | 'cpu') => {
    const state = initMaskdmState(model, random.key(11), { ...options, backend });
    const step = compileMaskdmStep(model, { ...options, backend });
    const first = await step(state, { images: x });
    const second = await step(first.state, { images: x });
    return { loss: [await first.metrics.loss.item(), await second.metrics.loss.item()], state: second.state };
  };
  const ref = await run('reference');
  const cpu = await run('cpu');
  ref.loss.forEach((l, i) => assert.ok(Math.abs(cpu.loss[i]! - l) < 1e-4 * l, `loss ${i}: ${cpu.loss[i]} vs ${l}`));
  assert.deepEqual(await cpu.state.key.data(), await ref.state.key.data(), 'the key advances alike');
  assert.equal(await cpu.state.imagesSeen.item(), 4);
  const [a, b] = [await leaves(cpu.state), await leaves(ref.state)];
  a.forEach((leaf, i) => leaf.forEach((v, j) => assert.ok(Math.abs(v - b[i]![j]!) < 1e-4 * (1 + Math.abs(b[i]![j]!)), `leaf ${i}[${j}]: ${v} vs ${b[i]![j]}`)));
});

test('masked pre-training lowers the masked and the full loss; fine-tuning without a mask lowers the full loss further', async () => {
  const data = images(12, 16);
  const held = (s: MaskdmTrainState, mask?: MaskConfig) =>
    Promise.all([0, 1, 2, 3].map((i) => maskedLoss(model, s.params, data, random.key(100 + i), { mask }).item())).then((v) => v.reduce((p, q) => p + q) / 4);
  let state = initMaskdmState(model, random.key(13), { ...options, backend: 'cpu' });
  const [maskedStart, fullStart] = [await held(state, block), await held(state)];
  const pretrain = compileMaskdmStep(model, { ...options, backend: 'cpu' });
  for (let i = 0; i < 40; i++) state = (await pretrain(state, { images: data })).state;
  const [maskedPre, fullPre] = [await held(state, block), await held(state)];
  assert.ok(maskedPre < 0.75 * maskedStart, `masked loss ${maskedStart} -> ${maskedPre}`);
  assert.ok(fullPre < 0.75 * fullStart, `full loss ${fullStart} -> ${fullPre} (trained on half the patches)`);
  const tuneOptions = { ...options, mask: undefined, lr: warmupCosine({ lr: 2e-3, warmupSteps: 5, totalSteps: 25 }), backend: 'cpu' as const };
  let tuned = initMaskdmState(model, random.key(14), tuneOptions, state.params);
  const fineTune = compileMaskdmStep(model, tuneOptions);
  for (let i = 0; i < 25; i++) tuned = (await fineTune(tuned, { images: data })).state;
  const fullTuned = await held(tuned);
  assert.ok(fullTuned < 0.97 * fullPre, `full loss ${fullPre} -> ${fullTuned} after fine-tuning`);
});

test('warmupCosine: linear warm-up to lr, cosine decay to minLr at totalSteps', async () => {
  const lr = warmupCosine({ lr: 1, warmupSteps: 4, totalSteps: 12, minLr: 0.1 });
  const at = (c: number) => lr(scalar(c)).item();
  assert.deepEqual(await Promise.all([0, 1, 3].map(at)), [0.25, 0.5, 1]);
  assert.ok(Math.abs((await at(4)) - 1) < 1e-6);
  assert.ok(Math.abs((await at(8)) - 0.55) < 1e-6);
  assert.ok(Math.abs((await at(12)) - 0.1) < 1e-6 && Math.abs((await at(50)) - 0.1) < 1e-6);
});
