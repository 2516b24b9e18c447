/**
 * U-ViT: the reference's parameter names and U-ViT-S's published size; the masked network equals the
 * plain one when every patch is visible, ignores masked pixels, always sees the time and class
 * tokens; and a gradient check of the whole (masked) network.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { registerReferenceBackend } from '../../backends/reference/index.ts';
import { registerCpuBackend } from '../../backends/cpu/index.ts';
import { add, flatten, jit, leafPaths, mul, oneHot, random, setDefaultBackend, tensor, treeLeaves, type Tensor } from '../../core/index.ts';
import { checkGrad } from '../../autodiff/check.ts';
import { drawVisible, visiblePixelMask } from '../../models/masks.ts';
import { parameterCount } from '../../models/nn.ts';
import { UVIT_SMALL, uvit, uvitEps, type UViTConfig } from '../../models/uvit.ts';
import { ddimSample, linearSchedule, vpDenoiser } from '../../models/ddpm.ts';
import { heunSampler } from '../../models/samplers.ts';

registerReferenceBackend();
registerCpuBackend();
setDefaultBackend('reference');

const paths = (tree: unknown) => leafPaths(flatten(tree as never).def);
const values = async (t: Tensor): Promise<number[]> => Array.from(await t.data());
const tiny: UViTConfig = { imgSize: 8, patchSize: 2, inChannels: 2, embedDim: 8, depth: 3, numHeads: 2 };

test('U-ViT-S/2 on CIFAR-10 has the published 44M parameters (counted from shapes); names are the reference state_dict keys', () => {
  const net = uvit({ imgSize: 32, inChannels: 3, ...UVIT_SMALL });
  const params = net.init(random.key(0));
  const count = parameterCount(params);
  assert.equal(Math.round(count / 1e6), 44, `${count}`);
  assert.ok(treeLeaves(params as never).every((t) => !(t as Tensor).isRealized), 'init builds lazy graphs only');
  const keys = paths(uvit({ ...tiny, numClasses: 10, mlpTimeEmbed: true }).init(random.key(0)));
  for (const k of [
    'patch_embed.proj.weight', 'patch_embed.proj.bias', 'time_embed.0.weight', 'time_embed.2.bias', 'label_emb.weight', 'pos_embed',
    'in_blocks.0.norm1.weight', 'in_blocks.0.attn.qkv.weight', 'in_blocks.0.attn.proj.bias', 'in_blocks.0.mlp.fc1.weight', 'in_blocks.0.mlp.fc2.bias',
    'mid_block.norm2.bias', 'out_blocks.0.skip_linear.weight', 'out_blocks.0.skip_linear.bias', 'norm.weight', 'decoder_pred.weight', 'decoder_pred.bias',
    'final_layer.weight', 'final_layer.bias',
  ]) assert.ok(keys.includes(k), `missing ${k}`);
  assert.ok(!keys.some((k) => k.startsWith('in_blocks.0.skip_linear') || k.startsWith('mid_block.skip_linear') || k.includes('qkv.bias')));
  const plain = paths(uvit({ ...tiny, finalConv: false }).init(random.key(0)));
  assert.ok(!plain.some((k) => k.startsWith('final_layer') || k.startsWith('time_embed') || k.startsWith('label_emb')));
  assert.deepEqual(uvit({ ...tiny, numClasses: 3 }).init(random.key(0)).pos_embed.shape, [1, 2 + 16, 8]);
});

const x = random.normal(random.key(1), [2, 2, 8, 8]);
const t = tensor([3, 700]);

test('every patch visible, in order or shuffled, is the plain network', async () => {
  const net = uvit({ ...tiny, numClasses: 3, mlpTimeEmbed: true });
  const params = net.init(random.key(2));
  const labels = oneHot(tensor([0, 2], [2], 'int32'), 3);
  const plain = await values(net.apply(params, x, t, { labels }));
  const all = tensor(Array.from({ length: 32 }, (_, i) => i % 16), [2, 16], 'int32');
  assert.deepEqual(await values(net.apply(params, x, t, { labels, visible: all })), plain);
  const shuffled = tensor([...Array.from({ length: 16 }, (_, i) => (i * 5) % 16), ...Array.from({ length: 16 }, (_, i) => 15 - i)], [2, 16], 'int32');
  (await values(net.apply(params, x, t, { labels, visible: shuffled }))).forEach((v, i) => assert.ok(Math.abs(v - plain[i]!) < 1e-5, `${v} vs ${plain[i]}`));
});

test('masked: the output ignores the masked patches\' pixels, is zero there without the final conv, and still depends on t and the label', async () => {
  for (const finalConv of [false, true]) {
    const net = uvit({ ...tiny, numClasses: 3, finalConv });
    const params = net.init(random.key(3));
    const visible = drawVisible(random.key(4), { kind: 'block', ratio: 0.75, blockSize: 2 }, 2, 4);
    const keep = visiblePixelMask(visible, 4, 2);
    const scrambled = add(x, mul(random.normal(random.key(5), x.shape), add(mul(keep, -1), 1)));
    const labels = oneHot(tensor([1, 2], [2], 'int32'), 3);
    const out = await values(net.apply(params, x, t, { visible, labels }));
    assert.deepEqual(await values(net.apply(params, scrambled, t, { visible, labels })), out);
    if (!finalConv) {
      const k = await values(keep);
      out.forEach((v, i) => k[Math.floor(i / 128) * 64 + (i % 64)] === 0 && assert.equal(v, 0));
    }
    assert.notDeepEqual(await values(net.apply(params, x, tensor([4, 700]), { visible, labels })), out, 'time token');
    assert.notDeepEqual(await values(net.apply(params, x, t, { visible, labels: oneHot(tensor([0, 2], [2], 'int32'), 3) })), out, 'class token');
  }
});

test('the masked network on the cpu backend agrees with the reference', async () => {
  const net = uvit({ ...tiny, mlpTimeEmbed: true });
  const params = net.init(random.key(6));
  const visible = drawVisible(random.key(7), { kind: 'patch', ratio: 0.5 }, 2, 4);
  const f = (p: typeof params, v: Tensor) => net.apply(p, x, t, { visible: v });
  const ref = await values(await jit(f, { backend: 'reference' })(params, visible));
  const cpu = await values(await jit(f, { backend: 'cpu' })(params, visible));
  cpu.forEach((v, i) => assert.ok(Math.abs(v - ref[i]!) < 1e-4 * (1 + Math.abs(ref[i]!)), `${v} vs ${ref[i]}`));
});

test('gradient check of a whole masked U-ViT (class token, time MLP, skips, final conv)', async () => {
  const net = uvit({ imgSize: 4, patchSize: 2, inChannels: 1, embedDim: 4, depth: 3, numHeads: 2, mlpRatio: 2, numClasses: 2, mlpTimeEmbed: true });
  const params = net.init(random.key(8));
  const visible = tensor([[0, 3], [1, 2]], [2, 2], 'int32');
  const labels = tensor([[1, 0], [0, 1]], [2, 2], 'float64');
  const xs = random.normal(random.key(9), [2, 1, 4, 4]);
  await checkGrad(
    (p: typeof params, v: Tensor) => net.apply(p, v, tensor([5, 900]), { visible, labels }),
    [params, xs],
    { maxElementwise: 4, directions: 2, rtol: 1e-4 },
  );
});

test('a class-conditional U-ViT samples with DDIM (eta 1, clipped) and, through the VP denoiser, with EDM\'s Heun sampler', async () => {
  const net = uvit({ ...tiny, numClasses: 3 });
  const eps = uvitEps(net, net.init(random.key(10)));
  const schedule = linearSchedule();
  const extra = { labels: oneHot(tensor([0, 2], [2], 'int32'), 3) };
  const ddim = await ddimSample(eps, { schedule, steps: 3, eta: 1, clipDenoised: true, key: random.key(11), shape: [2, 2, 8, 8], extra, backend: 'cpu' });
  const heun = await heunSampler(vpDenoiser(eps, { schedule, timestep: 'continuous' }), { key: random.key(12), shape: [2, 2, 8, 8], numSteps: 3, extra, backend: 'cpu' });
  for (const x of [ddim, heun]) {
    assert.deepEqual(x.shape, [2, 2, 8, 8]);
    assert.ok((await values(x)).every(Number.isFinite));
  }
});
