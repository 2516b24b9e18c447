/**
 * Kernel benchmarks against a peer library measured in the same run, in two groups:
 *   - webgpu: Tessera's WebGPU backend against TF.js's WebGPU backend, both on Dawn in this process
 *     (same adapter);
 *   - cpu: Tessera's `cpu` backend (WebAssembly SIMD on worker threads) against jax-js's Wasm
 *     backend, given as many worker threads (os.availableParallelism()).
 * Each iteration runs the op and reads the result back (the only sync point the libraries share),
 * so both sides pay the same transfer. Prints a table with the load average and, for a full run,
 * appends a dated section to bench/RESULTS.md (earlier runs are kept).
 *
 *   npm run bench                                  # both groups
 *   npm run bench -- --group cpu|webgpu|all
 *   npm run bench -- --group cpu --cpu-backend reference   # another Tessera backend against jax-js
 *   TESSERA_BENCH=matmul npm run bench             # names containing "matmul"
 */
import { appendFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { resolveObjectURL } from 'node:buffer';
import os from 'node:os';
import { Worker as NodeWorker } from 'node:worker_threads';
import type { Array as JaxArray } from '@jax-js/jax';
import { Bench } from 'tinybench';
import '../index.ts';
import * as T from '../core/index.ts';
import type { WebGpuBackend } from '../backends/webgpu/index.ts';
import { measureCeilings } from './webgpu-peak.ts';

const arg = (name: string, dflt: string): string => {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1]! : dflt;
};
const group = arg('group', 'all');
if (!['cpu', 'webgpu', 'all'].includes(group)) throw new Error(`--group: expected cpu, webgpu or all, got '${group}'`);
const cpuBackendName = arg('cpu-backend', 'cpu');
process.env['XDG_RUNTIME_DIR'] ??= '/tmp/xdg';

/** Worker threads a Wasm library may use: the same count for Tessera's cpu backend and jax-js. */
const THREADS = os.availableParallelism();
// jax-js reads navigator.hardwareConcurrency (its thread count) and TF.js navigator.gpu; Node 20 has no navigator.
const nav: { hardwareConcurrency: number; gpu?: unknown } = { hardwareConcurrency: THREADS };
Object.defineProperty(globalThis, 'navigator', { value: nav, configurable: true });

