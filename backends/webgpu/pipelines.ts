/**
 * Compute pipelines, built once and cached by a structural hash of their WGSL, so that programs
 * sharing a kernel (and later compilations of the same program) reuse it. `TESSERA_DEBUG=wgsl`
 * prints every kernel when it is first built.
 */
import { hashString } from '../../core/program.ts';
import { debugEnabled } from '../kernel/debug.ts';
import type { GpuContext } from './device.ts';

export class PipelineCache {
  private readonly pipelines = new Map<string, GPUComputePipeline>();

  constructor(private readonly ctx: GpuContext) {}

  get size(): number {
    return this.pipelines.size;
  }

  /** The pipeline for `wgsl`; errors surface at the next sync point as a BackendError naming `label`. */
  get(label: string, wgsl: string): GPUComputePipeline {
    const key = hashString(wgsl);
    const hit = this.pipelines.get(key);
    if (hit !== undefined) return hit;
    if (debugEnabled('wgsl')) console.log(`// ---- ${label} (${key})\n${wgsl}`);
    const device = this.ctx.device;
    const pipeline = this.ctx.scoped(`kernel ${label}`, () => {
      const module = device.createShaderModule({ label, code: wgsl });
      return device.createComputePipeline({ label, layout: 'auto', compute: { module, entryPoint: 'main' } });
    });
    this.pipelines.set(key, pipeline);
    return pipeline;
  }
}
