/**
 * One whole training step (forward, backward, non-finite replacement, Adam, EMA, counters) of a tiny
 * patch model: WebGPU equals the CPU oracle. The loss to 1e-4 relative; the updated parameters and
 * EMA to 1e-4 of each leaf's largest entry plus 1e-6 (Adam normalises the gradient, so a float32
 * summation-order difference in a tiny gradient entry moves the update by at most ~lr; the first
 * step's update is lr * sign-like, so parameters agree to about lr * 1e-3 plus rounding).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import '../../../index.ts';
import { flatten, jit, leafPaths, realize, type Tensor } from '../../../core/index.ts';
import { resolveConfig } from '../../../train/config.ts';
import { orThrow } from '../../../train/errors.ts';
import { buildModel, initState, stepBatch, stepFunction } from '../../../train/step.ts';

const config = orThrow(
  resolveConfig(
    {
      model: { kind: 'patch', model_channels: 4, channel_mult: [1, 2], num_blocks: 1, attn_resolutions: [], dropout: 0, channel_mult_emb: 2 },
      data: { name: 'mnist', resolution: 16 },
      train: { batch_size: 4, steps: 10, lr: 0.002 },
    },
    {},
  ),
);

test('one training step: WebGPU equals the CPU oracle', async () => {
  const model = buildModel(config);
  const state = initState(model, config);
  await realize(flatten(state as never).leaves as never, 'cpu');
  const b = 4;
  const images = new Float32Array(b * 8 * 8).map((_, i) => Math.sin(i * 0.37));
  const batch = stepBatch(images, [b, 1, 8, 8], Int32Array.from([0, 8, 4, 2]), Int32Array.from([8, 0, 4, 6]));
  const step = stepFunction(model, config);
  const cpu = await jit(step, { backend: 'cpu' })(state, batch);
  const gpu = await jit(step, { backend: 'webgpu' })(state, batch);
  const a = await cpu.metrics.loss.item();
  const g = await gpu.metrics.loss.item();
  assert.ok(Number.isFinite(a) && Math.abs(a - g) <= 1e-4 * Math.abs(a), `loss: cpu ${a}, webgpu ${g}`);
  assert.equal(await gpu.metrics.replaced.item(), await cpu.metrics.replaced.item());
  for (const tree of ['params', 'ema', 'opt'] as const) {
    const c = flatten(cpu.state[tree] as never);
    const w = flatten(gpu.state[tree] as never).leaves as Tensor[];
    const names = leafPaths(c.def);
    assert.ok(c.leaves.length > 0);
    for (const [i, leaf] of (c.leaves as Tensor[]).entries()) {
      const u = await leaf.data();
      const v = await w[i]!.data();
      const scale = Math.max(...Array.from(u, Math.abs));
      for (let j = 0; j < u.length; j++) {
        assert.ok(Math.abs(u[j]! - v[j]!) <= 1e-4 * scale + 1e-6, `${tree} ${names[i]}[${j}]: cpu ${u[j]}, webgpu ${v[j]}`);
      }
    }
  }
});
