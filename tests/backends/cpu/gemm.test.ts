/**
 * The CPU backend's Wasm SIMD matmul and convolutions against the reference interpreter, on a
 * single-thread `Parallel` whose `run` can split a job into several ranges: results must match
 * the reference to float32 accuracy, and be bit-identical however the work is split.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { conv2d, conv2dGradInput, conv2dGradWeight, type ConvParams } from '../../../backends/cpu/conv.ts';
import { matmul, type MatmulParams } from '../../../backends/cpu/gemm.ts';
import type { Parallel } from '../../../backends/cpu/parallel.ts';
import { createRuntime } from '../../../backends/cpu/runtime.ts';
import * as reference from '../../../backends/reference/linalg.ts';
import type { ConvAttrs } from '../../../core/tensor.ts';

const RUNS = Number(process.env['TESSERA_FC_RUNS'] ?? 25);
/** Error allowed per unit of Σ|a·b| (the sum's condition): float32 accumulation stays far below it. */
const TOLERANCE = 1e-5;

interface TestParallel extends Parallel {
  /** Bytes in blocks allocated and not yet freed, and the most there ever were. */
  live(): number;
  peak(): number;
}

/**
 * A Parallel on the calling thread: a bump allocator over a fresh shared memory, and `run` calling
 * the entry over the ranges `split(total)` gives, in turn (one range by default). `threads` is only
 * what the kernels are told, so that they choose their blocking for it.
 */
function testParallel(options: { readonly threads?: number; readonly split?: (total: number) => number[] } = {}): TestParallel {
  const memory = new WebAssembly.Memory({ initial: 1, maximum: 65536, shared: true });
  const instances: Array<Record<string, WebAssembly.ExportValue>> = [];
  const blocks = new Map<number, number>();
  let top = 64;
  let live = 0;
  let peak = 0;
  return {
    memory,
    threads: options.threads ?? 1,
    alloc(bytes) {
      const offset = top;
      top += Math.ceil(Math.max(bytes, 1) / 64) * 64;
      if (top > memory.buffer.byteLength) memory.grow(Math.ceil((top - memory.buffer.byteLength) / 65536));
      blocks.set(offset, bytes);
      live += bytes;
      peak = Math.max(peak, live);
      return offset;
    },
    free(offset) {
      const bytes = blocks.get(offset);
      assert.ok(bytes !== undefined, `free of ${offset}, not a live block`);
      blocks.delete(offset);
      live -= bytes;
    },
    heap: () => ({ f32: new Float32Array(memory.buffer), i32: new Int32Array(memory.buffer), u8: new Uint8Array(memory.buffer) }),
    registerWasm(module) {
      return instances.push(new WebAssembly.Instance(module, { env: { memory } }).exports) - 1;
    },
    registerJs() {
      throw new Error('the test Parallel runs WebAssembly kernels only');
    },
    run(id, entry, total, args) {
      const fn = instances[id]![entry] as (...a: number[]) => void;
      const cuts = [0, ...(options.split?.(total) ?? []).filter((c) => c > 0 && c < total).sort((a, b) => a - b), total];
      for (let i = 0; i + 1 < cuts.length; i++) fn(cuts[i]!, cuts[i + 1]!, ...args);
    },
    dispose() {},
    get bytesInUse() {
      return live;
    },
    get bytesReserved() {
      return peak;
    },
    live: () => live,
    peak: () => peak,
  };
}

