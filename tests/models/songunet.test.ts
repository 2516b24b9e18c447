/** EDM's SongUNet: parameter count and names of the reference, shapes through every variant, gradients. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { registerReferenceBackend } from '../../backends/reference/index.ts';
import { flatten, leafPaths, realize, mean, oneHot, pad, random, setDefaultBackend, square, tensor, treeLeaves, type Tensor } from '../../core/index.ts';
import { grad } from '../../autodiff/index.ts';
import { parameterCount } from '../../models/nn.ts';
import { DDPMPP, NCSNPP, songUNet, type SongUNetConfig } from '../../models/songunet.ts';

registerReferenceBackend();
setDefaultBackend('reference');

const paths = (tree: unknown) => leafPaths(flatten(tree as never).def);

test('CIFAR-10 DDPM++ has EDM\'s published 55.73M parameters (counted from shapes, nothing evaluated)', () => {
  const cifar = (augmentDim: number) => songUNet({ imgResolution: 32, inChannels: 3, outChannels: 3, ...DDPMPP, numBlocks: 4, attnResolutions: [16], augmentDim, dropout: 0.13 });
  const start = performance.now();
  const params = cifar(0).init(random.key(0));
  assert.equal(parameterCount(params), 55_732_739);
  assert.ok(performance.now() - start < 2000, 'init builds lazy graphs only');
  assert.ok(treeLeaves(params as never).every((t) => !(t as Tensor).isRealized));
  // EDM trains CIFAR-10 with augment_dim 9 (map_augment, 9 x 128 weights, no bias): 55,733,891, also
  // 55.73M. The 64x64 figure (61.80M) settles it: the published counts leave map_augment out.
  assert.equal(parameterCount(cifar(9).init(random.key(0))), 55_733_891);
  const ffhq = (augmentDim: number) => songUNet({ imgResolution: 64, inChannels: 3, outChannels: 3, ...DDPMPP, channelMult: [1, 2, 2, 2], augmentDim });
  assert.equal(parameterCount(ffhq(0).init(random.key(0))), 61_804_419);
  assert.equal((parameterCount(ffhq(9).init(random.key(0))) / 1e6).toFixed(2), '61.81');
  // Patch Diffusion's network sees two more input channels (3x3 conv: 2 * 128 * 9 weights).
  assert.equal(parameterCount(songUNet({ imgResolution: 64, inChannels: 5, outChannels: 3, ...DDPMPP, channelMult: [1, 2, 2, 2] }).init(random.key(0))), 61_804_419 + 2304);
});

test('parameter paths are EDM\'s state_dict keys', () => {
  const net = songUNet({ imgResolution: 32, inChannels: 3, outChannels: 3, modelChannels: 16, channelMult: [1, 2], numBlocks: 2, attnResolutions: [16], labelDim: 10, augmentDim: 9 });
  const keys = new Set(paths(net.init(random.key(0))));
  for (const k of [
    'map_label.weight', 'map_label.bias', 'map_augment.weight', 'map_layer0.weight', 'map_layer0.bias', 'map_layer1.weight',
    'enc.32x32_conv.weight', 'enc.32x32_conv.bias',
    'enc.32x32_block0.norm0.weight', 'enc.32x32_block0.conv0.weight', 'enc.32x32_block0.affine.weight', 'enc.32x32_block0.norm1.bias', 'enc.32x32_block0.conv1.weight',
    'enc.16x16_down.conv0.weight', 'enc.16x16_down.skip.weight', 'enc.16x16_block0.skip.weight',
    'enc.16x16_block0.norm2.weight', 'enc.16x16_block0.qkv.weight', 'enc.16x16_block0.qkv.bias', 'enc.16x16_block0.proj.weight',
    'dec.16x16_in0.qkv.weight', 'dec.16x16_in1.conv0.weight', 'dec.16x16_block2.proj.bias', 'dec.32x32_up.conv0.weight',
    'dec.32x32_block2.skip.weight', 'dec.32x32_aux_norm.weight', 'dec.32x32_aux_norm.bias', 'dec.32x32_aux_conv.weight',
  ]) assert.ok(keys.has(k), `missing ${k}`);
  for (const k of ['map_augment.bias', 'map_noise.freqs', 'enc.32x32_block0.skip.weight', 'enc.32x32_block0.qkv.weight', 'dec.16x16_block1.qkv.weight', 'dec.16x16_in1.qkv.weight', 'dec.16x16_aux_conv.weight']) {
    assert.ok(!keys.has(k), `unexpected ${k}`);
  }
});

test('encoder/decoder variants name their aux layers as EDM; NCSN++ keeps the Fourier freqs as a param', () => {
  const base = { imgResolution: 16, inChannels: 3, outChannels: 3, modelChannels: 16, channelMult: [1, 2, 2], numBlocks: 1, attnResolutions: [] } as const;
  const ncsn = songUNet({ ...base, ...NCSNPP, channelMult: [1, 2, 2], modelChannels: 16 });
  const k1 = paths(ncsn.init(random.key(0)));
  assert.ok(k1.includes('map_noise.freqs') && k1.includes('enc.8x8_aux_residual.weight') && k1.includes('enc.4x4_aux_residual.bias'));
  const skip = songUNet({ ...base, encoderType: 'skip', decoderType: 'skip' });
  const k2 = paths(skip.init(random.key(0)));
  for (const k of ['enc.8x8_aux_skip.weight', 'dec.4x4_aux_norm.weight', 'dec.4x4_aux_conv.weight', 'dec.8x8_aux_conv.weight', 'dec.16x16_aux_conv.weight']) assert.ok(k2.includes(k), k);
  // kernel-0 resamplers (aux_down, aux_up) have only EDM's constant resample_filter buffer: no params.
  assert.ok(!k2.some((k) => k.includes('aux_down') || k.includes('aux_up')));
  const mlp = songUNet({ ...base, implicitMlp: true });
  assert.deepEqual(paths(mlp.init(random.key(0))).filter((k) => k.startsWith('enc.16x16_conv.')), [
    'enc.16x16_conv.0.bias', 'enc.16x16_conv.0.weight', 'enc.16x16_conv.2.bias', 'enc.16x16_conv.2.weight',
    'enc.16x16_conv.4.bias', 'enc.16x16_conv.4.weight', 'enc.16x16_conv.6.bias', 'enc.16x16_conv.6.weight',
  ]);
});

async function forward(config: SongUNetConfig, x: Tensor, extra: Parameters<ReturnType<typeof songUNet>['apply']>[3] = {}): Promise<number[]> {
  const net = songUNet(config);
  const params = net.init(random.key(1));
  const y = net.apply(params, x, tensor(Array.from({ length: x.shape[0]! }, (_, i) => -1 + i)), extra);
  assert.deepEqual(y.shape, [x.shape[0], config.outChannels, x.shape[2], x.shape[3]]);
  const v = Array.from(await y.data());
  assert.ok(v.every(Number.isFinite));
  return v;
}

test('forward on CPU: 1-channel 28x28 padded to 32x32 (DDPM++ layout, narrow)', async () => {
  const x = pad(random.normal(random.key(2), [2, 1, 28, 28]), [0, 0, 2, 2], [0, 0, 2, 2]);
  await forward({ imgResolution: 32, inChannels: 1, outChannels: 1, ...DDPMPP, modelChannels: 16, numBlocks: 1, attnResolutions: [16] }, x);
});

test('forward on CPU: RGB 64x64 with channel_mult [1,2,2,2], class labels, label dropout in training', async () => {
  const x = random.normal(random.key(3), [2, 3, 64, 64]);
  const config: SongUNetConfig = {
    imgResolution: 64, inChannels: 3, outChannels: 3, modelChannels: 8, channelMult: [1, 2, 2, 2], numBlocks: 1, attnResolutions: [16],
    labelDim: 4, labelDropout: 0.5, dropout: 0.1,
  };
  const labels = oneHot(tensor([1, 3], [2], 'int32'), 4);
  const a = await forward(config, x, { classLabels: labels, train: true, key: random.key(5) });
  const b = await forward(config, x, { classLabels: labels, train: true, key: random.key(5) });
  assert.deepEqual(a, b, 'training forward is a pure function of the key');
  await forward(config, x); // no labels: EDM's zero vector (unconditional)
});

test('forward on CPU: NCSN++ (Fourier, residual encoder, [1,3,3,1]) and skip encoder/decoder', async () => {
  const x = random.normal(random.key(4), [1, 3, 16, 16]);
  await forward({ imgResolution: 16, inChannels: 3, outChannels: 3, ...NCSNPP, modelChannels: 8, channelMult: [1, 2, 2], numBlocks: 1, attnResolutions: [8] }, x);
  await forward({ imgResolution: 16, inChannels: 3, outChannels: 3, modelChannels: 8, channelMult: [1, 2], numBlocks: 1, encoderType: 'skip', decoderType: 'skip', resampleFilter: [1, 3, 3, 1], implicitMlp: true }, x);
});

test('grad of a tiny SongUNet loss runs and is finite', async () => {
  const net = songUNet({ imgResolution: 8, inChannels: 2, outChannels: 2, modelChannels: 8, channelMult: [1, 2], numBlocks: 1, attnResolutions: [4], dropout: 0.1 });
  const params = net.init(random.key(0));
  const x = random.normal(random.key(1), [2, 2, 8, 8]);
  const loss = (p: typeof params) => mean(square(net.apply(p, x, tensor([0.1, -0.3]), { train: true, key: random.key(7) })));
  const g = grad(loss)(params);
  assert.deepEqual(paths(g), paths(params));
  const leaves = treeLeaves(g as never) as Tensor[];
  await realize(leaves); // one program for all gradients
  const data = await Promise.all(leaves.map((t) => t.data()));
  assert.ok(data.every((d) => Array.from(d).every(Number.isFinite)));
  assert.ok(data.some((d) => Array.from(d).some((v) => v !== 0)));
});

test('NCSN++: the Fourier frequencies stay a parameter (EDM name) but get a zero gradient (stopGradient)', async () => {
  const net = songUNet({ imgResolution: 8, inChannels: 1, outChannels: 1, ...NCSNPP, modelChannels: 8, channelMult: [1, 2], numBlocks: 1, attnResolutions: [] });
  const params = net.init(random.key(0));
  const x = random.normal(random.key(1), [2, 1, 8, 8]);
  const loss = (p: typeof params) => mean(square(net.apply(p, x, tensor([0.1, -0.3]))));
  const g = grad(loss)(params);
  const freqs = Array.from(await g.map_noise!.freqs.data());
  assert.equal(freqs.length, params.map_noise!.freqs.size);
  assert.ok(freqs.every((v) => v === 0), `freqs gradient ${freqs}`);
  assert.ok(Array.from(await g.map_layer0.weight.data()).some((v) => v !== 0), 'the rest of the mapping network trains');
});
