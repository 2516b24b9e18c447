/** The patch model's loss and gradient, and one whole training step, on WebGPU against the reference; the tests are in ../parity/model.ts. */
import { registerWebGpuBackend } from '../../../backends/webgpu/index.ts';
import { patchModelParity, trainStepParity } from '../parity/model.ts';

registerWebGpuBackend();
patchModelParity('webgpu');
trainStepParity('webgpu');
