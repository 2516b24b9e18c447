/**
 * Shape-generic kernels: a kernel's sizes, strides and literal values are read from a uniform, so
 * one pipeline serves every shape of the same structure. Held here: the exact division the index
 * maps use instead of integer division (host model of the WGSL helpers, against BigInt), and one
 * set of pipelines serving a convolutional program, its gradient and movement ops at two batch
 * and spatial sizes, with the results of shape-specialized kernels and of the reference.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { buildProgram, type Program } from '../../../core/program.ts';
import { grad } from '../../../autodiff/index.ts';
import { createWebGpuBackend, type WebGpuBackend } from '../../../backends/webgpu/index.ts';
import { TILE_CANDIDATES } from '../../../backends/webgpu/tiles.ts';
import { divisionMagic, genericWgsl, KernelParams } from '../../../backends/webgpu/wgsl.ts';
import { T, TOLERANCES, assertClose, fc, values } from '../parity/helpers.ts';

/** WGSL's `mulhi` as written in wgsl.ts: 16-bit halves, every partial sum exact below 2^32. */
function mulhi(a: number, b: number): number {
  const [a0, a1, b0, b1] = [a & 0xffff, a >>> 16, b & 0xffff, b >>> 16];
  const lo = a0 * b0;
  const m1 = a1 * b0;
  const m2 = a0 * b1;
  const mid = (lo >>> 16) + (m1 & 0xffff) + (m2 & 0xffff);
  const hi = a1 * b1 + (m1 >>> 16) + (m2 >>> 16) + (mid >>> 16);
  assert.ok(hi < 2 ** 32, 'mulhi overflowed');
  return hi;
}

const udiv = (n: number, d: number): number => {
  const { m, s } = divisionMagic(d);
  assert.ok(Number.isInteger(m) && m > 0 && m < 2 ** 32, `multiplier ${m} of ${d} is not a u32`);
  return mulhi(n, m) >>> s;
};

test('division by a uniform: mulhi(n, m) >> s is n / d for every n < 2^31 and 2 <= d < 2^31', () => {
  const check = (n: number, d: number): void => {
    const want = Number(BigInt(n) / BigInt(d));
    assert.equal(udiv(n, d), want, `${n} / ${d}`);
  };
  // The edges: divisors next to powers of two and the largest ones, numerators at multiples of d.
  const divisors = [2, 3, 5, 6, 7, 9, 10, 12, 24, 96, 100, 255, 257, 641, 6700417, 65535, 65537, 3 << 20, 2 ** 30 - 1, 2 ** 30 + 1, 2 ** 31 - 1];
  const top = 2 ** 31 - 1;
  for (const d of divisors) {
    for (const n of [0, 1, d - 1, d, d + 1, 7 * d - 1, 7 * d, top, top - (top % d), top - (top % d) - 1]) if (n >= 0 && n <= top) check(n, d);
  }
  fc.assert(
    fc.property(fc.integer({ min: 0, max: top }), fc.integer({ min: 2, max: top }), (n, d) => check(n, d)),
    { numRuns: 5000 },
  );
  assert.throws(() => divisionMagic(1), /divisor 1 is outside/);
});

test('a shape-generic dialect keeps structure in the text and numbers in the uniform', () => {
  const params = new KernelParams();
  const d = genericWgsl(params);
  assert.equal(d.uint(0), '0u');
  assert.equal(d.uint(1), '1u');
  assert.equal(d.uint(96), 'P[0].x');
  assert.equal(d.quotient('i', 64), '(i >> P[0].y)');
  assert.equal(d.remainder('i', 64), '(i & P[0].z)');
  assert.equal(d.quotient('i', 96), 'udiv(i, P[0].w, P[1].x)');
  assert.equal(d.constant(0.25, 'float32'), 'bitcast<f32>(P[1].y)');
  assert.deepEqual(params.words.slice(0, 3), [96, 6, 63]);
  assert.equal(new Float32Array(new Uint32Array([params.words[5]!]).buffer)[0], 0.25);
  assert.match(params.declaration(3), /@binding\(3\) var<uniform> P: array<vec4<u32>, 2>/);
  assert.equal(params.data().length, 8);
});

const placeholder = (i: number, shape: readonly number[], dtype: T.DType = 'float32'): T.Tensor => new T.Tensor({ op: 'input', index: i }, [], shape, dtype);

