/**
 * DDPM's schedule, DDIM and the VP-preconditioned denoiser, against theory: for data N(m, s^2) the
 * ideal epsilon network is E[eps | x_t] = sqrt(1 - abar) (x_t - sqrt(abar) m) / (abar s^2 + 1 - abar),
 * and every DDIM step is then linear in x, so its outcome is known exactly.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { registerReferenceBackend } from '../../backends/reference/index.ts';
import { add, cast, div, floor, mul, random, reshape, setDefaultBackend, sqrt, sub, tensor, type Tensor } from '../../core/index.ts';
import {
  alphaBarAt, ddimSample, ddimSigma, ddimTimesteps, linearSchedule, timestepOf, vpDenoiser, vpSigmas, type EpsModel,
} from '../../models/ddpm.ts';
import { gaussianDenoiser } from '../../models/examples/custom-sampler.ts';
import { ddimSampler, heunSampler } from '../../models/samplers.ts';

registerReferenceBackend();
setDefaultBackend('reference');

const schedule = linearSchedule();
const [m, s] = [0.5, 0.5];
const values = async (t: Tensor): Promise<number[]> => Array.from(await t.data());

/** The ideal epsilon network for N(m, s^2) data at (integer-valued) time steps t. */
const gaussianEps: EpsModel = (x, t) => {
  const a = reshape(alphaBarAt(schedule, cast(floor(add(t, 0.5)), 'int32')), [x.shape[0]!, ...x.shape.slice(1).map(() => 1)]);
  return div(mul(sqrt(sub(1, a)), sub(x, mul(sqrt(a), m))), add(mul(a, s * s), sub(1, a)));
};

/** One DDIM step on this data is x -> A x + B (+ sigma z): the exact mean and variance after all steps from N(0, 1). */
function exactMoments(timesteps: readonly number[], eta: number): { mean: number; variance: number; gain: number; offset: number } {
  let [mean, variance, gain, offset] = [0, 1, 1, 0];
  for (let i = timesteps.length - 1; i >= 0; i--) {
    const aT = schedule.alphasCumprod[timesteps[i]!]!;
    const aS = i > 0 ? schedule.alphasCumprod[timesteps[i - 1]!]! : 1;
    const sigma = ddimSigma(aT, aS, eta);
    const k = Math.sqrt(1 - aT) / (aT * s * s + 1 - aT);
    const c = Math.sqrt(Math.max(1 - aS - sigma * sigma, 0));
    const a = (Math.sqrt(aS) * (1 - Math.sqrt(1 - aT) * k)) / Math.sqrt(aT) + c * k;
    const b = Math.sqrt(aS) * Math.sqrt(1 - aT) * k * m - c * k * Math.sqrt(aT) * m;
    [mean, variance, gain, offset] = [a * mean + b, a * a * variance + sigma * sigma, a * gain, a * offset + b];
  }
  return { mean, variance, gain, offset };
}

test('DDPM\'s linear schedule: betas 1e-4 .. 0.02 over 1000 steps, abar_T = 4.04e-5, sigma from 0.0100 to 157.4', () => {
  assert.equal(schedule.numSteps, 1000);
  assert.ok(Math.abs(schedule.betas[0]! - 1e-4) < 1e-15 && Math.abs(schedule.betas[999]! - 0.02) < 1e-15);
  assert.ok(Math.abs(schedule.betas[500]! - (1e-4 + (500 * 0.0199) / 999)) < 1e-15);
  assert.equal(schedule.alphasCumprod[999]!.toExponential(2), '4.04e-5');
  assert.equal(schedule.sigmas[0]!.toFixed(4), '0.0100');
  assert.equal(schedule.sigmas[999]!.toFixed(1), '157.4');
  assert.ok(schedule.sigmas.every((v, i) => i === 0 || v > schedule.sigmas[i - 1]!));
  assert.deepEqual(ddimTimesteps(schedule, 4), [0, 250, 500, 750]);
  assert.equal(ddimTimesteps(schedule, 1000).length, 1000);
});

test('DDIM\'s sigma at eta 1 over consecutive steps is DDPM\'s posterior variance (1 - abar_{t-1}) / (1 - abar_t) beta_t', () => {
  for (const t of [1, 10, 500, 999]) {
    const [aT, aS] = [schedule.alphasCumprod[t]!, schedule.alphasCumprod[t - 1]!];
    const tilde = ((1 - aS) / (1 - aT)) * schedule.betas[t]!;
    assert.ok(Math.abs(ddimSigma(aT, aS, 1) ** 2 / tilde - 1) < 1e-9, `t ${t}`);
    assert.equal(ddimSigma(aT, aS, 0), 0);
  }
});

