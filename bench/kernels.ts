/**
 * Kernel benchmarks: Tessera's WebGPU backend against TF.js's WebGPU backend, both on Dawn in this
 * process (same adapter). Each iteration runs the op and reads the result back (the only sync point
 * both libraries share), so both pay the same transfer. Prints a table and writes bench/RESULTS.md.
 *
 *   npm run bench                      # all
 *   TESSERA_BENCH=matmul npm run bench # names containing "matmul"
 */
import { writeFileSync } from 'node:fs';
import os from 'node:os';
import { Bench } from 'tinybench';
import { create, globals } from 'webgpu';
import * as T from '../core/index.ts';
import { registerWebGpuBackend, type WebGpuBackend } from '../backends/webgpu/index.ts';

// TF.js finds WebGPU through navigator.gpu and the WebGPU globals (GPUBufferUsage, ...).
Object.assign(globalThis, globals);
const dawn = create([]);
Object.defineProperty(globalThis, 'navigator', { value: { gpu: dawn }, configurable: true });
const tf = await import('@tensorflow/tfjs-core');
await import('@tensorflow/tfjs-backend-webgpu');
await tf.setBackend('webgpu');
await tf.ready();

registerWebGpuBackend();
const backend = (await T.getBackend('webgpu')) as WebGpuBackend;

type TfTensor = ReturnType<typeof tf.tensor>;

interface Case {
  readonly name: string;
  /** Work per iteration: FLOPs, or bytes moved for memory-bound ops. */
  readonly work: number;
  readonly unit: 'GFLOP/s' | 'GB/s';
  readonly tessera: () => Promise<void>;
  readonly tfjs: () => Promise<void>;
}

function values(n: number, seed: number): Float32Array {
  const out = new Float32Array(n);
  let s = seed;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    out[i] = s / 4294967296 - 0.5;
  }
  return out;
}

/** A tensor living on the Tessera WebGPU device. */
function onDevice(shape: number[], seed: number): T.Tensor {
  const data = values(T.sizeOf(shape), seed);
  return T.fromDevice(backend, backend.upload(data, shape, 'float32'), shape, 'float32');
}

function tfTensor(shape: number[], seed: number): TfTensor {
  return tf.tensor(values(T.sizeOf(shape), seed), shape);
}

/** One Tessera iteration: run the jitted function, read the result, free it. */
function tesseraCase<A extends T.Tensor[]>(f: (...a: A) => T.Tensor, args: A): () => Promise<void> {
  const jitted = T.jit(f as (...a: T.Tensor[]) => T.Tensor, { backend: 'webgpu', name: f.name });
  return async () => {
    const out = (await jitted(...args)) as T.Tensor;
    await out.data();
    T.dispose(out);
  };
}

function tfCase(f: () => TfTensor): () => Promise<void> {
  return async () => {
    const out = tf.tidy(f);
    await out.data();
    out.dispose();
  };
}

const cases: Case[] = [];

for (const n of [256, 512, 1024]) {
  const a = onDevice([n, n], 1);
  const b = onDevice([n, n], 2);
  const ta = tfTensor([n, n], 1);
  const tb = tfTensor([n, n], 2);
  cases.push({
    name: `matmul ${n}x${n}x${n}`,
    work: 2 * n ** 3,
    unit: 'GFLOP/s',
    tessera: tesseraCase((x: T.Tensor, y: T.Tensor) => T.matmul(x, y), [a, b]),
    tfjs: tfCase(() => tf.matMul(ta, tb)),
  });
}

{
  // UNet-like 3x3 convolution, 64 -> 64 channels at 32x32 (NCHW for Tessera, NHWC for TF.js).
  const [N, C, H, W, O] = [8, 64, 32, 32, 64];
  const flops = 2 * N * O * H * W * C * 9;
  const x = onDevice([N, C, H, W], 3);
  const w = onDevice([O, C, 3, 3], 4);
  const dy = onDevice([N, O, H, W], 5);
  const tx = tfTensor([N, H, W, C], 3);
  const tw = tfTensor([3, 3, C, O], 4);
  const tdy = tfTensor([N, H, W, O], 5);
  const shape = `${N}x${C}x${H}x${W}, ${C}->${O}`;
  cases.push({
    name: `conv2d 3x3 fwd ${shape}`,
    work: flops,
    unit: 'GFLOP/s',
    tessera: tesseraCase((p: T.Tensor, q: T.Tensor) => T.conv2d(p, q, { padding: 1 }), [x, w]),
    tfjs: tfCase(() => tf.conv2d(tx as never, tw as never, 1, 'same')),
  });
  cases.push({
    name: `conv2d 3x3 grad input ${shape}`,
    work: flops,
    unit: 'GFLOP/s',
    tessera: tesseraCase((g: T.Tensor, q: T.Tensor) => T.conv2dGradInput(g, q, [N, C, H, W], { padding: 1 }), [dy, w]),
    tfjs: tfCase(() => tf.conv2dTranspose(tdy as never, tw as never, [N, H, W, C], 1, 'same')),
  });
  cases.push({
    name: `conv2d 3x3 grad weight ${shape}`,
    work: flops,
    unit: 'GFLOP/s',
    tessera: tesseraCase((p: T.Tensor, g: T.Tensor) => T.conv2dGradWeight(p, g, [O, C, 3, 3], { padding: 1 }), [x, dy]),
    tfjs: tfCase(
      () =>
        tf.engine().runKernel('Conv2DBackpropFilter', { x: tx, dy: tdy }, { strides: 1, pad: 'same', dataFormat: 'NHWC', filterShape: [3, 3, C, O] }) as TfTensor,
    ),
  });
}