/** A conv block, its gradient, a normalization by a shape-dependent count and movement ops, at batch n and size h x h. */
function blockAt(n: number, h: number): { program: Program; inputs: T.Tensor[]; f: (...xs: T.Tensor[]) => T.Tensor[] } {
  const shapes = [[n, 4, h, h], [4, 4, 3, 3], [4], [3]] as const;
  const f = (...args: T.Tensor[]): T.Tensor[] => {
    const [x, w, b, idx] = args as [T.Tensor, T.Tensor, T.Tensor, T.Tensor];
    const conv = (xx: T.Tensor, ww: T.Tensor): T.Tensor => T.silu(T.add(T.conv2d(xx, ww, { padding: 1 }), T.reshape(b, [1, 4, 1, 1])));
    const y = conv(x, w);
    const centred = T.sub(y, T.mean(y, [2, 3], true));
    const [gx, gw] = grad((xx: T.Tensor, ww: T.Tensor) => T.sum(T.mul(conv(xx, ww), conv(xx, ww))), { argnums: [0, 1] })(x, w) as T.Tensor[];
    const moved = T.concat([T.slice(x, [0, 1, 0, 0], [n, 3, h, h]), T.pad(T.slice(x, [0, 0, 1, 1], [n, 2, h - 1, h - 1]), [0, 0, 1, 1], [0, 0, 1, 1], 0.5)], 1);
    const picked = T.gather(T.reshape(x, [n * 4, h * h]), idx, 0);
    return [centred, gx!, gw!, moved, picked];
  };
  const ps = shapes.map((s, i) => placeholder(i, s, i === 3 ? 'int32' : 'float32'));
  const program = buildProgram(`block${n}x${h}`, f(...ps), ps).program;
  const inputs = [
    T.tensor(values(n * 100 + h, n * 4 * h * h), shapes[0]),
    T.tensor(values(7, 144, -0.5, 0.5), shapes[1]),
    T.tensor(values(8, 4), shapes[2]),
    T.tensor(Int32Array.from([n * 4 - 1, 0, 2]), shapes[3], 'int32'),
  ];
  return { program, inputs, f };
}

async function runOn(b: WebGpuBackend, program: Program, inputs: readonly T.Tensor[]): Promise<Float32Array[]> {
  const exe = b.compile(program);
  await exe.ready;
  const bufs = await Promise.all(inputs.map(async (x) => b.upload(await x.data(), x.shape, x.dtype)));
  const outs = b.run(exe, bufs, bufs.map(() => false));
  return Promise.all(outs.map(async (o) => Float32Array.from(await b.download(o))));
}

test('one pipeline serves two shapes: a conv block and its gradient at batch 3, 16x16 and batch 5, 32x32 share every pipeline and agree with specialized kernels and the reference', async () => {
  // The built-in tile table (not a tuned ranking this machine may have cached): the tile is part of
  // a kernel's structure, and these shapes pick the same tiles from it.
  const generic = await createWebGpuBackend({ tiles: TILE_CANDIDATES, shapeGeneric: true });
  const special = await createWebGpuBackend({ tiles: TILE_CANDIDATES, shapeGeneric: false });
  assert.equal(generic.shapeGeneric, true);
  const tol = TOLERANCES.webgpu.gradient;
  let afterFirst = 0;
  for (const [n, h] of [[3, 16], [5, 32]] as const) {
    const { program, inputs, f } = blockAt(n, h);
    const got = await runOn(generic, program, inputs);
    if (afterFirst === 0) afterFirst = generic.pipelineCount;
    const specialized = await runOn(special, program, inputs);
    const want = await Promise.all((await T.jit(f, { backend: 'reference' })(...inputs)).map((t) => t.data()));
    assert.equal(got.length, want.length);
    want.forEach((w, i) => assertClose(`${program.name} output ${i}, generic vs reference`, 'webgpu', w, got[i]!, tol));
    got.forEach((g, i) => assertClose(`${program.name} output ${i}, generic vs specialized`, 'webgpu', specialized[i]!, g, tol));
  }
  assert.ok(afterFirst > 5, `${afterFirst} pipelines for the first shape`);
  assert.equal(generic.pipelineCount, afterFirst, 'the second shape built new pipelines');
  assert.ok(special.pipelineCount > afterFirst, `specialized kernels: ${special.pipelineCount} pipelines for two shapes, generic ${afterFirst}`);
});

test('every tile candidate builds and agrees with the reference: a matmul with a fused epilogue, a strided convolution and both adjoints', async () => {
  // Shapes that fit no tile evenly, so every tile has clamped rows and columns and a partial last tile.
  const shapes = [[37, 45], [45, 70], [70], [3, 6, 9, 9], [10, 6, 3, 3], [3, 10, 5, 5]] as const;
  const f = (...args: T.Tensor[]): T.Tensor[] => {
    const [a, b, bias, x, w, dy] = args as [T.Tensor, T.Tensor, T.Tensor, T.Tensor, T.Tensor, T.Tensor];
    const o = { stride: [2, 2] as [number, number], padding: [1, 1] as [number, number] };
    return [
      T.silu(T.add(T.matmul(a, b), bias)),
      T.conv2d(x, w, o),
      T.conv2dGradInput(dy, w, [3, 6, 9, 9], o),
      T.conv2dGradWeight(x, dy, [10, 6, 3, 3], o),
    ];
  };
  const ps = shapes.map((s, i) => placeholder(i, s));
  const program = buildProgram('tiles', f(...ps), ps).program;
  const inputs = shapes.map((s, i) => T.tensor(values(40 + i, s.reduce((p, d) => p * d, 1), -1, 1), s));
  const want = await Promise.all((await T.jit(f, { backend: 'reference' })(...inputs)).map((t) => t.data()));
  for (const tile of TILE_CANDIDATES) {
    const be = await createWebGpuBackend({ tiles: [tile] });
    const got = await runOn(be, program, inputs);
    want.forEach((w, i) => assertClose(`tile ${JSON.stringify(tile)}, output ${i}`, 'webgpu', w, got[i]!, TOLERANCES.webgpu.contraction));
    be.ctx.device.destroy();
  }
});
