/** The patch model's forward pass and its gradient agree on the CPU and WebGPU backends. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import '../../index.ts';
import { flatten, jit, leafPaths, mean, random, square, sub, tensor, type Tensor } from '../../core/index.ts';
import { valueAndGrad } from '../../autodiff/index.ts';
import { patchCoordinates } from '../../models/patch.ts';
import { patchModel, type PatchModelParams } from '../../models/precond.ts';

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

test('UNet forward and grad: WebGPU equals the CPU oracle', async () => {
  const params = model.init(random.key(0));
  const x = random.normal(random.key(1), [3, 1, 8, 8]);
  const args = [params, x, tensor([0.3, 1.5, 6]), tensor([0, 8, 4], [3], 'int32'), tensor([8, 0, 4], [3], 'int32'), random.key(2)] as const;
  const [cpuLoss, cpuGrad] = await jit(lossAndGrad, { backend: 'reference' })(...args);
  const [gpuLoss, gpuGrad] = await jit(lossAndGrad, { backend: 'webgpu' })(...args);
  const a = await cpuLoss.item();
  const b = await gpuLoss.item();
  assert.ok(Math.abs(a - b) <= 1e-4 * Math.abs(a), `loss: cpu ${a}, webgpu ${b}`);
  const cpu = flatten(cpuGrad as never);
  const gpu = flatten(gpuGrad as never).leaves as Tensor[];
  const names = leafPaths(cpu.def);
  for (const [i, leaf] of (cpu.leaves as Tensor[]).entries()) {
    const u = await leaf.data();
    const v = await gpu[i]!.data();
    const scale = Math.max(...Array.from(u, Math.abs), 1e-6);
    // float32 sums in another order: agree to 1e-3 of the leaf's largest entry.
    for (let j = 0; j < u.length; j++) assert.ok(Math.abs(u[j]! - v[j]!) <= 1e-3 * scale, `${names[i]}[${j}]: cpu ${u[j]}, webgpu ${v[j]}`);
  }
});
