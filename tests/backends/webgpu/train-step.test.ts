/** One whole training step of a tiny patch model on WebGPU against the reference; the test is in ../parity/model.ts. */
import { registerWebGpuBackend } from '../../../backends/webgpu/index.ts';
import { trainStepParity } from '../parity/model.ts';

registerWebGpuBackend();
trainStepParity('webgpu');
