/**
 * Gradient checkpointing of a SongUNet training step: with every UNet block rematerialised, the cpu
 * backend's liveness memory plan for the whole step (forward, backward, Adam, EMA) needs fewer
 * bytes, and the gradient has the same bits. Also: the frozen Fourier frequencies stay put through
 * a step without any update mask (they sit behind stopGradient).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { cpuBackend, registerCpuBackend, type CpuExecutable } from '../../backends/cpu/index.ts';
import { writesOf } from '../../backends/kernel/memory.ts';
import { valueAndGrad } from '../../autodiff/index.ts';
import { buildProgram, flatten, jit, leafPaths, random, realize, reshape, type PyTree, type Tensor } from '../../core/index.ts';
import { patchModel, type PatchModelParams } from '../../models/precond.ts';
import { resolveConfig, type TrainingConfig } from '../../train/config.ts';
import { orThrow } from '../../train/errors.ts';
import { edmLoss } from '../../train/loss.ts';
import { initState, stepBatch, stepFunction, type Model } from '../../train/step.ts';

registerCpuBackend();

const leaves = (tree: unknown): Tensor[] => flatten(tree as PyTree<Tensor>).leaves;

function setup(size: { channels: number; resolution: number; batch: number; dropout: number; attention: boolean; mult?: number[]; blocks?: number }) {
  const config: TrainingConfig = orThrow(resolveConfig({
    model: {
      kind: 'patch', model_channels: size.channels, channel_mult: size.mult ?? [1, 2, 2], num_blocks: size.blocks ?? 2, attn_resolutions: size.attention ? [size.resolution / 2] : [],
      dropout: size.dropout, channel_mult_emb: 2, embedding_type: 'fourier', channel_mult_noise: 2,
    },
    data: { name: 'mnist', resolution: size.resolution },
    train: { batch_size: size.batch, steps: 10, lr: 0.01 },
  }, {}));
  const m = config.model;
  // train/step.ts's buildModel, with the network's blocks rematerialised or not.
  const model = (remat: boolean): Model => patchModel({
    imgResolution: size.resolution, imgChannels: 1, useCoords: true, sigmaData: config.train.sigma_data,
    network: {
      modelChannels: m.model_channels, channelMult: m.channel_mult, numBlocks: m.num_blocks, attnResolutions: m.attn_resolutions,
      dropout: m.dropout, channelMultEmb: m.channel_mult_emb, channelMultNoise: m.channel_mult_noise, embeddingType: m.embedding_type,
      remat,
    },
  });
  const b = size.batch;
  const side = size.resolution / 2;
  const images = new Float32Array(b * side * side).map((_, i) => Math.sin(i * 0.37));
  const starts = Int32Array.from({ length: b }, (_, i) => (i * 3) % side);
  const batch = stepBatch(images, [b, 1, side, side], starts, starts.map((v) => side - 1 - v));
  return { config, model, batch };
}

/** Peak bytes of intermediates held at once when the executable's kernels run in order (liveness, no slot reuse losses). */
function peakLiveBytes(exe: CpuExecutable): number {
  const { program } = exe;
  const last = new Map<number, number>();
  exe.steps.forEach(({ step }, t) => step.reads.forEach((n) => last.set(n, t)));
  const bytes = (n: number) => 4 * program.nodes[n]!.shape.reduce((a, c) => a * c, 1);
  const dying = new Map<number, number[]>();
  let live = 0;
  let peak = 0;
  exe.steps.forEach(({ step }, t) => {
    for (const w of writesOf(step)) {
      live += bytes(w);
      const end = last.get(w) ?? t;
      dying.set(end, [...(dying.get(end) ?? []), w]);
    }
    peak = Math.max(peak, live);
    for (const n of dying.get(t) ?? []) live -= bytes(n);
  });
  return peak;
}

