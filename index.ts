/**
 * Tessera's public API. Importing it registers the backends: WebGPU (the default on a real GPU),
 * the compiled CPU backend (the default otherwise) and the reference interpreter (the oracle, with
 * float64). Choose one with `setDefaultBackend`, a `backend` option of `jit`, or
 * TESSERA_BACKEND=cpu|webgpu|reference; `tessera info` says which is the default and why.
 *
 * @module tessera
 */
import { registerCpuBackend } from './backends/cpu/index.ts';
import { registerReferenceBackend } from './backends/reference/index.ts';
import { registerWebGpuBackend } from './backends/webgpu/index.ts';

registerReferenceBackend();
registerCpuBackend();
registerWebGpuBackend();

export * from './core/index.ts';
export * from './autodiff/index.ts';
export * as nn from './models/nn.ts';
export { songUNet, DDPMPP, NCSNPP, type SongUNetConfig, type SongUNetParams } from './models/songunet.ts';
export { patchCoordinates, fullCoordinates, batchCoordinates } from './models/patch.ts';
export { edmPrecondition, patchModel, makeDenoiser, checkedDenoiser, checkDenoised, type Denoiser, type DenoiserExtra, type PatchModelConfig, type PatchModelParams } from './models/precond.ts';
export { edmSigmas, heunSampler, eulerSampler, ddimSampler, initialState, noiseLevel, perSample, type Sampler, type SampleOptions } from './models/samplers.ts';
export { haar2d, inverseHaar2d, haarDecompose, haarReconstruct, type HaarLevel, type HaarComponents } from './models/haar.ts';
export {
  msdiffModel, msdiffSample, componentEnd, scaleInterval, componentLogSnr, componentMarginal, componentBeta, likelihoodWeight,
  diffuseComponents, componentList, componentShapes, liveImage, perImage, timePerSample,
  linearLogSnr, vpMarginal, vpBeta, logSnrSlope,
  type NonUniformSchedule, type MsdiffModelConfig, type MsdiffParams, type MultiScaleScore, type MsdiffSampleOptions, type LinearLogSnr,
} from './models/msdiff.ts';
export {
  conditionalModel, conditionalSample, diffuseCondition, superResolutionCondition,
  type ConditionalEstimator, type ConditionalModelConfig, type ConditionalProcess, type ConditionalScore, type ConditionalPrediction, type ConditionalSampleOptions,
} from './models/conditional.ts';
export { uvit, uvitEps, UVIT_SMALL, type UViT, type UViTConfig, type UViTParams, type UViTApplyOptions } from './models/uvit.ts';
export { drawVisible, visibleCount, maskedCount, visiblePixelMask, type MaskConfig } from './models/masks.ts';
export {
  linearSchedule, ddimSample, vpDenoiser, vpSigmas, ddimTimesteps, timestepOf,
  type DdpmSchedule, type DdpmScheduleOptions, type DdimOptions, type EpsModel, type VpDenoiserOptions, type TimestepMapping,
} from './models/ddpm.ts';
