/** EDM preconditioning and the patch model's denoiser. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { registerReferenceBackend } from '../../backends/reference/index.ts';
import { concat, flatten, leafPaths, mul, random, reshape, setDefaultBackend, tensor, type Tensor } from '../../core/index.ts';
import { edmPrecondition, makeDenoiser, patchModel, type Denoiser, type PatchModelConfig } from '../../models/precond.ts';
import { batchCoordinates, patchCoordinates } from '../../models/patch.ts';

registerReferenceBackend();
setDefaultBackend('reference');

async function close(t: Tensor, expected: readonly number[], tol = 1e-5): Promise<void> {
  const a = Array.from(await t.data());
  assert.equal(a.length, expected.length);
  a.forEach((v, i) => assert.ok(Math.abs(v - expected[i]!) <= tol * (1 + Math.abs(expected[i]!)), `entry ${i}: ${v} vs ${expected[i]}`));
}

test('EDM Table 1 coefficients: c_skip, c_out, c_in, c_noise with sigma_data 0.5', async () => {
  const sigmas = [0.002, 0.1, 0.5, 3, 80];
  const c = edmPrecondition(tensor(sigmas));
  const sd = 0.5;
  await close(c.cSkip, sigmas.map((s) => sd ** 2 / (s ** 2 + sd ** 2)));
  await close(c.cOut, sigmas.map((s) => (s * sd) / Math.sqrt(s ** 2 + sd ** 2)));
  await close(c.cIn, sigmas.map((s) => 1 / Math.sqrt(s ** 2 + sd ** 2)));
  await close(c.cNoise, sigmas.map((s) => Math.log(s) / 4));
  // EDM Appendix B.6: c_out^2 = (1 - c_skip)^2 sd^2 + c_skip^2 sigma^2 (unit-variance effective target).
  await close(mul(c.cOut, c.cOut), sigmas.map((s) => {
    const k = sd ** 2 / (s ** 2 + sd ** 2);
    return (1 - k) ** 2 * sd ** 2 + k ** 2 * s ** 2;
  }));
  await close(edmPrecondition(tensor([1]), 1).cSkip, [0.5]);
});

const tiny: PatchModelConfig = {
  imgResolution: 8, imgChannels: 3,
  network: { modelChannels: 8, channelMult: [1, 2], numBlocks: 1, attnResolutions: [4], dropout: 0 },
};

test('patch model: D = c_skip x + c_out F([c_in x, coords]; c_noise), coordinates unscaled', async () => {
  const model = patchModel(tiny);
  const params = model.init(random.key(0));
  const keys = leafPaths(flatten(params as never).def);
  assert.ok(keys.includes('model.enc.8x8_conv.weight') && keys.includes('model.dec.8x8_aux_conv.bias'), 'EDMPrecond keys: model.*');
  assert.deepEqual(params.model.enc['8x8_conv'] && (params.model.enc['8x8_conv'] as { weight: Tensor }).weight.shape, [8, 5, 3, 3]);

  const x = random.normal(random.key(1), [2, 3, 4, 4]);
  const sigma = tensor([0.3, 7]);
  const coords = patchCoordinates({ height: 8, width: 8 }, [0, 4], [4, 2], 4);
  const d = model.apply(params, x, sigma, { coords });
  const { cSkip, cOut, cIn, cNoise } = edmPrecondition(reshape(sigma, [2, 1, 1, 1]));
  const f = model.network.apply(params.model, concat([mul(cIn, x), coords], 1), reshape(cNoise, [2]));
  const [xs, fs, cs, co] = await Promise.all([x.data(), f.data(), cSkip.data(), cOut.data()]);
  const sample = (i: number) => Math.floor(i / 48); // 3 x 4 x 4 values per sample
  await close(d, Array.from(xs, (v, i) => cs[sample(i)]! * v + co[sample(i)]! * fs[i]!));
});

test('denoiser interface: scalar or per-sample sigma, default full grid, baseline without coords', async () => {
  const model = patchModel(tiny);
  const params = model.init(random.key(0));
  const D: Denoiser = makeDenoiser(params, model);
  const x = random.normal(random.key(2), [2, 3, 8, 8]);
  const full = patchCoordinates({ height: 8, width: 8 }, 0, 0, 8);
  const a = Array.from(await D(x, tensor(0.7)).data());
  const b = Array.from(await D(x, tensor([0.7, 0.7]), { coords: batchCoordinates(full, 2) }).data());
  assert.deepEqual(a, b);
  // At init the output conv is scaled by 1e-5, so D(x; sigma) is nearly c_skip x: close to x at small sigma.
  const small = Array.from(await D(x, tensor(0.002)).data());
  const xs = Array.from(await x.data());
  small.forEach((v, i) => assert.ok(Math.abs(v - xs[i]!) < 1e-3));

  const base = patchModel({ ...tiny, useCoords: false });
  const bp = base.init(random.key(0));
  assert.deepEqual((bp.model.enc['8x8_conv'] as { weight: Tensor }).weight.shape, [8, 3, 3, 3]);
  assert.deepEqual(makeDenoiser(bp, { ...tiny, useCoords: false })(x, tensor([1, 2])).shape, [2, 3, 8, 8]);
  assert.throws(() => D(x, tensor([1, 2, 3])), /sigma \[3\]/);
});