test('remat: a SongUNet training step with every block rematerialised plans fewer bytes on the cpu backend', async () => {
  const { config, model, batch } = setup({ channels: 8, resolution: 32, batch: 16, dropout: 0, attention: false });
  const state = initState(model(false), config);
  await realize(leaves(state), 'cpu');
  const compile = (remat: boolean): CpuExecutable => {
    const out = stepFunction(model(remat), config)(state, batch);
    return cpuBackend().compile(buildProgram('trainStep', leaves(out)).program);
  };
  const plain = compile(false);
  const rematerialised = compile(true);
  // Measured: plans 25.4 MB plain and 20.0 MB with remat (0.79); peak live intermediates 21.1 and
  // 14.0 MB (0.67), and the slots 1.04x and 1.17x of them. (Before slots were sized largest tensor
  // first, the plans were 27.5 and 26.2 MB, 0.95: slots grown in kernel order held small tensors.)
  assert.ok(rematerialised.memoryPlanBytes < 0.85 * plain.memoryPlanBytes, `memory plan: ${rematerialised.memoryPlanBytes} bytes with remat, ${plain.memoryPlanBytes} without`);
  const [p, r] = [peakLiveBytes(plain), peakLiveBytes(rematerialised)];
  const slots = (exe: CpuExecutable) => exe.memory.slotBytes.reduce((a, b) => a + b, 0);
  assert.ok(slots(plain) < 1.1 * p && slots(rematerialised) < 1.25 * r, `slots: ${slots(plain)} and ${slots(rematerialised)} bytes for peaks of ${p} and ${r}`);
  assert.ok(r < 0.75 * p, `peak live intermediates: ${r} bytes with remat, ${p} without`);
});

test('remat: the gradient of a SongUNet loss gives the same bits on the cpu backend (dropout on)', async () => {
  const { config, model, batch } = setup({ channels: 4, resolution: 16, batch: 2, dropout: 0.2, attention: true });
  const state = initState(model(false), config);
  await realize(leaves(state), 'cpu');
  const lossAndGrad = (remat: boolean) => (params: PatchModelParams, images: Tensor) => {
    const net = model(remat);
    const key = random.key(3);
    const [b] = images.shape as [number];
    return valueAndGrad((p: PatchModelParams) =>
      edmLoss((x, sigma) => net.apply(p, x, reshape(sigma, [b]), { train: true, key }), images, random.key(4)))(params);
  };
  const plain = await jit(lossAndGrad(false), { backend: 'cpu' })(state.params, batch.images);
  const rem = await jit(lossAndGrad(true), { backend: 'cpu' })(state.params, batch.images);
  const a = leaves(plain);
  const b = leaves(rem);
  assert.equal(a.length, b.length);
  for (let i = 0; i < a.length; i++) assert.deepEqual(Array.from(await b[i]!.data()), Array.from(await a[i]!.data()), `leaf ${i}`);
});

test('the Fourier frequencies do not move in a training step, without any update mask', async () => {
  const { config, model, batch } = setup({ channels: 4, resolution: 16, batch: 2, dropout: 0, attention: false, mult: [1, 2], blocks: 1 });
  const state = initState(model(false), config);
  await realize(leaves(state), 'cpu');
  const freqs = Array.from(await state.params.model.map_noise!.freqs.data());
  const out = await jit(stepFunction(model(false), config), { backend: 'cpu' })(state, batch);
  assert.ok(Number.isFinite(await out.metrics.loss.item()));
  assert.deepEqual(Array.from(await out.state.params.model.map_noise!.freqs.data()), freqs);
  // Adam's moments: zero for the frequencies (no gradient reaches them), not for the layer after them.
  const opt = flatten(out.state.opt as PyTree<Tensor>);
  const moments = leafPaths(opt.def).flatMap((path, i) => (/\.mu\.model\.map_(noise\.freqs|layer0\.weight)$/.test(path) ? [[path, opt.leaves[i]!] as const] : []));
  assert.equal(moments.length, 2, moments.map(([p]) => p).join());
  for (const [path, m] of moments) {
    const zero = Array.from(await m.data()).every((v) => v === 0);
    assert.equal(zero, path.endsWith('freqs'), `${path} all zero: ${zero}`);
  }
});