{
  const [N, C, H, W, G] = [8, 64, 32, 32, 32];
  const x = onDevice([N, C, H, W], 6);
  const tx = tfTensor([N, C, H, W], 6);
  cases.push({
    name: `group norm ${N}x${C}x${H}x${W}, ${G} groups`,
    work: 2 * 4 * N * C * H * W,
    unit: 'GB/s',
    tessera: tesseraCase((p: T.Tensor) => T.groupNorm(p, G), [x]),
    tfjs: tfCase(() => {
      const g = tf.reshape(tx, [N, G, (C / G) * H * W]);
      const { mean, variance } = tf.moments(g, 2, true);
      return tf.reshape(tf.mul(tf.sub(g, mean), tf.rsqrt(tf.add(variance, 1e-5))), [N, C, H, W]);
    }),
  });
}

{
  const [B, L, D] = [8, 256, 64];
  const q = onDevice([B, L, D], 7);
  const k = onDevice([B, L, D], 8);
  const v = onDevice([B, L, D], 9);
  const [tq, tk, tv] = [tfTensor([B, L, D], 7), tfTensor([B, L, D], 8), tfTensor([B, L, D], 9)];
  cases.push({
    name: `softmax attention ${B}x${L} tokens, d=${D}`,
    work: 4 * B * L * L * D,
    unit: 'GFLOP/s',
    tessera: tesseraCase((a: T.Tensor, b: T.Tensor, c: T.Tensor) => T.scaledDotProductAttention(a, b, c), [q, k, v]),
    tfjs: tfCase(() => tf.matMul(tf.softmax(tf.mul(tf.matMul(tq, tk, false, true), 1 / Math.sqrt(D))), tv)),
  });
}

{
  const n = 1 << 20;
  const x = onDevice([n], 10);
  const tx = tfTensor([n], 10);
  cases.push({
    name: `8 elementwise ops fused, ${n} elements`,
    work: 2 * 4 * n,
    unit: 'GB/s',
    tessera: tesseraCase((p: T.Tensor) => T.tanh(T.add(T.mul(T.sigmoid(T.sub(T.mul(T.exp(T.neg(p)), 0.5), 1)), p), 2)), [x]),
    tfjs: tfCase(() => tf.tanh(tf.add(tf.mul(tf.sigmoid(tf.sub(tf.mul(tf.exp(tf.neg(tx)), 0.5), 1)), tx), 2))),
  });
}

const filter = process.env['TESSERA_BENCH'];
const selected = cases.filter((c) => filter === undefined || c.name.includes(filter));
const rows: string[][] = [];
for (const c of selected) {
  // Warm up outside the timing (pipeline compilation), then time.
  await c.tessera();
  await c.tfjs();
  const bench = new Bench({ time: 1500, iterations: 3, warmupIterations: 1 });
  bench.add('tessera', c.tessera).add('tfjs', c.tfjs);
  await bench.run();
  const median = (name: string): number => {
    const r = bench.getTask(name)?.result as { latency?: { p50?: number } } | undefined;
    const m = r?.latency?.p50;
    if (m === undefined) throw new Error(`${c.name}: no result for ${name}`);
    return m;
  };
  const ms = median('tessera');
  const tms = median('tfjs');
  const rate = (t: number): string => (c.work / (t / 1000) / 1e9).toFixed(2);
  const row = [c.name, ms.toFixed(2), `${rate(ms)} ${c.unit}`, tms.toFixed(2), `${rate(tms)} ${c.unit}`, `${(tms / ms).toFixed(2)}x`];
  rows.push(row);
  console.log(row.join(' | '));
}

const header = ['benchmark', 'tessera median ms', 'tessera', 'tf.js median ms', 'tf.js', 'speedup vs tf.js'];
const table = [header, header.map(() => '---'), ...rows].map((r) => `| ${r.join(' | ')} |`).join('\n');
const adapter = backend.describe()['adapter'] as Record<string, string>;
const load = os.loadavg().map((l) => l.toFixed(1)).join(', ');
const machine = `${os.cpus().length} CPU cores (${os.cpus()[0]?.model ?? 'unknown'}), ${(os.totalmem() / 2 ** 30).toFixed(0)} GiB; adapter: ${Object.values(adapter).join(', ') || 'unknown'}; load average at the end: ${load}`;
console.log(`\n${table}\n\n${machine}`);
if (filter === undefined) {
  writeFileSync(
    new URL('./RESULTS.md', import.meta.url),
    `# Kernel benchmarks\n\nMeasured with \`npm run bench\` on ${new Date().toISOString().slice(0, 10)}.\n\nMachine: ${machine}.\n\n` +
      'Each iteration runs the op and reads the whole result back (both libraries pay the same transfer); medians over at least 3 iterations after warm-up. ' +
      'Convolutions: Tessera NCHW/OIHW, TF.js NHWC/HWIO, same FLOPs. Speedup = TF.js time / Tessera time. ' +
      'When the load average is above the core count the machine was shared with other jobs: absolute rates are then several times ' +
      'below an idle machine and the ratios are noisy (the two libraries run one after the other, not interleaved).\n\n' +
      `${table}\n`,
  );
}
process.exit(0);
