/**
 * Whole programs on WebGPU: random expression DAGs (so fusion and memory planning meet arbitrary
 * mixes of elementwise, reduction, movement and matmul nodes), fusion structure, donation,
 * zero-size tensors, device limits (binding count, grid size) and error reporting.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { buildProgram, type Program } from '../../../core/program.ts';
import { BackendError } from '../../../core/errors.ts';
import { createWebGpuBackend, generateKernels, WebGpuBuffer } from '../../../backends/webgpu/index.ts';
import { planMemory } from '../../../backends/webgpu/memory.ts';
import { TILE_CANDIDATES } from '../../../backends/webgpu/tiles.ts';
import { RUNS, SUMS, T, fc, gpu, parity, randn, seed } from './helpers.ts';

const opts = { numRuns: RUNS };

type Step =
  | { kind: 'unary'; fn: 'tanh' | 'sigmoid' | 'neg' | 'abs' | 'sin'; a: number }
  | { kind: 'binary'; fn: 'add' | 'sub' | 'mul' | 'max'; a: number; b: number }
  | { kind: 'center' | 'rowmax' | 'transpose' | 'matmul' | 'shift' | 'select' | 'colsum'; a: number; b: number };

const step: fc.Arbitrary<Step> = fc.oneof(
  fc.record({ kind: fc.constant('unary' as const), fn: fc.constantFrom('tanh' as const, 'sigmoid' as const, 'neg' as const, 'abs' as const, 'sin' as const), a: fc.nat() }),
  fc.record({ kind: fc.constant('binary' as const), fn: fc.constantFrom('add' as const, 'sub' as const, 'mul' as const, 'max' as const), a: fc.nat(), b: fc.nat() }),
  fc.record({ kind: fc.constantFrom('center' as const, 'rowmax' as const, 'transpose' as const, 'matmul' as const, 'shift' as const, 'select' as const, 'colsum' as const), a: fc.nat(), b: fc.nat() }),
);

/** Builds the DAG over square [n, n] tensors; every step refers to earlier values by index modulo. */
function dag(steps: readonly Step[], n: number, outs: readonly number[]): (...xs: T.Tensor[]) => T.Tensor[] {
  return (...xs) => {
    const vals: T.Tensor[] = [...xs];
    const pick = (i: number): T.Tensor => vals[i % vals.length]!;
    for (const s of steps) {
      const a = pick(s.a);
      switch (s.kind) {
        case 'unary':
          vals.push(T.unary(s.fn, a));
          break;
        case 'binary':
          vals.push(T.binary(s.fn, a, pick(s.b)));
          break;
        case 'center':
          vals.push(T.sub(a, T.div(T.sum(a, 1, true), n)));
          break;
        case 'rowmax':
          vals.push(T.sub(a, T.max(a, 1, true)));
          break;
        case 'colsum':
          vals.push(T.mul(pick(s.b), T.sum(T.tanh(a), 0, true)));
          break;
        case 'transpose':
          vals.push(T.transpose(a));
          break;
        case 'matmul':
          vals.push(T.tanh(T.div(T.matmul(a, pick(s.b)), n)));
          break;
        case 'shift':
          vals.push(T.pad(T.slice(a, [1, 0]), [0, 0], [1, 0], 0.5));
          break;
        case 'select':
          vals.push(T.where(T.less(a, pick(s.b)), a, T.mul(pick(s.b), 0.5)));
          break;
      }
    }
    return outs.map((o) => pick(o + xs.length));
  };
}

test('random expression DAGs agree with the CPU', async () => {
  await fc.assert(
    fc.asyncProperty(
      fc.array(step, { minLength: 1, maxLength: 14 }),
      fc.integer({ min: 1, max: 12 }),
      fc.integer({ min: 1, max: 3 }),
      fc.array(fc.nat(), { minLength: 1, maxLength: 3 }),
      seed,
      async (steps, n, inputs, outs, sd) => {
        const xs = Array.from({ length: inputs }, (_, i) => randn(sd + i, [n, n]));
        await parity('dag', dag(steps, n, outs.map((o) => o % steps.length)), xs, { atol: 1e-4, rtol: 1e-4 });
      },
    ),
    opts,
  );
});

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
  await parity('wide', f, Array.from({ length: n }, (_, i) => randn(i, [3, 5])), SUMS);
});

test('limits: more than 65,535 workgroups fold into a 2-D grid', async () => {
  const size = 65536 * 64 + 100;
  await parity('big grid', (x) => T.add(T.mul(x, 3), 1), [randn(1, [size])]);
});

test('memory: a chain of contractions reuses two intermediate buffers', () => {
  const p = program('deep', (x, w) => {
    let h = x;
    for (let i = 0; i < 10; i++) h = T.matmul(T.tanh(T.matmul(h, w)), w);
    return [h];
  }, [[8, 8], [8, 8]]);
  const ks = kernelsOf(p);
  const mem = planMemory(p, ks);
  assert.ok(mem.slotBytes.length <= 2, `${mem.slotBytes.length} slots`);
});

function gpuBuffer(t: T.Tensor): GPUBuffer {
  const s = t.storage;
  assert.ok(s?.kind === 'device' && s.buffer instanceof WebGpuBuffer);
  return s.buffer.gpu;
}

test('donation: an output reuses a donated input buffer, and values stay right when it cannot', async () => {
  const b = await gpu();
  const onDevice = (v: number[]): T.Tensor => T.fromDevice(b, b.upload(new Float32Array(v), [v.length], 'float32'), [v.length], 'float32');
  const xs = [onDevice([1, 2, 3, 4]), onDevice([5, 6, 7, 8])] as const;
  const xBuf = gpuBuffer(xs[0]);
  const f = T.jit((p: T.Tensor, q: T.Tensor) => T.mul(q, 2), { backend: 'webgpu', donate: [0] });
  const out = await f(xs[0], xs[1]);
  assert.equal(gpuBuffer(out), xBuf);
  assert.deepEqual(Array.from(await out.data()), [10, 12, 14, 16]);
  assert.ok(xs[0].isDonated);
  // In place: the kernel reads the donated input, so the output goes elsewhere; values are right.
  const g = T.jit((p: T.Tensor) => T.add(T.sum(p), p), { backend: 'webgpu', donate: [0] });
  const zd = onDevice([1, 2, 3]);
  assert.deepEqual(Array.from(await (await g(zd)).data()), [7, 8, 9]);
});

test('zero-size tensors: elementwise, reductions over empty axes, contractions with k = 0', async () => {
  await parity('empty', (x, w) => [T.exp(x), T.sum(x, 0), T.matmul(T.transpose(x), T.reshape(w, [0, 2])), T.concat([x, T.zeros([0, 3])], 0)], [randn(1, [0, 3]), randn(2, [0])]);
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