interface Case {
  readonly name: string;
  /** Work per iteration: FLOPs, or bytes moved for memory-bound ops. */
  readonly work: number;
  readonly unit: 'GFLOP/s' | 'GB/s';
  readonly backend: string;
  readonly tessera: () => Promise<void>;
  readonly peerName: string;
  readonly peer: () => Promise<void>;
  /** The adapter's measured ceiling in `unit` (bench/webgpu-peak.ts), where there is one. */
  ceiling?: number;
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

/** A tensor living on a Tessera backend. */
function onDevice(backend: T.Backend, shape: number[], seed: number): T.Tensor {
  const data = values(T.sizeOf(shape), seed);
  return T.fromDevice(backend, backend.upload(data, shape, 'float32'), shape, 'float32');
}

/** One Tessera iteration: run the jitted function, read the result, free it. */
function tesseraCase<A extends T.Tensor[]>(backend: T.Backend, f: (...a: A) => T.Tensor, args: A): () => Promise<void> {
  const jitted = T.jit(f as (...a: T.Tensor[]) => T.Tensor, { backend, name: f.name });
  return async () => {
    const out = (await jitted(...args)) as T.Tensor;
    await out.data();
    T.dispose(out);
  };
}

/** The UNet-like 3x3 convolution both groups time: 64 -> 64 channels at 32x32, batch 8. */
const CONV = { N: 8, C: 64, H: 32, W: 32, O: 64 } as const;
const CONV_FLOPS = 2 * CONV.N * CONV.O * CONV.H * CONV.W * CONV.C * 9;
const CONV_SHAPE = `${CONV.N}x${CONV.C}x${CONV.H}x${CONV.W}, ${CONV.C}->${CONV.O}`;

// ---------------------------------------------------------------- webgpu: Tessera WebGPU vs TF.js WebGPU

async function webgpuCases(): Promise<{ cases: Case[]; about: string }> {
  const backend = await T.getBackend('webgpu');
  // TF.js finds WebGPU through navigator.gpu and the WebGPU globals (GPUBufferUsage, ...).
  const { create, globals } = await import('webgpu');
  Object.assign(globalThis, globals);
  nav.gpu = create([]);
  const tf = await import('@tensorflow/tfjs-core');
  await import('@tensorflow/tfjs-backend-webgpu');
  if (!(await tf.setBackend('webgpu'))) throw new Error('TF.js could not start its WebGPU backend');
  await tf.ready();
  type TfTensor = ReturnType<typeof tf.tensor>;
  const tfTensor = (shape: number[], seed: number): TfTensor => tf.tensor(values(T.sizeOf(shape), seed), shape);
  const tfCase = (f: () => TfTensor) => async () => {
    const out = tf.tidy(f);
    await out.data();
    out.dispose();
  };
  const dev = (shape: number[], seed: number) => onDevice(backend, shape, seed);
  const cases: Case[] = [];
  const add = (name: string, work: number, unit: Case['unit'], tessera: () => Promise<void>, peer: () => Promise<void>) =>
    cases.push({ name, work, unit, backend: 'webgpu', tessera, peerName: 'tf.js webgpu', peer });

  for (const n of [256, 512, 1024]) {
    const [a, b, ta, tb] = [dev([n, n], 1), dev([n, n], 2), tfTensor([n, n], 1), tfTensor([n, n], 2)];
    add(`matmul ${n}x${n}x${n}`, 2 * n ** 3, 'GFLOP/s', tesseraCase(backend, (x: T.Tensor, y: T.Tensor) => T.matmul(x, y), [a, b]), tfCase(() => tf.matMul(ta, tb)));
  }
  {
    // NCHW/OIHW for Tessera, NHWC/HWIO for TF.js.
    const { N, C, H, W, O } = CONV;
    const [x, w, dy] = [dev([N, C, H, W], 3), dev([O, C, 3, 3], 4), dev([N, O, H, W], 5)];
    const [tx, tw, tdy] = [tfTensor([N, H, W, C], 3), tfTensor([3, 3, C, O], 4), tfTensor([N, H, W, O], 5)];
    add(`conv2d 3x3 fwd ${CONV_SHAPE}`, CONV_FLOPS, 'GFLOP/s',
      tesseraCase(backend, (p: T.Tensor, q: T.Tensor) => T.conv2d(p, q, { padding: 1 }), [x, w]),
      tfCase(() => tf.conv2d(tx as never, tw as never, 1, 'same')));
    add(`conv2d 3x3 grad input ${CONV_SHAPE}`, CONV_FLOPS, 'GFLOP/s',
      tesseraCase(backend, (g: T.Tensor, q: T.Tensor) => T.conv2dGradInput(g, q, [N, C, H, W], { padding: 1 }), [dy, w]),
      tfCase(() => tf.conv2dTranspose(tdy as never, tw as never, [N, H, W, C], 1, 'same')));
    add(`conv2d 3x3 grad weight ${CONV_SHAPE}`, CONV_FLOPS, 'GFLOP/s',
      tesseraCase(backend, (p: T.Tensor, g: T.Tensor) => T.conv2dGradWeight(p, g, [O, C, 3, 3], { padding: 1 }), [x, dy]),
      tfCase(() => tf.engine().runKernel('Conv2DBackpropFilter', { x: tx, dy: tdy }, { strides: 1, pad: 'same', dataFormat: 'NHWC', filterShape: [3, 3, C, O] }) as TfTensor));
  }
  {
    const [N, C, H, W, G] = [8, 64, 32, 32, 32];
    const [x, tx] = [dev([N, C, H, W], 6), tfTensor([N, C, H, W], 6)];
    add(`group norm ${N}x${C}x${H}x${W}, ${G} groups`, 2 * 4 * N * C * H * W, 'GB/s', tesseraCase(backend, (p: T.Tensor) => T.groupNorm(p, G), [x]), tfCase(() => {
      const g = tf.reshape(tx, [N, G, (C / G) * H * W]);
      const { mean, variance } = tf.moments(g, 2, true);
      return tf.reshape(tf.mul(tf.sub(g, mean), tf.rsqrt(tf.add(variance, 1e-5))), [N, C, H, W]);
    }));
  }
  {
    const [B, L, D] = [8, 256, 64];
    const [q, k, v] = [dev([B, L, D], 7), dev([B, L, D], 8), dev([B, L, D], 9)];
    const [tq, tk, tv] = [tfTensor([B, L, D], 7), tfTensor([B, L, D], 8), tfTensor([B, L, D], 9)];
    add(`softmax attention ${B}x${L} tokens, d=${D}`, 4 * B * L * L * D, 'GFLOP/s',
      tesseraCase(backend, (a: T.Tensor, b: T.Tensor, c: T.Tensor) => T.scaledDotProductAttention(a, b, c), [q, k, v]),
      tfCase(() => tf.matMul(tf.softmax(tf.mul(tf.matMul(tq, tk, false, true), 1 / Math.sqrt(D))), tv)));
  }
  {
    const n = 1 << 20;
    const [x, tx] = [dev([n], 10), tfTensor([n], 10)];
    add(`8 elementwise ops fused, ${n} elements`, 2 * 4 * n, 'GB/s',
      tesseraCase(backend, (p: T.Tensor) => T.tanh(T.add(T.mul(T.sigmoid(T.sub(T.mul(T.exp(T.neg(p)), 0.5), 1)), p), 2)), [x]),
      tfCase(() => tf.tanh(tf.add(tf.mul(tf.sigmoid(tf.sub(tf.mul(tf.exp(tf.neg(tx)), 0.5), 1)), tx), 2))));
  }
  // The adapter's own ceilings, measured in this run: FMA rate for the GFLOP/s rows, streaming
  // bandwidth for the GB/s rows.
  const ceilings = await measureCeilings((backend as WebGpuBackend).ctx.device);
  for (const c of cases) c.ceiling = c.unit === 'GFLOP/s' ? ceilings.gflops : ceilings.gbps;
  const adapter = backend.describe()['adapter'] as Record<string, string> | undefined;
  return { cases, about: `WebGPU adapter: ${Object.values(adapter ?? {}).join(', ') || 'unknown'}; its measured ceilings (bench/webgpu-peak.ts): f32 FMA in registers ${ceilings.gflops.toFixed(1)} GFLOP/s, streaming read + write ${ceilings.gbps.toFixed(1)} GB/s` };
}

// ---------------------------------------------------------------- cpu: Tessera cpu vs jax-js Wasm

// The Web Worker API over worker_threads, for jax-js's Wasm thread pool: it creates module workers
// from a blob URL and talks through self.onmessage / postMessage. Without a global Worker it would
// run on one thread, while Tessera's cpu backend uses all cores.
const WORKER_BOOT = `
const { parentPort } = require('node:worker_threads');
globalThis.self = globalThis;
globalThis.postMessage = (m) => parentPort.postMessage(m);
let queued = [];
parentPort.on('message', (m) => {
  if (queued === null) return self.onmessage({ data: m });
  if (m !== null && typeof m === 'object' && '__source' in m) {
    (0, eval)(m.__source);
    for (const q of queued) self.onmessage({ data: q });
    queued = null;
  } else queued.push(m);
});`;

class WebWorker {
  onmessage: ((e: { data: unknown }) => void) | null = null;
  onerror: ((e: { message: string }) => void) | null = null;
  readonly #worker = new NodeWorker(WORKER_BOOT, { eval: true });
  constructor(url: string | URL) {
    this.#worker.on('message', (data) => this.onmessage?.({ data }));
    this.#worker.on('error', (e) => this.onerror?.({ message: e.message }));
    const blob = resolveObjectURL(String(url));
    if (blob === undefined) throw new Error(`WebWorker: no blob at ${String(url)}`);
    // Messages posted before the source arrives wait in the worker's queue.
    void blob.text().then((source) => this.#worker.postMessage({ __source: source }));
  }
  postMessage(message: unknown): void {
    this.#worker.postMessage(message);
  }
  terminate(): void {
    void this.#worker.terminate();
  }
}

async function cpuCases(): Promise<{ cases: Case[]; about: string }> {
  const backend = await T.getBackend(cpuBackendName);
  (globalThis as { Worker?: unknown }).Worker ??= WebWorker;
  const jax = await import('@jax-js/jax');
  const { numpy: np, lax } = jax;
  if (!(await jax.init('wasm')).includes('wasm')) throw new Error('jax-js could not start its Wasm backend');
  jax.defaultDevice('wasm');
  const jaxArray = (shape: number[], seed: number): JaxArray => np.array(values(T.sizeOf(shape), seed)).reshape(shape);
  /**
   * One jax-js iteration, run eagerly: for a lone op its eager dispatch is its fastest form (in 0.1.25
   * its jit runs a lone convolution over ten times slower). `.ref` keeps the inputs alive (jax-js
   * functions take ownership); `data()` reads and frees the result.
   */
  const jaxCase = (f: (...a: JaxArray[]) => JaxArray, args: JaxArray[]) => async () => {
    await f(...args.map((a) => a.ref)).data();
  };
  const dev = (shape: number[], seed: number) => onDevice(backend, shape, seed);
  const cases: Case[] = [];
  const add = (name: string, work: number, unit: Case['unit'], tessera: () => Promise<void>, peer: () => Promise<void>) =>
    cases.push({ name, work, unit, backend: backend.name, tessera, peerName: 'jax-js wasm', peer });

  for (const n of [256, 512, 1024]) {
    add(`matmul ${n}x${n}x${n}`, 2 * n ** 3, 'GFLOP/s',
      tesseraCase(backend, (x: T.Tensor, y: T.Tensor) => T.matmul(x, y), [dev([n, n], 1), dev([n, n], 2)]),
      jaxCase((x, y) => np.matmul(x, y), [jaxArray([n, n], 1), jaxArray([n, n], 2)]));
  }
  // Both NCHW/OIHW. jax-js has no convolution-gradient ops: its rows are the convolutions its grad
  // emits (makeJaxpr of grad(sum(conv(x, w) * dy))): dx = conv(dy, flip(w^T)), dw = conv(x^T, dy^T)^T.
  const { N, C, H, W, O } = CONV;
  const [x, w, dy] = [dev([N, C, H, W], 3), dev([O, C, 3, 3], 4), dev([N, O, H, W], 5)];
  const [jx, jw, jdy] = [jaxArray([N, C, H, W], 3), jaxArray([O, C, 3, 3], 4), jaxArray([N, O, H, W], 5)];
  const swap01 = (a: JaxArray) => np.transpose(a, [1, 0, 2, 3]);
  add(`conv2d 3x3 fwd ${CONV_SHAPE}`, CONV_FLOPS, 'GFLOP/s',
    tesseraCase(backend, (p: T.Tensor, q: T.Tensor) => T.conv2d(p, q, { padding: 1 }), [x, w]),
    jaxCase((p, q) => lax.conv(p, q, [1, 1], 'SAME'), [jx, jw]));
  add(`conv2d 3x3 grad input ${CONV_SHAPE}`, CONV_FLOPS, 'GFLOP/s',
    tesseraCase(backend, (g: T.Tensor, q: T.Tensor) => T.conv2dGradInput(g, q, [N, C, H, W], { padding: 1 }), [dy, w]),
    jaxCase((g, q) => lax.conv(g, np.flip(swap01(q), [2, 3]), [1, 1], 'SAME'), [jdy, jw]));
  add(`conv2d 3x3 grad weight ${CONV_SHAPE}`, CONV_FLOPS, 'GFLOP/s',
    tesseraCase(backend, (p: T.Tensor, g: T.Tensor) => T.conv2dGradWeight(p, g, [O, C, 3, 3], { padding: 1 }), [x, dy]),
    jaxCase((p, g) => swap01(lax.conv(swap01(p), swap01(g), [1, 1], [[1, 1], [1, 1]])), [jx, jdy]));
  const threads = backend.describe()['threads'];
  return { cases, about: `Tessera ${backend.name}${typeof threads === 'number' ? ` (${threads} threads)` : ''} vs jax-js wasm (${THREADS} worker threads)` };
}

// ---------------------------------------------------------------- run

const load = (): string => os.loadavg().map((l) => l.toFixed(1)).join(', ');
console.log(`# ${os.cpus()[0]?.model.trim() ?? 'unknown CPU'}, ${os.cpus().length} cores; load average ${load()}`);
const cases: Case[] = [];
const about: string[] = [];
for (const [name, make] of [['webgpu', webgpuCases], ['cpu', cpuCases]] as const) {
  if (group !== 'all' && group !== name) continue;
  try {
    const g = await make();
    cases.push(...g.cases);
    about.push(g.about);
  } catch (e) {
    console.log(`# group ${name} skipped: ${(e as Error).message.split('\n')[0]}`);
  }
}

const filter = process.env['TESSERA_BENCH'];
const selected = cases.filter((c) => filter === undefined || c.name.includes(filter));
const header = ['benchmark', 'tessera', 'median ms', 'rate', 'peer', 'median ms', 'rate', 'speedup vs peer', 'of ceiling (tessera / peer)', 'load 1m'];
console.log(header.join(' | '));
const rows: string[][] = [];
for (const c of selected) {
  // Warm up outside the timing (pipeline and kernel compilation), then time.
  await c.tessera();
  await c.peer();
  const bench = new Bench({ time: 1500, iterations: 3, warmupIterations: 1 });
  bench.add('tessera', c.tessera).add('peer', c.peer);
  await bench.run();
  const median = (name: string): number => {
    const r = bench.getTask(name)?.result as { latency?: { p50?: number } } | undefined;
    const m = r?.latency?.p50;
    if (m === undefined) throw new Error(`${c.name}: no result for ${name}`);
    return m;
  };
  const ms = median('tessera');
  const pms = median('peer');
  const rate = (t: number): string => `${(c.work / (t / 1000) / 1e9).toFixed(2)} ${c.unit}`;
  const share = (t: number): string => `${((100 * c.work) / (t / 1000) / 1e9 / c.ceiling!).toFixed(1)}%`;
  const row = [c.name, c.backend, ms.toFixed(2), rate(ms), c.peerName, pms.toFixed(2), rate(pms), `${(pms / ms).toFixed(2)}x`, c.ceiling === undefined ? '-' : `${share(ms)} / ${share(pms)}`, os.loadavg()[0]!.toFixed(1)];
  rows.push(row);
  console.log(row.join(' | '));
}

const table = [header, header.map(() => '---'), ...rows].map((r) => `| ${r.join(' | ')} |`).join('\n');
const machine = `${os.cpus().length} CPU cores (${os.cpus()[0]?.model.trim() ?? 'unknown'}), ${(os.totalmem() / 2 ** 30).toFixed(0)} GiB; ${about.join('; ')}; load average at the end: ${load()}`;
console.log(`\n${table}\n\n${machine}`);
if (filter === undefined && group === 'all' && about.length === 2) {
  // A new dated section after the earlier ones: RESULTS.md keeps every run's figures for comparison.
  const results = new URL('./RESULTS.md', import.meta.url);
  appendFileSync(
    results,
    `\n## ${new Date().toISOString().slice(0, 10)}: \`npm run bench\`, both groups\n\nMachine: ${machine}.\n\n` +
      'Each iteration runs the op and reads the whole result back (both libraries pay the same transfer); medians over at least 3 iterations after warm-up. ' +
      'WebGPU rows: Tessera against TF.js on the same Dawn adapter; convolutions NCHW/OIHW for Tessera, NHWC/HWIO for TF.js, same FLOPs; "of ceiling": the rate as a share of the adapter\'s measured FMA rate or streaming bandwidth. ' +
      'CPU rows: Tessera\'s cpu backend against jax-js\'s Wasm backend with as many worker threads, its ops run eagerly; jax-js\'s convolution gradients are the convolutions its grad emits. ' +
      'Speedup = peer time / Tessera time. ' +
      'When the load average is above the core count the machine was shared with other jobs: absolute rates are then several times ' +
      'below an idle machine and the ratios are noisy (the two libraries run one after the other, not interleaved).\n\n' +
      `${table}\n`,
  );
  console.log(`\nappended to ${fileURLToPath(results)}`);
}
process.exit(0);
