/**
 * The CPU backend's fused kernels as WebAssembly (simd.ts): a training step's kernels all compile to
 * Wasm, and give the same bits as the JavaScript kernels (both are compared with the reference by
 * the parity suites); the vector form is chosen where the index maps allow it and refused where a
 * branch would differ between lanes; the kernel text parses as the dialect spells it.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { CpuBackend, cpuBackend, registerCpuBackend } from '../../../backends/cpu/index.ts';
import { MAX_KERNEL_BUFFERS, planSteps } from '../../../backends/cpu/kernels.ts';
import { compileKernel } from '../../../backends/cpu/simd.ts';
import { parseKernel } from '../../../backends/cpu/kernelText.ts';
import { add, buildProgram, concat, exp, flatten, jit, max, mul, pad, permute, sigmoid, sum, tensor, type PyTree, type Tensor } from '../../../core/index.ts';
import { stepBatch } from '../../../train/step.ts';
import { trainingFixture } from '../parity/model.ts';

registerCpuBackend();

const leaves = (tree: unknown): Tensor[] => flatten(tree as PyTree<Tensor>).leaves;

test('cpu kernels: every fused kernel of a training step is WebAssembly, with the same bits as JavaScript', async () => {
  const { state, step } = await trainingFixture();
  const b = 16;
  const images = new Float32Array(b * 8 * 8).map((_, i) => Math.cos(i * 0.21));
  const corners = Int32Array.from({ length: b }, (_, i) => (i * 5) % 9);
  const { program, lifted } = buildProgram('kernelLanguages', leaves(step(state, stepBatch(images, [b, 1, 8, 8], corners, corners.map((c) => 8 - c)))));
  const outputs: Uint8Array[][] = [];
  for (const kernels of ['wasm', 'js'] as const) {
    const be = new CpuBackend(cpuBackend().runtime, kernels);
    const exe = be.compile(program);
    const described = be.describe() as { kernelsCompiled: number; wasmKernels: number };
    if (kernels === 'wasm') assert.equal(described.wasmKernels, described.kernelsCompiled, 'kernels left to JavaScript');
    else assert.equal(described.wasmKernels, 0);
    const ins = await Promise.all(lifted.map(async (t) => be.upload(await t.data(), t.shape, t.dtype)));
    const outs = be.run(exe, ins, ins.map(() => false));
    outputs.push(await Promise.all(outs.map(async (o) => {
      const d = await be.download(o);
      return new Uint8Array(d.buffer, d.byteOffset, d.byteLength).slice();
    })));
    [...ins, ...outs].forEach((x) => be.free(x));
  }
  outputs[0]!.forEach((o, i) => assert.deepEqual(o, outputs[1]![i], `output ${i} differs between wasm and js kernels`));
});

/** Whether the one fused kernel of `y` (with inputs uploaded, so nothing else fuses) has a vector loop. */
function vectorized(y: Tensor): boolean {
  const { program } = buildProgram('vectorized', [y]);
  const kernels = planSteps(program).steps.filter((s) => s.kind === 'js');
  assert.equal(kernels.length, 1, `expected one fused kernel, got ${kernels.map((k) => k.label)}`);
  const text = kernels[0]!.kind === 'js' ? kernels[0]!.wasm : undefined;
  assert.ok(text !== undefined);
  return compileKernel(text).vectorized;
}

test('cpu kernels: the vector form follows the index maps', () => {
  const x = tensor(new Float32Array(2 * 8 * 4 * 4).map((_, i) => i), [2, 8, 4, 4]);
  const bias = tensor(new Float32Array(8).fill(1), [1, 8, 1, 1]);
  assert.ok(vectorized(sigmoid(add(x, x))), 'same-shape operands');
  assert.ok(vectorized(mul(x, bias)), 'a per-channel broadcast');
  assert.ok(vectorized(concat([x, exp(x)], 1)), 'a concat along channels');
  assert.ok(vectorized(permute(x, [0, 1, 3, 2])), 'a transpose (lanes gathered one by one)');
  assert.ok(!vectorized(pad(x, [0, 0, 0, 1], [0, 0, 0, 1], 0)), 'a pad of the innermost axis branches per lane');
});

test('cpu kernels: the dialect text parses into statements, and bad text is refused', () => {
  const stmts = parseKernel('const j0 = @q(gi, 256) % 8;\nlet v1:float32 = $f3f800000;\nif (j0 < 4 && j0 >= 0) {\n  v1 = @load.float32(b0, j0);\n}\nelse {\n  v1 = $f0;\n}\n@store.float32(out, gi, v1);');
  assert.deepEqual(stmts.map((s) => s.k), ['const', 'let', 'if', 'do']);
  assert.throws(() => parseKernel('const = ;'), /expected/);
});

test('cpu kernels: vector reductions keep NaN, the first of equal zeros and int32 wrapping, four rows at a time', async () => {
  // 9 rows (two vector iterations and a scalar one), NaN and signed zeros at different places per row.
  const rows = [
    [1, NaN, 2], [NaN, 1, 2], [-0, 0, 0], [0, -0, -0], [-1, -0, -2], [-Infinity, -Infinity, -Infinity], [3, 2, NaN], [-0, -0, -0], [5, 5, 5],
  ];
  // Stored [3, 9], one row per column, so that the reduction over axis 0 reads four rows with one load.
  const x = tensor([0, 1, 2].flatMap((r) => rows.map((row) => row[r]!)), [3, 9]);
  await sameBits('vector max and sum', (v) => [max(v, [0]), sum(v, [0]), max(permute(v, [1, 0]), [1])], x);
  const big = 2 ** 30;
  const xi = tensor(Int32Array.from({ length: 3 * 8 }, (_, i) => (i < 8 ? big : i % 2 === 0 ? -big : big)), [3, 8], 'int32');
  await sameBits('int32 vector sums wrap', (v) => [sum(v, [0]), max(v, [0])], xi);
});

/** `f(x)` on cpu and on the reference agree value for value with Object.is (so -0 is not 0), NaN equal to NaN. */
async function sameBits(name: string, f: (x: Tensor) => Tensor[], x: Tensor): Promise<void> {
  const run = async (backend: string) => Promise.all((await jit(f, { backend, name })(x)).map((t) => t.data()));
  const [want, got] = [await run('reference'), await run('cpu')];
  want.forEach((w, i) => Array.from(w).forEach((v, j) => assert.ok(Object.is(v, got[i]![j]), `${name}: output ${i} element ${j} is ${got[i]![j]} on cpu, ${v} on the reference`)));
}

test('cpu kernels: a sum of more tensors than a kernel has argument slots is split into kernels that fit', async () => {
  const xs = Array.from({ length: 300 }, (_, i) => tensor([i, -i, 0.5 * i], [3]));
  const { program } = buildProgram('manyReads', [xs.reduce((acc, x) => add(acc, mul(x, x)))]);
  const { steps } = planSteps(program);
  assert.ok(steps.length > 1);
  assert.ok(steps.every((s) => s.reads.length + 1 <= MAX_KERNEL_BUFFERS), `reads per kernel: ${steps.map((s) => s.reads.length)}`);
  const got = await jit((...ys: Tensor[]) => ys.reduce((acc, x) => add(acc, mul(x, x))), { backend: 'cpu' })(...xs);
  const want = [0, 1, 2].map((j) => xs.reduce((acc, _, i) => acc + ([i, -i, 0.5 * i][j]! ** 2), 0));
  assert.deepEqual(Array.from(await got.data()), want);
});
