/**
 * Model-level parity of a fast backend against the reference: the patch model's loss and gradient
 * (dropout on), and one whole training step (forward, backward, non-finite replacement, Adam, EMA,
 * counters) of a tiny patch model. Contractions sum float32 in another order on every fast
 * backend, so leaves agree to a fraction of each leaf's largest entry.
 */
import assert from 'node:assert/strict';
import { flatten, jit, leafPaths, mean, random, realize, square, sub, tensor, type PyTree, type Tensor } from '../../../core/index.ts';
import { valueAndGrad } from '../../../autodiff/index.ts';
import { patchCoordinates } from '../../../models/patch.ts';
import { patchModel, type PatchModelParams } from '../../../models/precond.ts';
import { resolveConfig } from '../../../train/config.ts';
import { orThrow } from '../../../train/errors.ts';
import { buildModel, initState, stepBatch, stepFunction } from '../../../train/step.ts';
import { paritySuite, type Target } from './helpers.ts';

/**
 * Every leaf of `got` within `rel` times the largest entry of the matching leaf of `want`, plus
 * `abs`; messages name the leaf and the element.
 */
export async function assertTreesClose(what: string, target: Target, want: PyTree<Tensor>, got: PyTree<Tensor>, rel: number, abs: number): Promise<void> {
  const w = flatten(want);
  const g = flatten(got).leaves;
  const names = leafPaths(w.def);
  assert.ok(w.leaves.length > 0 && g.length === w.leaves.length, `${what}: ${g.length} leaves on ${target}, ${w.leaves.length} on reference`);
  for (const [i, leaf] of w.leaves.entries()) {
    const u = await leaf.data();
    const v = await g[i]!.data();
    const bound = rel * Math.max(...Array.from(u, Math.abs)) + abs;
    for (let j = 0; j < u.length; j++) {
      assert.ok(Math.abs(u[j]! - v[j]!) <= bound, `${what} ${names[i]}[${j}]: reference ${u[j]}, ${target} ${v[j]}`);
    }
  }
}

const model = patchModel({
  imgResolution: 16, imgChannels: 1,
  network: { modelChannels: 8, channelMult: [1, 2], numBlocks: 1, attnResolutions: [8], channelMultEmb: 2, dropout: 0.2 },
});

/** Denoising loss of a batch of 8x8 patches with their coordinates, in training mode (dropout on). */
function lossAndGrad(params: PatchModelParams, x: Tensor, sigma: Tensor, top: Tensor, left: Tensor, key: Tensor) {
  const coords = patchCoordinates({ height: 16, width: 16 }, top, left, 8);
  const loss = (p: PatchModelParams) => mean(square(sub(model.apply(p, x, sigma, { coords, train: true, key }), x)));
  return valueAndGrad(loss)(params);
}

export const trainConfig = orThrow(
  resolveConfig(
    {
      model: { kind: 'patch', model_channels: 4, channel_mult: [1, 2], num_blocks: 1, attn_resolutions: [], dropout: 0, channel_mult_emb: 2 },
      data: { name: 'mnist', resolution: 16 },
      train: { batch_size: 4, steps: 10, lr: 0.002 },
    },
    {},
  ),
);

/** A tiny patch model's initial state (evaluated on `backend`), a batch of four 8x8 patches and the step function. */
export async function trainingFixture(backend: Target | 'reference' = 'reference') {
  const model = buildModel(trainConfig);
  const state = initState(model, trainConfig);
  await realize(flatten(state as never).leaves as never, backend);
  const b = 4;
  const images = new Float32Array(b * 8 * 8).map((_, i) => Math.sin(i * 0.37));
  const batch = stepBatch(images, [b, 1, 8, 8], Int32Array.from([0, 8, 4, 2]), Int32Array.from([8, 0, 4, 6]));
  return { state, batch, step: stepFunction(model, trainConfig) };
}

/** Registers the test that the patch model's loss and gradient on `target` agree with the reference. */
export function patchModelParity(target: Target): void {
  paritySuite(target).test('patch model loss and gradient agree with the reference', async () => {
    const params = model.init(random.key(0));
    const x = random.normal(random.key(1), [3, 1, 8, 8]);
    const args = [params, x, tensor([0.3, 1.5, 6]), tensor([0, 8, 4], [3], 'int32'), tensor([8, 0, 4], [3], 'int32'), random.key(2)] as const;
    const [refLoss, refGrad] = await jit(lossAndGrad, { backend: 'reference' })(...args);
    const [loss, grads] = await jit(lossAndGrad, { backend: target })(...args);
    const a = await refLoss.item();
    const b = await loss.item();
    assert.ok(Math.abs(a - b) <= 1e-4 * Math.abs(a), `loss: reference ${a}, ${target} ${b}`);
    await assertTreesClose('grad', target, refGrad as never, grads as never, 1e-3, 1e-9);
  });
}

/**
 * Registers the test that one training step on `target` agrees with the reference. Adam normalises
 * the gradient, so a float32 summation-order difference in a tiny gradient entry moves the update by
 * at most ~lr; the first step's update is lr * sign-like, so parameters agree to about lr * 1e-3
 * plus rounding.
 */
export function trainStepParity(target: Target): void {
  paritySuite(target).test('one training step agrees with the reference', async () => {
    const { state, batch, step } = await trainingFixture();
    const ref = await jit(step, { backend: 'reference' })(state, batch);
    const out = await jit(step, { backend: target })(state, batch);
    const a = await ref.metrics.loss.item();
    const g = await out.metrics.loss.item();
    assert.ok(Number.isFinite(a) && Math.abs(a - g) <= 1e-4 * Math.abs(a), `loss: reference ${a}, ${target} ${g}`);
    assert.equal(await out.metrics.replaced.item(), await ref.metrics.replaced.item());
    for (const tree of ['params', 'ema', 'opt'] as const) await assertTreesClose(tree, target, ref.state[tree] as never, out.state[tree] as never, 1e-4, 1e-6);
  });
}
