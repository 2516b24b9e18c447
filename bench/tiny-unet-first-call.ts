/**
 * First-call time of a small two-level patch UNet's forward + backward (the model of
 * tests/backends/parity/model.ts, on two 8x8 patches) on webgpu: trace + compile + first run, which
 * on lavapipe includes the driver compiling every shader. `TESSERA_WEBGPU_SPECIALIZE=1` compares
 * specialized kernels; `MESA_SHADER_CACHE_DISABLE=true` measures a fresh machine.
 *
 *   npx tsx bench/tiny-unet-first-call.ts
 */
import { jit, mean, random, square, sub, tensor, flatten, realize, type Tensor } from '../core/index.ts';
import { valueAndGrad } from '../autodiff/index.ts';
import { patchCoordinates } from '../models/patch.ts';
import { patchModel, type PatchModelParams } from '../models/precond.ts';
import { registerWebGpuBackend } from '../backends/webgpu/index.ts';
import { loadavg } from 'node:os';
registerWebGpuBackend();
const model = patchModel({ imgResolution: 16, imgChannels: 1, network: { modelChannels: 8, channelMult: [1, 2], numBlocks: 1, attnResolutions: [8], channelMultEmb: 2, dropout: 0.2 } });
function lossAndGrad(params: PatchModelParams, x: Tensor, sigma: Tensor, top: Tensor, left: Tensor, key: Tensor) {
  const coords = patchCoordinates({ height: 16, width: 16 }, top, left, 8);
  return valueAndGrad((p: PatchModelParams) => mean(square(sub(model.apply(p, x, sigma, { coords, train: true, key }), x))))(params);
}
console.log(`load ${loadavg().map((l) => l.toFixed(2)).join(' ')}`);
const params = model.init(random.key(0));
const x = random.normal(random.key(1), [2, 1, 8, 8]);
const args = [params, x, tensor([0.3, 1.5]), tensor([0, 8], [2], 'int32'), tensor([8, 0], [2], 'int32'), random.key(2)] as const;
await realize([...flatten(params as never).leaves, x] as never, 'webgpu');
const f = jit(lossAndGrad, { backend: 'webgpu' });
for (const what of ['first', 'second']) {
  const t = performance.now();
  const [loss] = await f(...args);
  await loss.item();
  console.log(`${what} call: ${((performance.now() - t) / 1000).toFixed(2)} s`);
}
process.exit(0);
