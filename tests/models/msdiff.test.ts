/**
 * Multi-scale non-uniform diffusion: the schedule's closed forms, sampled marginals against them,
 * the scale-by-scale sampler with the exact score of Gaussian data, and the model's shapes.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { registerReferenceBackend } from '../../backends/reference/index.ts';
import { registerCpuBackend } from '../../backends/cpu/index.ts';
import { add, div, full, mean, mul, neg, random, setDefaultBackend, square, sub, tensor, type Tensor } from '../../core/index.ts';
import { haarDecompose } from '../../models/haar.ts';
import {
  componentBeta, componentEnd, componentList, componentLogSnr, componentMarginal, componentShapes, diffuseComponents, likelihoodWeight, msdiffModel, msdiffSample,
  perImage, scaleInterval, type MultiScaleScore, type NonUniformSchedule,
} from '../../models/msdiff.ts';

registerReferenceBackend();
registerCpuBackend();
setDefaultBackend('reference');

const schedule: NonUniformSchedule = { levels: 2 };
const at = (t: number, dtype: 'float32' | 'float64' = 'float64') => tensor([t], [1], dtype);
const item = async (x: Tensor) => (await x.data())[0]!;

test('schedule: T_j = (j+1)/n, scale intervals, log-SNR +10 at eps and -10 at T_j (held after), alpha^2 + sigma^2 = 1', async () => {
  assert.deepEqual([0, 1, 2].map((j) => componentEnd(schedule, j)), [1 / 3, 2 / 3, 1]);
  assert.deepEqual(scaleInterval(schedule, 0), [1e-5, 1 / 3]);
  assert.deepEqual(scaleInterval(schedule, 2), [2 / 3, 1]);
  for (const j of [0, 1, 2]) {
    const end = componentEnd(schedule, j);
    assert.ok(Math.abs((await item(componentLogSnr(schedule, j, at(1e-5)))) - 10) < 1e-9);
    assert.ok(Math.abs((await item(componentLogSnr(schedule, j, at(end)))) + 10) < 1e-9);
    assert.ok(Math.abs((await item(componentLogSnr(schedule, j, at((1e-5 + end) / 2)))) - 0) < 1e-9, 'linear: 0 halfway');
    if (j < 2) assert.equal(await item(componentLogSnr(schedule, j, at(0.99))), -10, 'held at -10 after T_j');
    for (const t of [0.01, 0.2, 0.5, 0.9]) {
      const { alpha, sigma } = componentMarginal(schedule, j, at(t));
      assert.ok(Math.abs((await item(square(alpha))) + (await item(square(sigma))) - 1) < 1e-12);
    }
  }
  assert.throws(() => componentEnd(schedule, 3), /component 3 does not exist \(0\.\.2\)/);
  assert.throws(() => scaleInterval({ levels: 1, eps: 0.7 }, 0), /eps must lie in \(0, 1\/2\)/);
});

test('schedule: beta_j = -d/dt log alpha_j^2 (central differences) and beta_j / sigma_j^2 is the likelihood weight', async () => {
  for (const j of [0, 1, 2]) {
    for (const t of [0.05, 0.2, 0.3]) {
      if (t >= componentEnd(schedule, j)) continue;
      const h = 1e-6;
      const logA2 = async (s: number) => Math.log(await item(square(componentMarginal(schedule, j, at(s)).alpha)));
      const numeric = -((await logA2(t + h)) - (await logA2(t - h))) / (2 * h);
      const b = await item(componentBeta(schedule, j, at(t)));
      assert.ok(Math.abs(b - numeric) <= 1e-5 * Math.max(1, numeric), `component ${j}, t ${t}: beta ${b}, -dlog(alpha^2)/dt ${numeric}`);
      const ratio = b / (await item(square(componentMarginal(schedule, j, at(t)).sigma)));
      assert.ok(Math.abs(ratio - likelihoodWeight(schedule, j)) < 1e-9 * ratio);
    }
  }
  assert.ok(Math.abs(likelihoodWeight(schedule, 0) - 20 / (1 / 3 - 1e-5)) < 1e-9);
});

test('sampled marginals match alpha m and sigma^2 (seeded, 4 standard errors); each component is pure noise at its T_j', async () => {
  const m = [0.8, -0.6, 1.5];
  const [b, side] = [2048, 2];
  const x0 = m.map((v) => full([b, 1, side, side], v));
  const count = b * side * side;
  for (const t of [0.1, 1 / 3, 0.5, 2 / 3, 0.9, 1]) {
    const { noisy } = diffuseComponents(schedule, 0, x0, full([b], t), random.key(Math.round(t * 1000)));
    for (let j = 0; j < 3; j++) {
      const { alpha, sigma } = componentMarginal(schedule, j, at(t));
      const [a, s] = [await item(alpha), await item(sigma)];
      const mu = await mean(noisy[j]!).item();
      const v = await mean(square(sub(noisy[j]!, mu))).item();
      assert.ok(Math.abs(mu - a * m[j]!) <= 4 * s / Math.sqrt(count) + 1e-6, `t ${t}, component ${j}: mean ${mu}, closed form ${a * m[j]!}`);
      assert.ok(Math.abs(v - s * s) <= 4 * s * s * Math.sqrt(2 / count) + 1e-9, `t ${t}, component ${j}: variance ${v}, closed form ${s * s}`);
      if (Math.abs(t - componentEnd(schedule, j)) < 1e-12) {
        assert.ok(a < 0.01 && Math.abs(s - 1) < 1e-4, `component ${j} at its T_j: alpha ${a}, sigma ${s}`);
      }
    }
  }
});

/** Gaussian data whose components have i.i.d. entries N(m_j, v_j): the score of each component in closed form. */
function gaussianScore(m: readonly number[], v: readonly number[]): MultiScaleScore {
  return (k, live, t) => live.map((x, i) => {
    const j = k + i;
    const { alpha, sigma } = componentMarginal(schedule, j, t);
    const [a, s] = [perImage(alpha), perImage(sigma)];
    return neg(div(sub(x, mul(a, m[j]!)), add(mul(square(a), v[j]!), square(s))));
  });
}

