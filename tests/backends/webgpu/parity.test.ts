/** Per-primitive parity of WebGPU against the reference oracle; the properties are in ../parity/primitives.ts. */
import { registerWebGpuBackend } from '../../../backends/webgpu/index.ts';
import { primitiveSuite } from '../parity/primitives.ts';

registerWebGpuBackend();
primitiveSuite('webgpu');
