/**
 * The packed training state (`train/packed.ts`): params, EMA and Adam's moments as one flat tensor
 * each. Packing and unpacking give the named trees back; a packed step computes what the unpacked
 * step computes, element for element, in far fewer kernels; the run loop carries the packed form.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { cpuBackend, registerCpuBackend, type CpuExecutable } from '../../backends/cpu/index.ts';
import { buildProgram, flatten, leafPaths, realize, tensor, type PyTree, type Tensor } from '../../core/index.ts';
import { resolveConfig, type TrainingConfig } from '../../train/config.ts';
import { orThrow } from '../../train/errors.ts';
import { trainingMethod } from '../../train/method.ts';
import { pack, packLayout, packTree, unpack, unpackTree } from '../../train/packed.ts';
import { buildModel, compileStep, initState, stepBatch, stepFunction, type TrainState } from '../../train/step.ts';

registerCpuBackend();

const leaves = (tree: unknown): Tensor[] => flatten(tree as PyTree<Tensor>).leaves;

function setup(kind: 'patch' | 'edm', gradClip?: number) {
  const config: TrainingConfig = orThrow(resolveConfig({
    model: { kind, model_channels: 8, channel_mult: [1, 2], num_blocks: 1, attn_resolutions: [8], dropout: 0.1 },
    data: { name: 'mnist', resolution: 16 },
    train: { batch_size: 4, steps: 10, lr: 0.01, ...(gradClip === undefined ? {} : { grad_clip: gradClip }) },
    backend: 'cpu',
  }, {}));
  const model = buildModel(config);
  const b = 4;
  const side = kind === 'patch' ? 8 : 16;
  const batch = (seed: number) => {
    const images = new Float32Array(b * side * side).map((_, i) => Math.sin(i * 0.37 + seed));
    const starts = Int32Array.from({ length: b }, (_, i) => ((i + seed) * 3) % (16 - side + 1));
    return stepBatch(images, [b, 1, side, side], starts, starts.map((v) => 16 - side - v));
  };
  return { config, model, batch };
}

test('packed: a tree packs into one flat tensor and unpacks to the same named values; an optimizer state packs its moments only', async () => {
  const { config, model } = setup('patch');
  const state = initState(model, config);
  const layout = packLayout(state.params);
  const flat = await pack(layout, state.params);
  assert.deepEqual(flat.shape, [layout.total]);
  const back = unpack(layout, flat);
  assert.deepEqual(leafPaths(flatten(back).def), leafPaths(flatten(state.params as PyTree<Tensor>).def));
  const [want, got] = [leaves(state.params), leaves(back)];
  for (let i = 0; i < want.length; i++) {
    assert.deepEqual(got[i]!.shape, want[i]!.shape);
    assert.deepEqual(await got[i]!.data(), await want[i]!.data(), `leaf ${leafPaths(flatten(back).def)[i]}`);
  }
  // [replaceNonFinite's count, Adam's { count, mu, nu }]: the counters stay, the moments become flat.
  const packedOpt = await packTree(layout, state.opt);
  const flatLeaves = leaves(packedOpt);
  assert.equal(flatLeaves.length, 4);
  assert.deepEqual(flatLeaves.map((l) => l.shape), [[], [], [layout.total], [layout.total]]);
  assert.deepEqual(leafPaths(flatten(unpackTree(layout, packedOpt, state.opt)).def), leafPaths(flatten(state.opt).def));
  assert.throws(() => unpack(layout, tensor(new Float32Array(3), [3])), /unpack: expected a flat tensor of \d+ elements, got shape \[3\]/);
  await assert.rejects(pack(layout, { w: tensor(new Float32Array(3), [3]) }), /pack: the tree is not shaped like the parameters/);
});

for (const [kind, clip] of [['patch', undefined], ['edm', undefined], ['patch', 1]] as const) {
  test(`packed: three ${kind} steps${clip === undefined ? '' : ' with a gradient clip'} give the unpacked steps' values, loss and counts`, async () => {
    const { config, model, batch } = setup(kind, clip);
    const method = trainingMethod(config);
    let plain = initState(model, config) as TrainState;
    // Its own copy: each step donates the state it is given (initState is deterministic in the seed).
    let carried = await method.carry!.to(initState(model, config) as never);
    const stepPlain = compileStep(model, config, 'cpu');
    const stepPacked = method.carry!.compileStep('cpu');
    for (let s = 0; s < 3; s++) {
      const a = await stepPlain(plain, batch(s));
      const b = await stepPacked(carried, { ...batch(s), step: s + 1 });
      for (const m of ['loss', 'replaced', 'nonFinite'] as const) assert.equal(await b.metrics[m].item(), await a.metrics[m].item(), `step ${s + 1}: ${m}`);
      plain = a.state;
      carried = b.state;
      const named = method.carry!.from(carried);
      const [want, got] = [leaves(plain), leaves(named)];
      assert.equal(got.length, want.length);
      await realize(got, 'cpu');
      for (let i = 0; i < want.length; i++) {
        const [w, g] = [await want[i]!.data(), await got[i]!.data()];
        // Without a clip, the same operations on the same values: equal bits (a gradient's -0 may come out +0,
        // which compares equal). The clip's global norm sums in another order: within a rounding.
        const far = Array.from(w).findIndex((x, j) => (clip === undefined ? x !== g[j] : Math.abs(x - g[j]!) > 1e-6 * Math.max(1, Math.abs(x))));
        assert.equal(far, -1, `step ${s + 1}, leaf ${i} [${want[i]!.shape.join(', ')}] at ${far}: ${w[far]} unpacked, ${g[far]} packed`);
      }
    }
  });
}

test('packed: three MaskDM steps (a U-ViT with block masks) give the unpacked steps\' values', async () => {
  const config = orThrow(resolveConfig({
    backend: 'cpu', model: { kind: 'maskdm', uvit: { patch_size: 2, embed_dim: 16, depth: 3, num_heads: 2 } },
    data: { name: 'mnist', resolution: 8 }, train: { batch_size: 2, steps: 6, lr: 0.01, mask: { kind: 'block', ratio: 0.5, block_size: 2 } },
  }, {}));
  const method = trainingMethod(config);
  let plain = method.initState();
  let carried = await method.carry!.to(method.initState());
  const [stepPlain, stepPacked] = [method.compileStep('cpu'), method.carry!.compileStep('cpu')];
  for (let s = 0; s < 3; s++) {
    const batch = { images: tensor(new Float32Array(2 * 64).map((_, i) => Math.sin(i * 0.3 + s)), [2, 1, 8, 8]), top: tensor(new Int32Array(2), [2], 'int32'), left: tensor(new Int32Array(2), [2], 'int32'), step: s + 1 };
    const a = await stepPlain(plain, batch);
    const b = await stepPacked(carried, batch);
    assert.equal(await b.metrics.loss.item(), await a.metrics.loss.item(), `step ${s + 1}: loss`);
    plain = a.state;
    carried = b.state;
    const [want, got] = [leaves(plain), leaves(method.carry!.from(carried))];
    await realize(got, 'cpu');
    for (let i = 0; i < want.length; i++) assert.deepEqual(Array.from(await got[i]!.data()), Array.from(await want[i]!.data()), `step ${s + 1}, leaf ${i}`);
  }
});

test('packed: the demo-sized step needs far fewer kernels packed than unpacked', async () => {
  const { config, model, batch } = setup('patch');
  const state = initState(model, config);
  await realize(leaves(state), 'cpu');
  const layout = packLayout(state.params);
  const carried = await trainingMethod(config).carry!.to(state as never);
  const kernels = (out: unknown) => (cpuBackend().compile(buildProgram('trainStep', leaves(out)).program) as CpuExecutable).steps.length;
  const unpacked = kernels(stepFunction(model, config)(state, batch(0)));
  const packed = kernels(stepFunction(model, config, layout)(carried as never, batch(0)));
  const count = leaves(state.params).length;
  // The per-parameter optimizer kernels (one per parameter, or more) and most non-finite counts go.
  assert.ok(packed < unpacked - count / 2, `${packed} kernels packed, ${unpacked} unpacked, for ${count} parameters`);
});