for (const [method, numSteps] of [['sde', 300], ['ode', 300]] as const) {
  test(`the scale-by-scale sampler (${method}, ${numSteps} steps) with the exact score returns the data's per-component mean and variance`, async () => {
    const m = [0.3, -0.5, 1.0];
    const v = [0.05, 0.2, 0.8];
    const x = await msdiffSample(gaussianScore(m, v), { schedule, shape: [1024, 1, 8, 8], key: random.key(7), numSteps, method, backend: 'cpu' });
    assert.deepEqual(x.shape, [1024, 1, 8, 8]);
    const parts = componentList(haarDecompose(x, 2));
    for (let j = 0; j < 3; j++) {
      const mu = await mean(parts[j]!).item();
      const variance = await mean(square(sub(parts[j]!, mu))).item();
      assert.ok(Math.abs(mu - m[j]!) < 0.03, `component ${j}: mean ${mu}, data ${m[j]}`);
      assert.ok(Math.abs(variance / v[j]! - 1) < 0.12, `component ${j}: variance ${variance}, data ${v[j]}`);
    }
  });
}

test('componentShapes: finest detail bands first, the approximation last', () => {
  assert.deepEqual(componentShapes([2, 3, 32, 32], 2), [[2, 9, 16, 16], [2, 9, 8, 8], [2, 3, 8, 8]]);
  assert.throws(() => componentShapes([2, 3, 12, 12], 3), /cannot be halved 3 times/);
});

test('the model: one SongUNet per scale at R / 2^k; predictNoise gives every live component, score = -eps_hat / sigma', async () => {
  const model = msdiffModel({
    imgResolution: 8, imgChannels: 1, schedule,
    networks: { modelChannels: 4, channelMult: [1], numBlocks: 1, attnResolutions: [], dropout: 0 },
  });
  assert.equal(model.components, 3);
  assert.deepEqual(model.networks.map((n) => n.config.imgResolution), [8, 4, 2]);
  const params = model.init(random.key(0));
  const all = componentList(haarDecompose(random.normal(random.key(1), [2, 1, 8, 8]), 2));
  const t = tensor([0.1, 0.2]);
  for (let k = 0; k < 3; k++) {
    const live = all.slice(k);
    const eps = model.predictNoise(params, k, live, t);
    assert.deepEqual(eps.map((e) => e.shape), live.map((c) => c.shape));
    const scores = model.score(params, k, live, t);
    const sigma = await componentMarginal(schedule, k, t).sigma.data();
    const [e0, s0] = [await eps[0]!.data(), await scores[0]!.data()];
    assert.ok(Math.abs(s0[0]! + e0[0]! / sigma[0]!) <= 1e-5 * Math.abs(s0[0]!) + 1e-9);
  }
  assert.throws(() => model.predictNoise(params, 1, all, t), /scale 1 has 2 live components, got 3/);
  const x = await msdiffSample(model.scoreFunction(params), { schedule, shape: [2, 1, 8, 8], key: random.key(3), numSteps: 6, backend: 'cpu' });
  assert.deepEqual(x.shape, [2, 1, 8, 8]);
  assert.ok((await x.data()).every(Number.isFinite));
  await assert.rejects(msdiffSample(model.scoreFunction(params), { schedule, shape: [2, 1, 8, 8], key: random.key(3), numSteps: 2 }), /numSteps must be a whole number >= 3/);
  const wrong: MultiScaleScore = (k, live) => live.slice(1);
  await assert.rejects(msdiffSample(wrong, { schedule, shape: [2, 1, 8, 8], key: random.key(3), numSteps: 3 }), /scale 2 must return 1 scores \(one per live component\), got 0/);
});
