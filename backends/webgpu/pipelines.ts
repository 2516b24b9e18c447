/**
 * Compute pipelines, built once, asynchronously, and cached by a structural hash of their WGSL, so
 * that programs sharing a kernel (and later compilations of the same program) reuse it. `TESSERA_DEBUG=wgsl`
 * prints every kernel when it is first built.
 */
import { BackendError } from '../../core/errors.ts';
import { hashString } from '../../core/program.ts';
import { debugEnabled } from '../kernel/debug.ts';
import type { GpuContext } from './device.ts';

export class PipelineCache {
  private readonly pipelines = new Map<string, Promise<GPUComputePipeline>>();

  constructor(private readonly ctx: GpuContext) {}

  get size(): number {
    return this.pipelines.size;
  }

  /**
   * The pipeline for `wgsl`, built with `createComputePipelineAsync`: a program asks for all its new
   * pipelines at once and the driver compiles them side by side. A failure rejects with a
   * BackendError naming `label`.
   */
  get(label: string, wgsl: string): Promise<GPUComputePipeline> {
    const key = hashString(wgsl);
    const hit = this.pipelines.get(key);
    if (hit !== undefined) return hit;
    if (debugEnabled('wgsl')) console.log(`// ---- ${label} (${key})\n${wgsl}`);
    const device = this.ctx.device;
    const module = this.ctx.scoped(`kernel ${label}`, () => device.createShaderModule({ label, code: wgsl }));
    const pipeline = device.createComputePipelineAsync({ label, layout: 'auto', compute: { module, entryPoint: 'main' } }).catch((e: unknown) => {
      throw new BackendError(`kernel ${label}: the pipeline could not be built: ${e instanceof Error ? e.message : String(e)}`);
    });
    this.pipelines.set(key, pipeline);
    return pipeline;
  }
}
