/**
 * Conditional estimators for super-resolution (CDE, CMDE): the condition's forward process, the
 * conditional sampler with the exact score of Gaussian data, the model's shapes and the loss at
 * initialisation, and training steps on both estimators.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { registerReferenceBackend } from '../../backends/reference/index.ts';
import { registerCpuBackend } from '../../backends/cpu/index.ts';
import { add, div, flatten, full, mean, mul, neg, random, setDefaultBackend, square, sub, tanh, tensor, type Tensor } from '../../core/index.ts';
import { conditionalModel, conditionalSample, diffuseCondition, superResolutionCondition, type ConditionalProcess, type ConditionalScore } from '../../models/conditional.ts';
import { haarDecompose, haarReconstruct } from '../../models/haar.ts';
import { linearLogSnr, logSnrSlope, perImage, vpMarginal } from '../../models/msdiff.ts';
import { conditionalLoss, conditionalTrainStep, initNetworkState } from '../../train/msdiff.ts';

registerReferenceBackend();
registerCpuBackend();
setDefaultBackend('cpu');

const network = { modelChannels: 8, channelMult: [1], numBlocks: 1, attnResolutions: [], dropout: 0 };
const cde = conditionalModel({ imgResolution: 8, imgChannels: 1, estimator: 'cde', network });
const cmde = conditionalModel({ imgResolution: 8, imgChannels: 1, estimator: 'cmde', network });
const item = async (x: Tensor) => (await x.data())[0]!;
const at = (t: number) => tensor([t], [1]);
/** Smooth toy images in (-1, 1). */
const images = (seed: number, b: number) => tanh(mul(random.normal(random.key(seed), [b, 1, 8, 8]), 0.8));

test('the processes: x reaches pure noise at t = 1, CMDE\'s condition keeps a log-SNR of ln 4 (noise 0.5 against the signal); CDE\'s condition is not diffused', async () => {
  assert.equal(cde.process.y, undefined);
  const py = cmde.process.y!;
  assert.equal(py.min, Math.log(4));
  const at1 = vpMarginal(linearLogSnr(py, at(1)));
  assert.ok(Math.abs((await item(at1.sigma)) / (await item(at1.alpha)) - 0.5) < 1e-6);
  const x1 = vpMarginal(linearLogSnr(cmde.process.x, at(1)));
  assert.ok((await item(x1.alpha)) < 0.007);

  const y = full([4096, 1, 2, 2], 0.6);
  assert.equal(diffuseCondition(cde.process, y, tensor(0.5), random.key(0)).condition, y);
  for (const t of [0.2, 0.7, 1]) {
    const { condition } = diffuseCondition(cmde.process, y, full([4096], t), random.key(1));
    const { alpha, sigma } = vpMarginal(linearLogSnr(py, tensor([t])));
    const [a, s] = [await item(alpha), await item(sigma)];
    const mu = await mean(condition).item();
    const v = await mean(square(sub(condition, mu))).item();
    const n = 4096 * 4;
    assert.ok(Math.abs(mu - 0.6 * a) < 4 * s / Math.sqrt(n), `t ${t}: mean ${mu}, closed form ${0.6 * a}`);
    assert.ok(Math.abs(v - s * s) < 4 * s * s * Math.sqrt(2 / n), `t ${t}: variance ${v}, closed form ${s * s}`);
  }
});

/**
 * Data with i.i.d. N(m, v) pixels: in one orthonormal Haar level the approximation is 2y (y the 2x2
 * average, known) and the details are i.i.d. N(0, v) whatever y is. So given y, x_t's approximation is
 * N(2 alpha y, sigma^2) and its details N(0, alpha^2 v + sigma^2): the exact conditional score, mapped
 * back through the inverse Haar transform (orthonormal, so scores map as the components do).
 */
function exactScore(process: ConditionalProcess, v: number): ConditionalScore {
  return (x, y, t) => {
    const { alpha, sigma } = vpMarginal(linearLogSnr(process.x, t));
    const [a, s] = [perImage(alpha), perImage(sigma)];
    const c = haarDecompose(x, 1);
    const approx = neg(div(sub(c.approx, mul(a, mul(y, 2))), square(s)));
    const details = c.details.map((d) => neg(div(d, add(mul(square(a), v), square(s)))));
    return haarReconstruct({ details, approx });
  };
}

for (const method of ['sde', 'ode'] as const) {
  test(`the conditional sampler (${method}) with the exact score returns samples consistent with y and details of the data's variance`, async () => {
    const v = 0.3;
    const y = random.normal(random.key(2), [1024, 1, 2, 2]);
    const x = await conditionalSample(exactScore(cde.process, v), { process: cde.process, y, key: random.key(3), numSteps: 200, method, backend: 'cpu' });
    assert.deepEqual(x.shape, [1024, 1, 4, 4]);
    const residual = sub(superResolutionCondition(x), y);
    const rms = Math.sqrt(await mean(square(residual)).item());
    assert.ok(rms < 0.01, `A x - y: rms ${rms}`);
    const details = haarDecompose(x, 1).details[0]!;
    const mu = await mean(details).item();
    const variance = await mean(square(sub(details, mu))).item();
    assert.ok(Math.abs(mu) < 0.03, `details: mean ${mu}`);
    assert.ok(Math.abs(variance / v - 1) < 0.1, `details: variance ${variance}, data ${v}`);
  });
}

