/**
 * Samplers against theory: for data N(m, s^2) the ideal denoiser is D(x; sigma) = m + s^2/(s^2 + sigma^2) (x - m),
 * and sampling with it must give mean m and standard deviation s within sampling error.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { registerReferenceBackend } from '../../backends/reference/index.ts';
import { add, cast, div, mul, random, setDefaultBackend, ShapeError, square, sub, sum, tensor, type Tensor } from '../../core/index.ts';
import { ddimSampler, edmSigmas, eulerSampler, heunSampler, type ChurnOptions, type Sampler } from '../../models/samplers.ts';
import { dpmSolver2Sampler, gaussianDenoiser } from '../../models/examples/custom-sampler.ts';
import { checkedDenoiser, makeDenoiser, patchModel, type Denoiser } from '../../models/precond.ts';
import { patchCoordinates } from '../../models/patch.ts';

registerReferenceBackend();
setDefaultBackend('reference');

const [m, s, n] = [0.5, 0.5, 4096];
const D = gaussianDenoiser(m, s);

function stats(v: ArrayLike<number>): { mean: number; std: number } {
  const a = Array.from(v);
  const mean = a.reduce((x, y) => x + y, 0) / a.length;
  return { mean, std: Math.sqrt(a.reduce((x, y) => x + (y - mean) ** 2, 0) / (a.length - 1)) };
}

test('EDM time steps (eq. 5): t_0 = sigma_max, t_{N-1} = sigma_min, t_N = 0, rho-spaced', () => {
  const t = edmSigmas();
  assert.equal(t.length, 19);
  assert.ok(Math.abs(t[0]! - 80) < 1e-9 && Math.abs(t[17]! - 0.002) < 1e-12 && t[18] === 0);
  const r = 1 / 7;
  assert.ok(Math.abs(t[5]! - (80 ** r + (5 / 17) * (0.002 ** r - 80 ** r)) ** 7) < 1e-12);
  assert.ok(t.every((v, i) => i === 0 || v < t[i - 1]!));
  const one = edmSigmas({ numSteps: 1, sigmaMax: 3 });
  assert.ok(one.length === 2 && Math.abs(one[0]! - 3) < 1e-12 && one[1] === 0);
});

test('Heun (EDM Algorithm 1) reproduces the exact recurrence of its steps on a linear ODE', async () => {
  const latents = tensor([[-1.5], [0], [0.3], [2]]);
  const x = await heunSampler(D, { latents });
  // For this D the ODE is linear in x - m: every step multiplies x - m by a known factor.
  const t = edmSigmas();
  const f = (y: number, sg: number) => (y * sg) / (s * s + sg * sg);
  let factor = 1;
  for (let i = 0; i < 18; i++) {
    const [a, b] = [t[i]!, t[i + 1]!];
    const euler = factor + (b - a) * f(factor, a);
    factor = b > 0 ? factor + ((b - a) / 2) * (f(factor, a) + f(euler, b)) : euler;
  }
  const expected = [-1.5, 0, 0.3, 2].map((z) => m + factor * (80 * z - m));
  Array.from(await x.data()).forEach((v, i) => assert.ok(Math.abs(v - expected[i]!) < 1e-4, `${v} vs ${expected[i]}`));
  assert.ok(x.isRealized && x.inputs.length === 0, 'the result is a concrete tensor: no graph carried across steps');
});

test('onStep reports each step after it has run, for a progress bar', async () => {
  const seen: string[] = [];
  for (const sampler of [heunSampler, eulerSampler, ddimSampler]) {
    const calls: [number, number][] = [];
    await sampler(D, { latents: tensor([[0.1]]), numSteps: 3, onStep: (step, steps) => calls.push([step, steps]) });
    seen.push(JSON.stringify(calls));
  }
  assert.deepEqual(seen, Array(3).fill('[[1,3],[2,3],[3,3]]'));
});

const cases: [string, Sampler<ChurnOptions>, number, ChurnOptions][] = [
  ['heun', heunSampler, 64, {}],
  ['heun with churn', heunSampler, 64, { sChurn: 30, sMin: 0.05, sMax: 50, sNoise: 1.003 }],
  ['euler', eulerSampler, 512, {}],
  ['euler with churn', eulerSampler, 512, { sChurn: 20 }],
  ['ddim', ddimSampler, 512, {}],
  ['custom DPM-Solver-2', dpmSolver2Sampler, 64, {}],
];

for (const [name, sampler, numSteps, churn] of cases) {
  test(`${name}: samples of N(${m}, ${s}^2) have mean m and std s within 4 standard errors`, async () => {
    const x = await sampler(D, { key: random.key(11), shape: [n, 1], numSteps, ...churn });
    assert.deepEqual(x.shape, [n, 1]);
    const { mean, std } = stats(await x.data());
    const seMean = s / Math.sqrt(n);
    const seStd = s / Math.sqrt(2 * n);
    assert.ok(Math.abs(mean - m) < 4 * seMean, `mean ${mean} (${((mean - m) / seMean).toFixed(2)} SE)`);
    assert.ok(Math.abs(std - s) < 4 * seStd, `std ${std} (${((std - s) / seStd).toFixed(2)} SE)`);
  });
}

test('samplers are pure functions of the key; churn needs a key; bad schedules are refused', async () => {
  const a = await heunSampler(D, { key: random.key(3), shape: [8, 1], numSteps: 4, sChurn: 10 });
  const b = await heunSampler(D, { key: random.key(3), shape: [8, 1], numSteps: 4, sChurn: 10 });
  const c = await heunSampler(D, { key: random.key(4), shape: [8, 1], numSteps: 4, sChurn: 10 });
  assert.deepEqual(await a.data(), await b.data());
  assert.notDeepEqual(await a.data(), await c.data());
  await assert.rejects(heunSampler(D, { latents: tensor([[0]]), sChurn: 1 }), /needs a key/);
  await assert.rejects(eulerSampler(D, { latents: tensor([[0]]), sigmas: [1, 2, 0] }), /decrease strictly/);
  await assert.rejects(eulerSampler(D, { shape: [1, 1] }), /latents, or a key and a shape/);
});

test('patch model: sampling at full resolution, on a sub-window and on a larger canvas', async () => {
  const config = { imgResolution: 8, imgChannels: 1, network: { modelChannels: 8, channelMult: [1, 2], numBlocks: 1, attnResolutions: [4], dropout: 0 } };
  const model = patchModel(config);
  const denoiser = makeDenoiser(model.init(random.key(0)), model);
  const full = { height: 8, width: 8 };
  const opts = { key: random.key(1), numSteps: 3 };
  const check = async (x: Tensor, shape: number[]) => {
    assert.deepEqual(x.shape, shape);
    assert.ok(Array.from(await x.data()).every(Number.isFinite));
  };
  await check(await heunSampler(denoiser, { ...opts, shape: [2, 1, 8, 8] }), [2, 1, 8, 8]);
  await check(await heunSampler(denoiser, { ...opts, shape: [1, 1, 4, 4], extra: { coords: patchCoordinates(full, 2, 4, 4) } }), [1, 1, 4, 4]);
  await check(await eulerSampler(denoiser, { ...opts, shape: [1, 1, 16, 16], extra: { coords: patchCoordinates(full, -4, -4, 16) } }), [1, 1, 16, 16]);
});

test('every sampler refuses a denoiser whose output is not x\'s shape and dtype, and says sigma is per sample', async () => {
  // The README's old ideal denoiser: sigma [B] against x [B, 1] broadcasts to [B, B].
  const broadcasting: Denoiser = (x, sigma) => add(m, mul(div(s * s, add(square(sigma), s * s)), sub(x, m)));
  const wrongDtype: Denoiser = (x) => cast(x, 'float64');
  for (const [name, sampler] of [['heunSampler', heunSampler], ['eulerSampler', eulerSampler], ['ddimSampler', ddimSampler]] as const) {
    await assert.rejects(sampler(broadcasting, { key: random.key(0), shape: [6, 1], numSteps: 2 }), (e: Error) => {
      assert.ok(e instanceof ShapeError, `${e}`);
      assert.equal(e.message, `${name}: the denoiser returned float32 [6,6] for x float32 [6,1]; D(x, sigma) must return x's shape and dtype. `
        + 'sigma [6] is per sample (one noise level for each of the 6 samples): reshape it to [B, 1, ...], here [6, 1], '
        + 'before combining it with x (reshape(sigma, [6, 1])), or it broadcasts against x\'s other axes.');
      return true;
    });
    await assert.rejects(sampler(wrongDtype, { key: random.key(0), shape: [2, 3, 1, 1], numSteps: 2 }), /the denoiser returned float64 \[2,3,1,1\] for x float32 \[2,3,1,1\]/);
  }
  // The check wraps a user's own sampler's denoiser too.
  await assert.rejects(async () => checkedDenoiser(broadcasting, 'mySampler')(tensor([[1], [2]]), tensor([1, 2])), /^ShapeError: mySampler: the denoiser returned float32 \[2,2\]/);
});

test('makeDenoiser checks its model\'s output shape', () => {
  const model = patchModel({ imgResolution: 4, imgChannels: 1, network: { modelChannels: 4, channelMult: [1], numBlocks: 1, attnResolutions: [], dropout: 0 } });
  const params = model.init(random.key(0));
  const x = tensor(new Float32Array(16), [1, 1, 4, 4]);
  assert.deepEqual(makeDenoiser(params, model)(x, tensor([1])).shape, [1, 1, 4, 4]);
  const broken = { ...model, apply: (_p: unknown, xIn: Tensor) => sum(xIn, [1]) };
  assert.throws(() => makeDenoiser(params, broken as unknown as typeof model)(x, tensor([1])), /^ShapeError: makeDenoiser: the denoiser returned float32 \[1,4,4\] for x float32 \[1,1,4,4\]/);
});