test('timestepOf: every sigma_t maps to t; nearest rounds in log sigma, continuous interpolates', async () => {
  const ts = [0, 1, 2, 17, 250, 500, 998, 999];
  const sig = tensor(ts.map((t) => schedule.sigmas[t]!));
  assert.deepEqual(await values(timestepOf(schedule, sig, 'nearest')), ts);
  (await values(timestepOf(schedule, sig, 'continuous'))).forEach((v, i) => assert.ok(Math.abs(v - ts[i]!) < 2e-3, `${v} vs ${ts[i]}`));
  const between = (t: number, f: number) => Math.exp((1 - f) * Math.log(schedule.sigmas[t]!) + f * Math.log(schedule.sigmas[t + 1]!));
  const probe = tensor([between(100, 0.3), between(100, 0.7), between(600, 0.25), 1e-4, 1e4]);
  assert.deepEqual(await values(timestepOf(schedule, probe, 'nearest')), [100, 101, 600, 0, 999]);
  const cont = await values(timestepOf(schedule, probe, 'continuous'));
  [100.3, 100.7, 600.25, 0, 999].forEach((e, i) => assert.ok(Math.abs(cont[i]! - e) < 2e-3, `${cont[i]} vs ${e}`));
});

test('the VP-preconditioned epsilon network is the closed-form Gaussian denoiser at every step\'s sigma', async () => {
  const D = vpDenoiser(gaussianEps, { schedule });
  const ideal = gaussianDenoiser(m, s);
  const x = reshape(tensor([-3, -0.5, 0.2, 1, 4]), [5, 1]);
  for (const t of [0, 3, 100, 600, 999]) {
    const sigma = tensor(schedule.sigmas[t]!);
    const got = await values(D(mul(x, 1 + schedule.sigmas[t]!), sigma));
    const want = await values(ideal(mul(x, 1 + schedule.sigmas[t]!), sigma));
    got.forEach((v, i) => assert.ok(Math.abs(v - want[i]!) < 1e-4 * (1 + Math.abs(want[i]!)), `t ${t}: ${v} vs ${want[i]}`));
  }
});

test('deterministic DDIM on the epsilon network takes exactly the steps of EDM\'s ddimSampler on the VP denoiser', async () => {
  const timesteps = ddimTimesteps(schedule, 20);
  const z = random.normal(random.key(3), [8, 1]);
  const ddim = await values(await ddimSample(gaussianEps, { schedule, timesteps, latents: z }));
  // EDM's sampler starts from latents * sigma_max on x~ = x / sqrt(abar): z / sqrt(1 - abar_T) * sigma_T.
  const aT = schedule.alphasCumprod[timesteps.at(-1)!]!;
  const edm = await values(await ddimSampler(vpDenoiser(gaussianEps, { schedule }), { latents: div(z, Math.sqrt(1 - aT)), sigmas: vpSigmas(schedule, timesteps) }));
  edm.forEach((v, i) => assert.ok(Math.abs(v - ddim[i]!) < 1e-4, `${v} vs ${ddim[i]}`));
  // And both are the exact affine map of this data's DDIM steps.
  const { gain, offset } = exactMoments(timesteps, 0);
  const zs = await values(z);
  ddim.forEach((v, i) => assert.ok(Math.abs(v - (gain * zs[i]! + offset)) < 1e-4, `${v} vs ${gain * zs[i]! + offset}`));
});

const n = 4096;
function moments(v: readonly number[]): { mean: number; variance: number } {
  const mean = v.reduce((a, b) => a + b, 0) / v.length;
  return { mean, variance: v.reduce((a, b) => a + (b - mean) ** 2, 0) / (v.length - 1) };
}

test('DDIM with eta 1: sample mean and variance are those of the exact step recursion (4 standard errors)', async () => {
  const timesteps = ddimTimesteps(schedule, 50);
  const x = await ddimSample(gaussianEps, { schedule, timesteps, eta: 1, key: random.key(5), shape: [n, 1] });
  const { mean, variance } = moments(await values(x));
  const exact = exactMoments(timesteps, 1);
  assert.ok(Math.abs(mean - exact.mean) < 4 * Math.sqrt(exact.variance / n), `mean ${mean} vs ${exact.mean}`);
  assert.ok(Math.abs(variance - exact.variance) < 4 * exact.variance * Math.sqrt(2 / n), `variance ${variance} vs ${exact.variance}`);
  // eta 1 is stochastic: a pure function of the key.
  const again = await ddimSample(gaussianEps, { schedule, timesteps, eta: 1, key: random.key(5), shape: [n, 1] });
  assert.deepEqual(await x.data(), await again.data());
});

test('EDM\'s Heun sampler samples the epsilon network through the VP denoiser: N(m, s^2) within 4 standard errors', async () => {
  const sigmas = vpSigmas(schedule, ddimTimesteps(schedule, 25));
  const x = await heunSampler(vpDenoiser(gaussianEps, { schedule }), { key: random.key(9), shape: [n, 1], sigmas });
  const { mean, variance } = moments(await values(x));
  assert.ok(Math.abs(mean - m) < 4 * s / Math.sqrt(n), `mean ${mean}`);
  assert.ok(Math.abs(Math.sqrt(variance) - s) < 4 * s / Math.sqrt(2 * n), `std ${Math.sqrt(variance)}`);
});