test('with CMDE\'s process the sampler gives the score a diffused condition: the same exact-score sampler lands less exactly on y', async () => {
  const v = 0.3;
  const y = random.normal(random.key(2), [512, 1, 2, 2]);
  const rms = async (process: ConditionalProcess) => {
    const x = await conditionalSample(exactScore(process, v), { process, y, key: random.key(4), numSteps: 100, backend: 'cpu' });
    return Math.sqrt(await mean(square(sub(superResolutionCondition(x), y))).item());
  };
  const [clean, diffused] = [await rms(cde.process), await rms(cmde.process)];
  // At eps CMDE's condition carries noise of about 0.0067 (log-SNR 10): the approximation follows it.
  assert.ok(clean < 0.005 && diffused > 2 * clean && diffused < 0.05, `rms of A x - y: CDE ${clean}, CMDE ${diffused}`);
});

test('the model: CDE predicts x\'s noise, CMDE x\'s and y\'s; the score is -eps_hat / sigma_x; bad shapes are named', async () => {
  const x = random.normal(random.key(0), [2, 1, 8, 8]);
  const y = random.normal(random.key(1), [2, 1, 4, 4]);
  const t = tensor([0.1, 0.6]);
  const pCde = cde.predict(cde.init(random.key(0)), x, y, t);
  assert.deepEqual(pCde.x.shape, [2, 1, 8, 8]);
  assert.equal(pCde.y, undefined);
  const params = cmde.init(random.key(0));
  const p = cmde.predict(params, x, y, t);
  assert.deepEqual([p.x.shape, p.y!.shape], [[2, 1, 8, 8], [2, 1, 4, 4]]);
  const s = cmde.scoreFunction(params)(x, y, t);
  const sigma = await vpMarginal(linearLogSnr(cmde.process.x, t)).sigma.data();
  const [e, sc] = [await p.x.data(), await s.data()];
  assert.ok(Math.abs(sc[64]! + e[64]! / sigma[1]!) <= 1e-5 * Math.abs(sc[64]!) + 1e-9);
  assert.throws(() => cmde.predict(params, x, random.normal(random.key(1), [2, 1, 8, 8]), t), /expects x \[2,1,8,8\] and condition \[2,1,4,4\], got \[2,1,8,8\] and \[2,1,8,8\]/);
  assert.throws(() => conditionalModel({ imgResolution: 8, imgChannels: 1, estimator: 'cdiffe' as never, network }), /estimator must be 'cde' or 'cmde'/);
});

test('at initialisation (the output conv starts near zero) the loss is half the weighted noise energy: x\'s, plus y\'s a quarter as large for CMDE', async () => {
  const b = 512;
  const wx = logSnrSlope(cmde.process.x) / 2;
  const wy = logSnrSlope(cmde.process.y!) / 2;
  for (const [model, expected, bound] of [
    [cde, wx, (4 * wx * Math.sqrt(2 / (64 * b)))],
    [cmde, wx + wy / 4, 4 * Math.sqrt((wx ** 2 * 2 * 64 * b + wy ** 2 * 2 * 16 * b)) / (64 * b)],
  ] as const) {
    const loss = await conditionalLoss(model, model.init(random.key(0)), images(1, b), random.key(9), { train: false }).item();
    assert.ok(Math.abs(loss - expected) < bound, `${model.config.estimator}: loss ${loss}, expected ${expected} +- ${bound}`);
  }
});

test('training either estimator lowers its loss on held-out noise, and a step agrees between the CPU backend and the reference', async () => {
  const options = { lr: 3e-3, emaHalflifeImages: 50 };
  const data = images(3, 32);
  for (const model of [cde, cmde]) {
    const evalLoss = (p: Parameters<typeof model.predict>[0]) => conditionalLoss(model, p, data, random.key(77), { train: false }).item();
    let state = initNetworkState(model.init(random.key(0)), options);
    const start = await evalLoss(state.params);
    const step = conditionalTrainStep(model, options);
    for (let i = 0; i < 40; i++) state = (await step(state, data, random.key(1000 + i))).state;
    const end = await evalLoss(state.params);
    assert.ok(end < 0.8 * start, `${model.config.estimator}: loss ${start} -> ${end}`);

    const one = async (backend: 'cpu' | 'reference') => {
      const out = await conditionalTrainStep(model, { ...options, backend })(initNetworkState(model.init(random.key(0)), options), images(4, 4), random.key(5));
      return [await out.loss.item(), ...(await Promise.all((flatten(out.state.params as never).leaves as Tensor[]).map(async (t) => Array.from(await t.data())))).flat()];
    };
    const [c, r] = [await one('cpu'), await one('reference')];
    const worst = c.reduce((w, x, i) => Math.max(w, Math.abs(x - r[i]!) / (1e-3 + Math.abs(r[i]!))), 0);
    assert.ok(worst < 1e-3, `${model.config.estimator}: cpu and reference differ by ${worst} (relative)`);
  }
});
