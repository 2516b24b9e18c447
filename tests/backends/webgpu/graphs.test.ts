/**
 * Whole programs on WebGPU: the backend-neutral properties of ../parity/graphs.ts (random DAGs,
 * gradients, donation, zero-size tensors), then what only WebGPU has: fusion structure, device
 * limits (binding count, grid size), the memory plan, GPUBuffer reuse under donation and error
 * reporting.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { buildProgram, type Program } from '../../../core/program.ts';
import { BackendError } from '../../../core/errors.ts';
import { createWebGpuBackend, generateKernels, registerWebGpuBackend, WebGpuBuffer, type WebGpuBackend } from '../../../backends/webgpu/index.ts';
import { planMemory, writesOf } from '../../../backends/kernel/memory.ts';
import { sizeOf } from '../../../core/shape.ts';
import { TILE_CANDIDATES } from '../../../backends/webgpu/tiles.ts';
import { PipelineCache } from '../../../backends/webgpu/pipelines.ts';
import { SUMS, T, parity, randn } from '../parity/helpers.ts';
import { graphSuite } from '../parity/graphs.ts';

registerWebGpuBackend();
graphSuite('webgpu');

const placeholder = (i: number, shape: number[]): T.Tensor => new T.Tensor({ op: 'input', index: i }, [], shape, 'float32');

function program(name: string, f: (...xs: T.Tensor[]) => T.Tensor[], shapes: number[][]): Program {
  const ps = shapes.map((s, i) => placeholder(i, s));
  return buildProgram(name, f(...ps), ps).program;
}

const kernelsOf = (p: Program, maxBuffers = 16) => generateKernels(p, maxBuffers, TILE_CANDIDATES);

test('fusion: an elementwise chain with broadcasts and movement is one kernel', () => {
  const p = program('chain', (x, b) => [T.tanh(T.mul(T.add(T.exp(T.transpose(x)), b), T.sigmoid(T.sub(T.transpose(x), 1))))], [[8, 4], [8]]);
  assert.equal(kernelsOf(p).length, 1);
});

test('fusion: bias, activation and residual fuse into matmul and conv2d', () => {
  const mm = program('mm', (x, w, b, r) => [T.add(T.relu(T.add(T.matmul(x, w), b)), r)], [[16, 8], [8, 32], [32], [16, 32]]);
  const ks = kernelsOf(mm);
  assert.equal(ks.length, 1);
  assert.match(ks[0]!.label, /matmul/);
  const conv = program('conv', (x, w, b) => [T.add(T.silu(T.add(T.conv2d(x, w, { padding: 1 }), T.reshape(b, [1, 4, 1, 1]))), x)], [[2, 4, 6, 6], [4, 4, 3, 3], [4]]);
  const kc = kernelsOf(conv);
  assert.equal(kc.length, 1);
  assert.match(kc[0]!.label, /conv2d/);
});

test('fusion: prologue and epilogue fuse into reductions; softmax is three kernels at most', () => {
  const p = program('lse', (x) => [T.log(T.sum(T.exp(T.mul(x, 2)), 1))], [[4, 9]]);
  assert.equal(kernelsOf(p).length, 1);
  const sm = program('softmax', (x) => [T.softmax(x, -1)], [[4, 9]]);
  assert.ok(kernelsOf(sm).length <= 3);
});

test('limits: a fused kernel that would bind too many buffers is split', async () => {
  const n = 40;
  const f = (...xs: T.Tensor[]) => [xs.reduce((acc, x, i) => T.add(acc, T.mul(x, i + 1)))];
  const ks = kernelsOf(program('wide', f, Array.from({ length: n }, () => [3, 5])), 8);
  assert.ok(ks.length > 1);
  for (const k of ks) assert.ok(k.reads.length + 1 <= 8, `${k.label} binds ${k.reads.length + 1}`);
  await parity('webgpu', 'wide', f, Array.from({ length: n }, (_, i) => randn(i, [3, 5])), SUMS);
});

test('limits: more than 65,535 workgroups fold into a 2-D grid', async () => {
  const size = 65536 * 64 + 100;
  await parity('webgpu', 'big grid', (x) => T.add(T.mul(x, 3), 1), [randn(1, [size])]);
});

test('memory: a chain of contractions reuses two intermediate buffers', () => {
  const p = program('deep', (x, w) => {
    let h = x;
    for (let i = 0; i < 10; i++) h = T.matmul(T.tanh(T.matmul(h, w)), w);
    return [h];
  }, [[8, 8], [8, 8]]);
  const ks = kernelsOf(p);
  const mem = planMemory(p, ks, (nd) => 4 * sizeOf(nd.shape));
  assert.ok(mem.slotBytes.length <= 2, `${mem.slotBytes.length} slots`);
});

function gpuBuffer(t: T.Tensor): GPUBuffer {
  const s = t.storage;
  assert.ok(s?.kind === 'device' && s.buffer instanceof WebGpuBuffer);
  return s.buffer.gpu;
}

test('donation: an output reuses the donated input\'s GPUBuffer', async () => {
  const b = (await T.getBackend('webgpu')) as WebGpuBackend;
  const onDevice = (v: number[]): T.Tensor => T.fromDevice(b, b.upload(new Float32Array(v), [v.length], 'float32'), [v.length], 'float32');
  const [x, y] = [onDevice([1, 2, 3, 4]), onDevice([5, 6, 7, 8])];
  const xBuf = gpuBuffer(x);
  // The output does not read x, so it may take x's buffer (a dispatch never aliases input and output).
  const out = await T.jit((p: T.Tensor, q: T.Tensor) => T.mul(q, 2), { backend: 'webgpu', donate: [0] })(x, y);
  assert.equal(gpuBuffer(out), xBuf);
  assert.deepEqual(Array.from(await out.data()), [10, 12, 14, 16]);
});

test('an invalid kernel becomes a BackendError naming it; a lost device fails fast', async () => {
  const b = await createWebGpuBackend();
  b.ctx.scoped('kernel prog/broken7', () => b.ctx.device.createShaderModule({ code: 'fn main( {' }));
  await assert.rejects(b.ctx.flushErrors(), (e: Error) => e instanceof BackendError && /prog\/broken7/.test(e.message));
  const buf = b.upload(new Float32Array([1, 2]), [2], 'float32');
  b.ctx.device.destroy();
  await assert.rejects(b.download(buf), (e: Error) => e instanceof BackendError);
  assert.throws(() => b.compile(program('after', (x) => [T.neg(x)], [[2]])), BackendError);
});

test('pipelines build asynchronously: compile returns at once, a run before they are built is refused, a failed build names its kernel', async () => {
  const b = (await T.getBackend('webgpu')) as WebGpuBackend;
  const p = program('async', (x) => [T.mul(T.sin(T.add(x, 7.25)), 3)], [[5]]);
  const exe = b.compile(p);
  const x = b.upload(new Float32Array([1, 2, 3, 4, 5]), [5], 'float32');
  if (!(await Promise.race([exe.ready!.then(() => true), Promise.resolve(false)]))) {
    assert.throws(() => b.run(exe, [x], [false]), /async: run before its pipelines were built/);
  }
  await exe.ready;
  // Progress: every kernel with work has a pipeline, each counted once it is built.
  const withWork = (exe as unknown as { kernels: { source: { workgroups: number } }[] }).kernels.filter((k) => k.source.workgroups > 0).length;
  assert.ok(withWork >= 1);
  assert.deepEqual(exe.progress!(), { done: withWork, total: withWork });
  // The same program again: its pipelines come from the cache, built already once their promises settle.
  const again = b.compile(p);
  assert.equal(again.progress!().total, withWork);
  await again.ready;
  assert.deepEqual(again.progress!(), { done: withWork, total: withWork });
  const [y] = b.run(exe, [x], [false]);
  const got = Array.from(await b.download(y!));
  got.forEach((v, i) => assert.ok(Math.abs(v - 3 * Math.sin(i + 1 + 7.25)) < 1e-5, `${v}`));

  const broken = new PipelineCache(b.ctx).get('prog/broken8', 'fn main( {');
  await assert.rejects(broken, (e: Error) => e instanceof BackendError && /kernel prog\/broken8: the pipeline could not be built/.test(e.message));
  await b.ctx.flushErrors().catch(() => undefined);
});

test('fusion: the demo training step lowers to at most 800 dispatches (1,488 before multi-output fusion); its optimizer and EMA write the state in about one kernel per parameter', async () => {
  const { readFileSync } = await import('node:fs');
  const { resolveConfig } = await import('../../../train/config.ts');
  const { orThrow } = await import('../../../train/errors.ts');
  const { buildModel, initState, stepBatch, stepFunction } = await import('../../../train/step.ts');
  const config = orThrow(resolveConfig(JSON.parse(readFileSync('train/configs/demo.json', 'utf8')), {}));
  const model = buildModel(config);
  const state = initState(model, config);
  const b = config.train.batch_size;
  const images = new Float32Array(b * 16 * 16).map((_, i) => Math.sin(i * 0.37));
  const corners = new Int32Array(b);
  const out = stepFunction(model, config)(state, stepBatch(images, [b, 1, 16, 16], corners, corners));
  const outputs = T.flatten(out as unknown as T.PyTree<T.Tensor>).leaves;
  const { program: p } = buildProgram('demoStep', outputs);
  // Lavapipe's binding limit (16 storage buffers per stage).
  const ks = kernelsOf(p, 16).filter((k) => k.workgroups > 0);
  assert.ok(ks.length <= 800, `${ks.length} dispatches`);
  // The new params, EMA and Adam moments (4 tensors per parameter, 4 kernels each before): one
  // kernel per parameter, a few more where two parameters' groups joined and the binding limit
  // left an EMA out.
  const params = T.flatten(state.params as unknown as T.PyTree<T.Tensor>).leaves.length;
  const stateLeaves = T.flatten([out.state.params, out.state.ema, out.state.opt] as unknown as T.PyTree<T.Tensor>).leaves;
  const stateOutputs = new Set(stateLeaves.map((t) => p.outputs[outputs.indexOf(t)]!));
  const writers = ks.filter((k) => writesOf(k).some((n) => stateOutputs.has(n)));
  assert.ok(writers.length <= params + params / 20, `${writers.length} kernels write the state of ${params} parameters`);
});
