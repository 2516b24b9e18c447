/**
 * The compiled CPU backend on a tiny patch model: the patch model's loss and gradient and one whole
 * training step agree with the reference (../parity/model.ts); a donated step runs in flat memory
 * and gives its old state away for good; steps are bit-for-bit deterministic; float64 is refused
 * with a pointer to the reference backend.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { CpuBackend, CpuBuffer, cpuBackend, registerCpuBackend } from '../../../backends/cpu/index.ts';
import { CpuRuntime, createRuntime } from '../../../backends/cpu/runtime.ts';
import { buildProgram } from '../../../core/program.ts';
import { stepBatch } from '../../../train/step.ts';
import { dispose, flatten, jit, leafPaths, mul, realize, tensor, cast, type PyTree, type Tensor } from '../../../core/index.ts';
import { patchModelParity, trainingFixture, trainStepParity } from '../parity/model.ts';

registerCpuBackend();
patchModelParity('cpu');
trainStepParity('cpu');

const leaves = (tree: unknown): Tensor[] => flatten(tree as PyTree<Tensor>).leaves;

test('cpu: a step that donates its state runs in flat memory; the old state cannot be read', async () => {
  const rt = cpuBackend().runtime;
  assert.ok(rt instanceof CpuRuntime);
  const { state, batch, step } = await trainingFixture('cpu');
  const f = jit(step, { backend: 'cpu', donate: [0], name: 'donatedStep' });
  let s = state;
  const inUse: number[] = [];
  const reserved: number[] = [];
  for (let i = 0; i < 6; i++) {
    const old = leaves(s);
    // A leaf every step replaces (a parameter could pass through unchanged and keep its buffer).
    const counter = s.imagesSeen.storage;
    const out = await f(s, batch);
    assert.ok(Number.isFinite(await out.metrics.loss.item()));
    for (const m of leaves(out.metrics)) dispose(m);
    // From the second step on every leaf has a buffer of its own, so all of the state is given away.
    if (i > 0) {
      assert.ok(old.every((t) => t.isDonated));
      await assert.rejects(old[0]!.data(), /donated/);
      assert.ok(counter?.kind === 'device' && counter.buffer instanceof CpuBuffer);
      await assert.rejects(cpuBackend().download(counter.buffer), /freed or donated/);
    }
    s = out.state;
    inUse.push(rt.bytesInUse);
    reserved.push(rt.bytesReserved);
  }
  assert.deepEqual(inUse.slice(2), inUse.slice(2).map(() => inUse[2]), `bytes in use per step: ${inUse}`);
  assert.deepEqual(reserved.slice(2), reserved.slice(2).map(() => reserved[2]), `bytes reserved per step: ${reserved}`);
});

/** Leaves of `a` and `b` are equal bit for bit (NaN payloads and signed zeros included). */
async function assertBitIdentical(what: string, a: unknown, b: unknown): Promise<void> {
  const [x, y] = [flatten(a as PyTree<Tensor>), leaves(b)];
  const names = leafPaths(x.def);
  assert.equal(y.length, x.leaves.length);
  for (const [i, leaf] of x.leaves.entries()) {
    const u = await leaf.data();
    const v = await y[i]!.data();
    const [bu, bv] = [new Uint8Array(u.buffer, u.byteOffset, u.byteLength), new Uint8Array(v.buffer, v.byteOffset, v.byteLength)];
    assert.equal(bv.length, bu.length, `${what} ${names[i]}: length`);
    const j = bu.findIndex((byte, k) => byte !== bv[k]);
    assert.equal(j, -1, `${what} ${names[i]}: element ${Math.floor(j / u.BYTES_PER_ELEMENT)} is ${v[Math.floor(j / u.BYTES_PER_ELEMENT)]} then ${u[Math.floor(j / u.BYTES_PER_ELEMENT)]}`);
  }
}

test('cpu: two runs of the same steps from the same state are bit-for-bit identical', async () => {
  const { state, batch, step } = await trainingFixture('cpu');
  const f = jit(step, { backend: 'cpu', name: 'deterministicStep' });
  const twoSteps = async () => {
    const first = await f(state, batch);
    return f(first.state, batch);
  };
  const a = await twoSteps();
  const b = await twoSteps();
  await assertBitIdentical('step', a, b);
});

test('cpu: float64 is refused with an error naming the reference backend', async () => {
  const x64 = tensor([1, 2], [2], 'float64');
  await assert.rejects(jit((x: Tensor) => mul(x, 2), { backend: 'cpu' })(x64), /reference/);
  await assert.rejects(realize([cast(tensor([1, 2]), 'float64')], 'cpu'), /reference/);
  assert.throws(() => cpuBackend().upload(new Float64Array(2), [2], 'float64'), /reference/);
});

test('cpu: a training step gives the same bits on 1, 2 and 3 threads', async () => {
  const { state, step } = await trainingFixture();
  // 64 patches, so that elementwise kernels are large enough to be split over threads.
  const b = 64;
  const images = new Float32Array(b * 8 * 8).map((_, i) => Math.cos(i * 0.13));
  const corners = Int32Array.from({ length: b }, (_, i) => (i * 3) % 9);
  const batch = stepBatch(images, [b, 1, 8, 8], corners, corners.map((c) => 8 - c));
  const { program, lifted } = buildProgram('threadsStep', leaves(step(state, batch)));
  const results: ArrayLike<number>[][] = [];
  for (const threads of [1, 2, 3]) {
    const runtime = createRuntime({ threads });
    try {
      const be = new CpuBackend(runtime);
      const exe = be.compile(program);
      const ins = await Promise.all(lifted.map(async (t) => be.upload(await t.data(), t.shape, t.dtype)));
      const outs = be.run(exe, ins, ins.map(() => false));
      results.push(await Promise.all(outs.map((o) => be.download(o))));
    } finally {
      runtime.dispose();
    }
  }
  const bits = (a: ArrayLike<number>): string => Buffer.from(new Float64Array(Array.from(a)).buffer).toString('hex');
  results.slice(1).forEach((r, t) => r.forEach((o, i) => assert.equal(bits(o), bits(results[0]![i]!), `output ${i} on ${t + 2} threads`)));
});
