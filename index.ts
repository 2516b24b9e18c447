/**
 * Tessera's public API. Importing it registers both backends: WebGPU (preferred when an adapter
 * exists) and the CPU reference interpreter. Choose one with `setDefaultBackend`, a `backend`
 * option of `jit`, or TESSERA_BACKEND=cpu|webgpu.
 */
import { registerCpuBackend } from './backends/cpu/index.ts';
import { registerWebGpuBackend } from './backends/webgpu/index.ts';

registerCpuBackend();
registerWebGpuBackend();

export * from './core/index.ts';
export * from './autodiff/index.ts';
export * as nn from './models/nn.ts';
export { songUNet, DDPMPP, NCSNPP, type SongUNetConfig, type SongUNetParams } from './models/songunet.ts';
export { patchCoordinates, fullCoordinates, batchCoordinates } from './models/patch.ts';
export { edmPrecondition, patchModel, makeDenoiser, type Denoiser, type DenoiserExtra, type PatchModelConfig, type PatchModelParams } from './models/precond.ts';
export { edmSigmas, heunSampler, eulerSampler, ddimSampler, initialState, noiseLevel, perSample, type Sampler, type SampleOptions } from './models/samplers.ts';
