import { envVar } from '../platform.ts';

/**
 * `TESSERA_DEBUG=topic[,topic...]`: which generated code the renderers print as they build it
 * (`wgsl` for WebGPU kernels, `js` for the CPU backend's JavaScript kernels).
 */
export function debugEnabled(topic: string): boolean {
  return (envVar('TESSERA_DEBUG') ?? '').split(',').includes(topic);
}
