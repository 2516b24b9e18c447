/**
 * The ceilings of a WebGPU adapter, measured rather than taken from a datasheet (a software
 * rasteriser such as lavapipe has none): the rate of f32 fused multiply-adds with every operand in
 * registers, which no matmul or convolution can pass, and the bandwidth of a streaming kernel
 * (read one buffer, write another), which bounds elementwise kernels and reductions. `npm run bench`
 * prints both beside its WebGPU rows, so a kernel's GFLOP/s reads as a fraction of what the adapter
 * can do at all.
 *
 *   npx tsx bench/webgpu-peak.ts
 */
import os from 'node:os';
import { pathToFileURL } from 'node:url';
import { Bench } from 'tinybench';

export interface Ceilings {
  /** f32 multiply-add, operands in registers. */
  readonly gflops: number;
  /** Streaming read + write. */
  readonly gbps: number;
  readonly iterations: number;
  readonly invocations: number;
}

/** vec4 accumulators per invocation: 12 independent FMAs in flight. Lavapipe runs 8 invocations per
 * AVX2 register, a vec4 as four registers; more accumulators would spill its 16 registers. */
const ACCUMULATORS = 3;
const WORKGROUP = 64;

const FMA_WGSL = /* wgsl */ `
@group(0) @binding(0) var<storage, read_write> out: array<vec4<f32>>;
@group(0) @binding(1) var<uniform> p: vec4<f32>;
@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = gid.x + gid.y * nwg.x * ${WORKGROUP}u;
  let iterations = u32(p.x);
  let m = vec4<f32>(p.y);
  let c = vec4<f32>(p.z);
  ${Array.from({ length: ACCUMULATORS }, (_, k) => `var a${k} = vec4<f32>(f32(i) * 1e-9 + ${k}.0);`).join('\n  ')}
  for (var k = 0u; k < iterations; k++) {
    ${Array.from({ length: ACCUMULATORS }, (_, k) => `a${k} = fma(a${k}, m, c);`).join('\n    ')}
  }
  out[i] = ${Array.from({ length: ACCUMULATORS }, (_, k) => `a${k}`).join(' + ')};
}`;

const COPY_WGSL = /* wgsl */ `
@group(0) @binding(0) var<storage, read> src: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read_write> dst: array<vec4<f32>>;
@group(0) @binding(2) var<uniform> p: vec4<f32>;
@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = gid.x + gid.y * nwg.x * ${WORKGROUP}u;
  if (i < arrayLength(&dst)) { dst[i] = src[i] * p.y + p.z; }
}`;

/** Workgroups as a grid within the per-dimension limit. */
function grid(workgroups: number, maxDim: number): [number, number] {
  return workgroups <= maxDim ? [workgroups, 1] : [maxDim, Math.ceil(workgroups / maxDim)];
}

/** Median seconds of `run` (submit and wait) by tinybench, at least 3 runs. */
async function medianSeconds(run: () => Promise<void>): Promise<number> {
  await run();
  const bench = new Bench({ time: 1000, iterations: 3, warmupIterations: 1 });
  bench.add('run', run);
  await bench.run();
  const p50 = (bench.getTask('run')?.result as { latency?: { p50?: number } } | undefined)?.latency?.p50;
  if (p50 === undefined) throw new Error('webgpu-peak: tinybench gave no result');
  return p50 / 1000;
}

/**
 * Measures the FMA rate and the streaming bandwidth of `device`. Invocations: enough to fill a
 * large GPU (2^20); iterations grow until one dispatch takes about 50 ms.
 */
export async function measureCeilings(device: GPUDevice, invocations = 1 << 20): Promise<Ceilings> {
  const maxDim = device.limits.maxComputeWorkgroupsPerDimension;
  const uniform = (values: number[]): GPUBuffer => {
    const b = device.createBuffer({ size: 16, usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST });
    device.queue.writeBuffer(b, 0, new Float32Array(values));
    return b;
  };
  const dispatch = async (pipeline: GPUComputePipeline, entries: GPUBindGroupEntry[], workgroups: number): Promise<void> => {
    const enc = device.createCommandEncoder();
    const pass = enc.beginComputePass();
    pass.setPipeline(pipeline);
    pass.setBindGroup(0, device.createBindGroup({ layout: pipeline.getBindGroupLayout(0), entries }));
    pass.dispatchWorkgroups(...grid(workgroups, maxDim));
    pass.end();
    device.queue.submit([enc.finish()]);
    await device.queue.onSubmittedWorkDone();
  };

  const fma = await device.createComputePipelineAsync({ layout: 'auto', compute: { module: device.createShaderModule({ code: FMA_WGSL }), entryPoint: 'main' } });
  const out = device.createBuffer({ size: invocations * 16, usage: GPUBufferUsage.STORAGE });
  let iterations = 16;
  let seconds = 0;
  for (;;) {
    const params = uniform([iterations, 0.9999999, 1e-7, 0]);
    const run = () => dispatch(fma, [{ binding: 0, resource: { buffer: out } }, { binding: 1, resource: { buffer: params } }], invocations / WORKGROUP);
    const t0 = performance.now();
    await run();
    if (performance.now() - t0 < 50 && iterations < 1 << 24) {
      iterations *= 4;
      continue;
    }
    seconds = await medianSeconds(run);
    break;
  }
  const gflops = (invocations * iterations * ACCUMULATORS * 4 * 2) / seconds / 1e9;

  const copy = await device.createComputePipelineAsync({ layout: 'auto', compute: { module: device.createShaderModule({ code: COPY_WGSL }), entryPoint: 'main' } });
  const bytes = Math.min(64 << 20, device.limits.maxStorageBufferBindingSize);
  const [src, dst] = [0, 1].map(() => device.createBuffer({ size: bytes, usage: GPUBufferUsage.STORAGE }));
  const params = uniform([0, 1.0001, 1e-7, 0]);
  const copySeconds = await medianSeconds(() =>
    dispatch(copy, [{ binding: 0, resource: { buffer: src! } }, { binding: 1, resource: { buffer: dst! } }, { binding: 2, resource: { buffer: params } }], bytes / 16 / WORKGROUP));
  for (const b of [out, src!, dst!]) b.destroy();
  return { gflops, gbps: (2 * bytes) / copySeconds / 1e9, iterations, invocations };
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  process.env['XDG_RUNTIME_DIR'] ??= '/tmp/xdg';
  const { createWebGpuBackend } = await import('../backends/webgpu/index.ts');
  const { globals } = await import('webgpu');
  Object.assign(globalThis, globals);
  const backend = await createWebGpuBackend();
  const c = await measureCeilings(backend.ctx.device);
  const adapter = Object.values(backend.ctx.adapterInfo).filter((v) => v !== '').join(' / ');
  console.log(`${adapter}: f32 FMA, operands in registers: ${c.gflops.toFixed(1)} GFLOP/s (${c.invocations} invocations x ${c.iterations} iterations); streaming read + write: ${c.gbps.toFixed(1)} GB/s; load average ${os.loadavg().map((l) => l.toFixed(2)).join(', ')}`);
  process.exit(0);
}