/** Uniform numbers in [0, 1) from a seed (a linear congruential generator, so a failing seed replays). */
function uniform(seed: number): () => number {
  let s = seed >>> 0;
  return () => (s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32;
}

/** Cut points from a seed: up to 5 at random places, so a job runs as up to 6 ranges of random lengths. */
function randomSplit(seed: number): (total: number) => number[] {
  const next = uniform(seed);
  return (total) => Array.from({ length: 1 + Math.floor(next() * 5) }, () => Math.floor(next() * total));
}

/** Float32 values in [-1, 1) from a seed. */
function randomFloats(seed: number, n: number): Float32Array {
  const next = uniform(seed);
  return Float32Array.from({ length: n }, () => 2 * next() - 1);
}

function upload(par: Parallel, values: Float32Array): number {
  const offset = par.alloc(values.length * 4);
  par.heap().f32.set(values, offset / 4);
  return offset;
}

function download(par: Parallel, offset: number, n: number): Float32Array {
  return par.heap().f32.slice(offset / 4, offset / 4 + n);
}

/** A block of n floats filled with NaN, so that an element the kernel forgets to write shows. */
function garbage(par: Parallel, n: number): number {
  return upload(par, new Float32Array(n).fill(NaN));
}

const size = (shape: readonly number[]) => shape.reduce((a, b) => a * b, 1);
const abs = (v: Float32Array) => v.map(Math.abs);

/** |got - expected| <= TOLERANCE · bound elementwise, where bound is the same contraction of |a| and |b|. */
function assertClose(got: Float32Array, expected: Float64Array, bound: Float64Array, what: string): void {
  assert.equal(got.length, expected.length, `${what}: length`);
  for (let i = 0; i < expected.length; i++) {
    if (!(Math.abs(got[i]! - expected[i]!) <= TOLERANCE * bound[i]! + 1e-30)) {
      assert.fail(`${what}[${i}]: got ${got[i]}, expected ${expected[i]} (Σ|a·b| ${bound[i]})`);
    }
  }
}

function assertSameBits(a: Float32Array, b: Float32Array, what: string): void {
  assert.deepEqual(new Uint32Array(a.buffer), new Uint32Array(b.buffer), what);
}

// ---------------------------------------------------------------------------------------------
// matmul

interface MatmulCase {
  batch: number;
  m: number;
  n: number;
  k: number;
  transA: boolean;
  transB: boolean;
  aShared: boolean;
  bShared: boolean;
  seed: number;
}

const matmulCase: fc.Arbitrary<MatmulCase> = fc.record({
  batch: fc.integer({ min: 0, max: 3 }),
  m: fc.oneof(fc.integer({ min: 1, max: 6 }), fc.integer({ min: 1, max: 40 })),
  n: fc.oneof(fc.integer({ min: 1, max: 6 }), fc.integer({ min: 1, max: 40 })),
  // Past 256, a column panel takes more than one pass over k.
  k: fc.oneof(fc.integer({ min: 0, max: 8 }), fc.integer({ min: 0, max: 300 })),
  transA: fc.boolean(),
  transB: fc.boolean(),
  aShared: fc.boolean(),
  bShared: fc.boolean(),
  seed: fc.integer({ min: 0, max: 2 ** 31 - 1 }),
});

/** The operands as stored (op(A)[t] is [m, k], or [k, m] when transA), one entry when shared. */
function matmulOperands(c: MatmulCase): { a: Float32Array; b: Float32Array } {
  return {
    a: randomFloats(c.seed, (c.aShared ? 1 : c.batch) * c.m * c.k),
    b: randomFloats(c.seed + 1, (c.bShared ? 1 : c.batch) * c.k * c.n),
  };
}

/** Runs the kernel on `par`; returns C with a guard element on each side. */
function runMatmul(par: Parallel, c: MatmulCase, a: Float32Array, b: Float32Array): Float32Array {
  const total = c.batch * c.m * c.n;
  const out = garbage(par, total + 2);
  const p: MatmulParams = {
    batch: c.batch, m: c.m, n: c.n, k: c.k,
    a: upload(par, a), b: upload(par, b), c: out + 4,
    aBatchStride: c.aShared ? 0 : c.m * c.k, bBatchStride: c.bShared ? 0 : c.k * c.n,
    transA: c.transA, transB: c.transB,
  };
  matmul(par, p);
  return download(par, out, total + 2);
}

/** The reference's batched matmul of op(A) and op(B), written out as plain [batch, m, k] x [batch, k, n]. */
function referenceMatmul(c: MatmulCase, a: Float32Array, b: Float32Array): Float64Array {
  const opA = new Float64Array(c.batch * c.m * c.k);
  const opB = new Float64Array(c.batch * c.k * c.n);
  for (let t = 0; t < c.batch; t++) {
    const [ta, tb] = [c.aShared ? 0 : t, c.bShared ? 0 : t];
    for (let i = 0; i < c.m; i++) for (let p = 0; p < c.k; p++) opA[(t * c.m + i) * c.k + p] = a[ta * c.m * c.k + (c.transA ? p * c.m + i : i * c.k + p)]!;
    for (let p = 0; p < c.k; p++) for (let j = 0; j < c.n; j++) opB[(t * c.k + p) * c.n + j] = b[tb * c.k * c.n + (c.transB ? j * c.k + p : p * c.n + j)]!;
  }
  const out = new Float64Array(c.batch * c.m * c.n);
  reference.matmul(opA, opB, [c.batch, c.m, c.k], [c.batch, c.k, c.n], out);
  return out;
}

function checkMatmul(par: TestParallel, c: MatmulCase): void {
  const { a, b } = matmulOperands(c);
  const got = runMatmul(par, c, a, b);
  const what = `matmul ${JSON.stringify(c)}`;
  assert.ok(Number.isNaN(got[0]!) && Number.isNaN(got[got.length - 1]!), `${what}: wrote outside C`);
  assertClose(got.subarray(1, -1), referenceMatmul(c, a, b), referenceMatmul(c, abs(a), abs(b)), what);
}

test('matmul matches the reference: edge sizes, k = 0, both transposes, shared operands', () => {
  const par = testParallel();
  fc.assert(fc.property(matmulCase, (c) => checkMatmul(par, c)), { numRuns: RUNS });
});

test('matmul of an empty batch, or with m or n = 0, writes nothing', () => {
  const par = testParallel();
  for (const [batch, m, n] of [[0, 3, 5], [2, 0, 5], [2, 3, 0]] as const) {
    const c = { batch, m, n, k: 4, transA: false, transB: false, aShared: false, bShared: false, seed: 1 };
    const { a, b } = matmulOperands(c);
    assert.ok(runMatmul(par, c, a, b).every(Number.isNaN), `batch ${batch}, m ${m}, n ${n}`);
  }
});

test('matmul is bit-identical however its work is split over ranges and threads', () => {
  fc.assert(
    fc.property(matmulCase, fc.integer({ min: 0, max: 2 ** 31 - 1 }), fc.integer({ min: 1, max: 8 }), (c, splitSeed, threads) => {
      const { a, b } = matmulOperands(c);
      const whole = runMatmul(testParallel(), c, a, b);
      const split = runMatmul(testParallel({ threads, split: randomSplit(splitSeed) }), c, a, b);
      assertSameBits(split, whole, `matmul ${JSON.stringify(c)} split ${splitSeed} threads ${threads}`);
    }),
    { numRuns: RUNS },
  );
});

/** Scratch stays within the kernels' 64 MiB budget plus small tables. */
const SCRATCH_LIMIT = 65 * 2 ** 20;

test('a batched matmul larger than the scratch budget runs in chunks and frees its scratch', () => {
  // 16 entries of 5 MiB of packed operands each (k = 65536, padded to 4 rows and 16 columns).
  const c = { batch: 16, m: 1, n: 1, k: 65536, transA: false, transB: true, aShared: false, bShared: false, seed: 7 };
  const par = testParallel();
  const { a, b } = matmulOperands(c);
  const got = runMatmul(par, c, a, b);
  assertClose(got.subarray(1, -1), referenceMatmul(c, a, b), referenceMatmul(c, abs(a), abs(b)), 'chunked matmul');
  const held = (a.length + b.length + got.length) * 4;
  assert.ok(par.peak() - held <= SCRATCH_LIMIT, `peak scratch ${par.peak() - held}`);
  assert.equal(par.live(), held, 'scratch left allocated');
});

// ---------------------------------------------------------------------------------------------
// convolutions

interface ConvCase {
  x: [number, number, number, number];
  w: [number, number, number, number];
  attrs: ConvAttrs;
  seed: number;
}

const outSize = (size: number, k: number, s: number, p: number, d: number) => Math.floor((size + 2 * p - d * (k - 1) - 1) / s) + 1;
const yShape = (c: ConvCase): [number, number, number, number] => [
  c.x[0], c.w[0],
  outSize(c.x[2], c.w[2], c.attrs.stride[0], c.attrs.padding[0], c.attrs.dilation[0]),
  outSize(c.x[3], c.w[3], c.attrs.stride[1], c.attrs.padding[1], c.attrs.dilation[1]),
];

const convCase: fc.Arbitrary<ConvCase> = fc
  .record({
    n: fc.integer({ min: 0, max: 3 }),
    groups: fc.integer({ min: 1, max: 3 }),
    cg: fc.integer({ min: 1, max: 4 }),
    og: fc.oneof(fc.integer({ min: 1, max: 5 }), fc.integer({ min: 1, max: 18 })),
    kh: fc.integer({ min: 1, max: 3 }),
    kw: fc.integer({ min: 1, max: 3 }),
    h: fc.integer({ min: 1, max: 11 }),
    w: fc.integer({ min: 1, max: 19 }),
    stride: fc.tuple(fc.integer({ min: 1, max: 3 }), fc.integer({ min: 1, max: 3 })),
    padding: fc.tuple(fc.integer({ min: 0, max: 2 }), fc.integer({ min: 0, max: 2 })),
    dilation: fc.tuple(fc.integer({ min: 1, max: 2 }), fc.integer({ min: 1, max: 2 })),
    seed: fc.integer({ min: 0, max: 2 ** 31 - 1 }),
  })
  .map((r) => ({
    x: [r.n, r.groups * r.cg, r.h, r.w] as [number, number, number, number],
    w: [r.groups * r.og, r.cg, r.kh, r.kw] as [number, number, number, number],
    attrs: { stride: r.stride, padding: r.padding, dilation: r.dilation, groups: r.groups },
    seed: r.seed,
  }))
  .filter((c) => yShape(c)[2] >= 1 && yShape(c)[3] >= 1);

type ConvOp = 'conv2d' | 'conv2dGradInput' | 'conv2dGradWeight';
const CONV_OPS: readonly ConvOp[] = ['conv2d', 'conv2dGradInput', 'conv2dGradWeight'];

/** Each op's operands and output, in the reference's argument order. */
function convShapes(op: ConvOp, c: ConvCase): [number[], number[], number[]] {
  const y = yShape(c);
  switch (op) {
    case 'conv2d':
      return [c.x, c.w, y];
    case 'conv2dGradInput':
      return [y, c.w, c.x];
    case 'conv2dGradWeight':
      return [c.x, y, c.w];
    default:
      return op satisfies never;
  }
}

function convOperands(op: ConvOp, c: ConvCase): [Float32Array, Float32Array] {
  const [aShape, bShape] = convShapes(op, c);
  return [randomFloats(c.seed, size(aShape)), randomFloats(c.seed + 1, size(bShape))];
}

function runConv(par: Parallel, op: ConvOp, c: ConvCase, a: Float32Array, b: Float32Array): Float32Array {
  const [aShape, bShape, outShape] = convShapes(op, c);
  const out = garbage(par, size(outShape) + 2);
  const p: ConvParams = { a: upload(par, a), b: upload(par, b), out: out + 4, aShape, bShape, outShape, ...c.attrs };
  ({ conv2d, conv2dGradInput, conv2dGradWeight })[op](par, p);
  return download(par, out, size(outShape) + 2);
}

function referenceConv(op: ConvOp, c: ConvCase, a: Float32Array, b: Float32Array): Float64Array {
  const [aShape, bShape, outShape] = convShapes(op, c);
  const out = new Float64Array(size(outShape));
  reference[op](a, b, aShape, bShape, outShape, c.attrs, out);
  return out;
}

function checkConv(par: Parallel, op: ConvOp, c: ConvCase): void {
  const [a, b] = convOperands(op, c);
  const got = runConv(par, op, c, a, b);
  const what = `${op} ${JSON.stringify(c)}`;
  assert.ok(Number.isNaN(got[0]!) && Number.isNaN(got[got.length - 1]!), `${what}: wrote outside its output`);
  assertClose(got.subarray(1, -1), referenceConv(op, c, a, b), referenceConv(op, c, abs(a), abs(b)), what);
}

for (const op of CONV_OPS) {
  test(`${op} matches the reference: strides, padding, dilation, groups, empty batches`, () => {
    const par = testParallel();
    fc.assert(fc.property(convCase, (c) => checkConv(par, op, c)), { numRuns: RUNS });
  });

  test(`${op} is bit-identical however its work is split over ranges and threads`, () => {
    fc.assert(
      fc.property(convCase, fc.integer({ min: 0, max: 2 ** 31 - 1 }), fc.integer({ min: 1, max: 8 }), (c, splitSeed, threads) => {
        const [a, b] = convOperands(op, c);
        const whole = runConv(testParallel(), op, c, a, b);
        const split = runConv(testParallel({ threads, split: randomSplit(splitSeed) }), op, c, a, b);
        assertSameBits(split, whole, `${op} ${JSON.stringify(c)} split ${splitSeed} threads ${threads}`);
      }),
      { numRuns: RUNS },
    );
  });
}

/**
 * Convolutions whose patch matrix the GEMM reads in place from the padded images (unit horizontal
 * stride and dilation, output rows of a multiple of 4 positions), and gradients of the input that
 * run as such a convolution (unit strides, padding at most (k - 1) d): the random cases above
 * rarely are.
 */
const inPlaceCase: fc.Arbitrary<ConvCase> = fc
  .record({
    n: fc.integer({ min: 0, max: 3 }),
    groups: fc.integer({ min: 1, max: 3 }),
    cg: fc.integer({ min: 1, max: 5 }),
    og: fc.integer({ min: 1, max: 9 }),
    kh: fc.integer({ min: 1, max: 3 }),
    kw: fc.integer({ min: 1, max: 3 }),
    h: fc.integer({ min: 1, max: 9 }),
    quads: fc.integer({ min: 1, max: 5 }),
    sh: fc.constantFrom(1, 1, 2),
    dh: fc.constantFrom(1, 1, 2),
    padding: fc.tuple(fc.integer({ min: 0, max: 2 }), fc.integer({ min: 0, max: 2 })),
    seed: fc.integer({ min: 0, max: 2 ** 31 - 1 }),
  })
  .map((r) => ({
    // ow = w + 2 pw - (kw - 1) = 4 quads.
    x: [r.n, r.groups * r.cg, r.h, Math.max(1, 4 * r.quads - 2 * r.padding[1] + r.kw - 1)] as [number, number, number, number],
    w: [r.groups * r.og, r.cg, r.kh, r.kw] as [number, number, number, number],
    attrs: { stride: [r.sh, 1] as [number, number], padding: r.padding, dilation: [r.dh, 1] as [number, number], groups: r.groups },
    seed: r.seed,
  }))
  .filter((c) => yShape(c)[2] >= 1 && yShape(c)[3] % 4 === 0);

for (const op of CONV_OPS) {
  test(`${op} reading its patches in place matches the reference and is bit-identical however it is split`, () => {
    fc.assert(
      fc.property(inPlaceCase, fc.integer({ min: 0, max: 2 ** 31 - 1 }), fc.integer({ min: 1, max: 8 }), (c, splitSeed, threads) => {
        checkConv(testParallel(), op, c);
        const [a, b] = convOperands(op, c);
        const whole = runConv(testParallel(), op, c, a, b);
        const split = runConv(testParallel({ threads, split: randomSplit(splitSeed) }), op, c, a, b);
        assertSameBits(split, whole, `${op} ${JSON.stringify(c)} split ${splitSeed} threads ${threads}`);
      }),
      { numRuns: 2 * RUNS },
    );
  });
}

test('the demo network\'s convolutions (3x3, 16 channels, 16x16 and 4x4 images) match the reference', () => {
  const par = testParallel({ threads: 2 });
  const same: ConvAttrs = { stride: [1, 1], padding: [1, 1], dilation: [1, 1], groups: 1 };
  const cases: ConvCase[] = [
    { x: [3, 16, 16, 16], w: [16, 16, 3, 3], attrs: same, seed: 11 },
    { x: [5, 32, 4, 4], w: [8, 32, 3, 3], attrs: same, seed: 12 },
    { x: [2, 16, 16, 16], w: [32, 16, 3, 3], attrs: { ...same, stride: [2, 2] }, seed: 13 },
  ];
  for (const c of cases) for (const op of CONV_OPS) checkConv(par, op, c);
});

test('convolutions of batches larger than the scratch budget run in chunks and free their scratch', () => {
  // 3x3 over 64 channels of 32x32 images: 2.4 MiB of patch matrix per image, so 26 images take two chunks.
  const c: ConvCase = { x: [26, 64, 32, 32], w: [2, 64, 3, 3], attrs: { stride: [1, 1], padding: [1, 1], dilation: [1, 1], groups: 1 }, seed: 5 };
  for (const op of CONV_OPS) {
    const par = testParallel();
    const [a, b] = convOperands(op, c);
    const got = runConv(par, op, c, a, b);
    assertClose(got.subarray(1, -1), referenceConv(op, c, a, b), referenceConv(op, c, abs(a), abs(b)), `chunked ${op}`);
    const held = (a.length + b.length + got.length) * 4;
    assert.ok(par.peak() - held <= SCRATCH_LIMIT, `${op}: peak scratch ${par.peak() - held}`);
    assert.equal(par.live(), held, `${op}: scratch left allocated`);
  }
});

test('convolutions that read their patches in place also run in chunks when the padded images exceed the budget', () => {
  // One 2048 x 4096 channel per image: 33.6 MB padded, so each image is a chunk of its own, and
  // conv2dGradWeight's second chunk adds onto the first's sums.
  const c: ConvCase = { x: [2, 1, 2048, 4096], w: [1, 1, 3, 3], attrs: { stride: [1, 1], padding: [1, 1], dilation: [1, 1], groups: 1 }, seed: 6 };
  for (const op of ['conv2d', 'conv2dGradWeight'] as const) {
    const par = testParallel({ threads: 2 });
    const [a, b] = convOperands(op, c);
    const got = runConv(par, op, c, a, b);
    assertClose(got.subarray(1, -1), referenceConv(op, c, a, b), referenceConv(op, c, abs(a), abs(b)), `chunked in place ${op}`);
    const held = (a.length + b.length + got.length) * 4;
    assert.ok(par.peak() - held <= SCRATCH_LIMIT, `${op}: peak scratch ${par.peak() - held}`);
  }
});

test('on worker threads (the CPU runtime, 2 threads) results are the single-thread ones bit for bit', () => {
  const rt = createRuntime({ threads: 2 });
  try {
    const c = { batch: 2, m: 37, n: 150, k: 300, transA: true, transB: false, aShared: false, bShared: true, seed: 3 };
    const { a, b } = matmulOperands(c);
    assertSameBits(runMatmul(rt, c, a, b), runMatmul(testParallel(), c, a, b), 'matmul');
    const conv: ConvCase = { x: [4, 16, 16, 16], w: [16, 16, 3, 3], attrs: { stride: [1, 1], padding: [1, 1], dilation: [1, 1], groups: 1 }, seed: 9 };
    for (const op of CONV_OPS) {
      const [x, y] = convOperands(op, conv);
      assertSameBits(runConv(rt, op, conv, x, y), runConv(testParallel(), op, conv, x, y), op);
    }
  } finally {
    rt.dispose();
  }
});
