/**
 * Where the WebGPU demo step's steady time goes, by kind of kernel: each kernel of the packed 16x16
 * step (batch 32) dispatched alone, the minimum of three dispatches after a warm one, summed by kind,
 * with the step's contraction FLOPs and their rate. A profiling aid: the sum leaves out launching.
 *
 *   npx tsx bench/webgpu-step-kernels.ts [--detail 20]
 *
 * `--detail N` also lists the N slowest contractions with their GEMM sizes (batch x m x n x k) and rate,
 * and the N slowest other kernels with the elements they write.
 */
import '../index.ts';
import { flatten, buildProgram, realize, type PyTree, type Tensor } from '../core/index.ts';
import { createWebGpuBackend } from '../backends/webgpu/index.ts';
import { writesOf } from '../backends/kernel/memory.ts';
import { bindingBytes } from '../backends/webgpu/memory.ts';
import { foldGrid } from '../backends/webgpu/kernel.ts';
import { sizeOf } from '../core/shape.ts';
import { gemmShape } from '../backends/webgpu/gemm.ts';
import { programFlops } from './flops.ts';
import { loadConfig } from '../train/config.ts';
import { orThrow } from '../train/errors.ts';
import { trainingMethod } from '../train/method.ts';
import { packLayout } from '../train/packed.ts';
import { buildModel, initState, stepBatch, stepFunction } from '../train/step.ts';
import { loadavg } from 'node:os';

console.log(`load ${loadavg().map((x) => x.toFixed(2)).join(' ')}`);
const config = orThrow(await loadConfig('train/configs/demo.json'));
const model = buildModel(config);
const named = initState(model, config);
await realize(flatten(named as never).leaves as never, 'cpu');
const state = await trainingMethod(config).carry!.to(named as never);
const [b, r] = [32, 16];
const batch = stepBatch(new Float32Array(b * r * r).map((_, i) => Math.sin(i)), [b, 1, r, r], new Int32Array(b), new Int32Array(b));
const leaves = flatten(stepFunction(model, config, packLayout(named.params))(state as never, batch) as unknown as PyTree<Tensor>).leaves;
const { program, lifted } = buildProgram('trainStep', leaves);
const be = await createWebGpuBackend();
const exe = be.compile(program) as any;
await exe.ready;
const device = be.ctx.device;
const where = new Map<number, GPUBuffer>();
const ins = await Promise.all(lifted.map(async (t) => be.upload(await t.data(), t.shape, t.dtype)));
program.nodes.forEach((nd, n) => { if (nd.prim.op === 'input') where.set(n, ins[nd.prim.index]!.gpu); });
const buf = (n: number) => {
  let g = where.get(n);
  if (g === undefined) where.set(n, (g = device.createBuffer({ size: Math.ceil(bindingBytes(sizeOf(program.nodes[n]!.shape)) / 256) * 256, usage: 0x80 | 0x04 | 0x08 })));
  return g;
};
const kinds = new Map<string, { n: number; ms: number }>();
const detailAt = process.argv.indexOf('--detail');
const detail = detailAt < 0 ? 0 : Number(process.argv[detailAt + 1] ?? 20);
const contractions: { label: string; size: string; ms: number; gflops: number }[] = [];
const others: { label: string; elements: number; ms: number }[] = [];
let all = 0;
for (let i = 0; i < exe.kernels.length; i++) {
  const { source, pipeline } = exe.kernels[i];
  if (pipeline === undefined) continue;
  const entries: GPUBindGroupEntry[] = [...source.reads, ...writesOf(source)].map((n: number, binding: number) => ({ binding, resource: { buffer: buf(n), offset: 0, size: bindingBytes(sizeOf(program.nodes[n]!.shape)) } }));
  if (source.params !== undefined) entries.push({ binding: entries.length, resource: { buffer: exe.params, offset: exe.paramOffsets[i], size: source.params.byteLength } });
  const group = device.createBindGroup({ layout: pipeline.getBindGroupLayout(0), entries });
  let best = Infinity;
  for (let rep = 0; rep < 4; rep++) {
    const t = performance.now();
    const enc = device.createCommandEncoder();
    const pass = enc.beginComputePass();
    pass.setPipeline(pipeline);
    pass.setBindGroup(0, group);
    pass.dispatchWorkgroups(...(foldGrid(source.workgroups, 65535) as [number, number, number]));
    pass.end();
    device.queue.submit([enc.finish()]);
    await device.queue.onSubmittedWorkDone();
    if (rep > 0) best = Math.min(best, performance.now() - t);
  }
  const kind = source.label.split('/')[1]!.replace(/\d+(\+\d+)?$/, '');
  if (/^(matmul|conv2d)/.test(kind)) {
    // The contraction a GEMM kernel hosts: the nearest node of its kind at or before its root (an epilogue follows it).
    const root = Number(/(\d+)(\+\d+)?$/.exec(source.label)![1]);
    let heavy = root;
    while (program.nodes[heavy]!.prim.op !== kind) heavy--;
    const g = gemmShape(program, heavy);
    contractions.push({ label: source.label, size: `${g.batch}x${g.m}x${g.n}x${g.k}`, ms: best, gflops: (2 * g.batch * g.m * g.n * g.k) / best / 1e6 });
  }
  else others.push({ label: source.label, elements: sizeOf(program.nodes[source.writes]!.shape), ms: best });
  const e = kinds.get(kind) ?? { n: 0, ms: 0 };
  e.n++; e.ms += best; all += best;
  kinds.set(kind, e);
}
// Contraction FLOPs of the step (bench/flops.ts).
const flops = programFlops(program);
const heavy = [...kinds].filter(([k]) => /^(matmul|conv2d)/.test(k)).reduce((a, [, e]) => a + e.ms, 0);
console.log(`${exe.kernels.filter((k: any) => k.pipeline !== undefined).length} dispatches; kernels alone sum to ${all.toFixed(1)} ms`);
for (const [k, e] of [...kinds].sort((a, b) => b[1].ms - a[1].ms)) console.log(`  ${k.padEnd(20)} ${String(e.n).padStart(4)} kernels ${e.ms.toFixed(1).padStart(8)} ms`);
console.log(`contractions: ${(flops / 1e9).toFixed(3)} GFLOP in ${heavy.toFixed(1)} ms = ${(flops / heavy / 1e6).toFixed(2)} GFLOP/s; the rest ${(all - heavy).toFixed(1)} ms; load ${loadavg().map((x) => x.toFixed(2)).join(' ')}`);
for (const c of contractions.sort((a, b) => b.ms - a.ms).slice(0, detail)) {
  console.log(`  ${c.label.padEnd(34)} ${c.size.padEnd(20)} ${c.ms.toFixed(2).padStart(7)} ms ${c.gflops.toFixed(2).padStart(6)} GFLOP/s`);
}
for (const o of others.sort((a, b) => b.ms - a.ms).slice(0, detail)) {
  console.log(`  ${o.label.padEnd(34)} ${String(o.elements).padEnd(20)} ${o.ms.toFixed(2).padStart(7)} ms ${((o.elements / o.ms) / 1e3).toFixed(1).padStart(6)} M elements/s`);
}
process.exit(0);
