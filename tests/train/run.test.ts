/**
 * End to end on the CPU backend with a tiny model: a short run writes its log, samples, loss plot
 * and checkpoints; resuming continues bit for bit; a non-finite loss stops the run and leaves the
 * last good checkpoint intact.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readdir, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import '../../index.ts';
import { latestCheckpoint, loadCheckpoint } from '../../train/checkpoint.ts';
import { orThrow } from '../../train/errors.ts';
import { trainRun } from '../../train/run.ts';
import { add, flatten, leafPaths, unflatten, type Tensor } from '../../core/index.ts';
import { resolveConfig } from '../../train/config.ts';
import { zeroFrozenMoments } from '../../train/resume.ts';
import { buildModel, initState } from '../../train/step.ts';
import { leafValues, tinyConfig, tinyUserConfig } from './tinyRun.ts';

const tiny = (over: Record<string, unknown> = {}) => tinyConfig({ sample_every: 6, ...over });

test('a short run writes log, sample grid, loss plot and checkpoints', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'tessera-run-'));
  const result = await trainRun({ runDir: dir, config: tiny(), gridSamples: 4, sampleSteps: 3 });
  assert.equal(result.step, 6);
  assert.equal(result.log.length, 6);
  assert.ok(result.log.every((l) => Number.isFinite(l.loss) && l.loss > 0));
  // Patch sizes 2, 4 and 8 at R = 8 all occur in a few steps, with the batch multiplier.
  assert.ok(new Set(result.log.map((l) => l.patch)).size >= 2, `patch sizes seen: ${result.log.map((l) => l.patch)}`);
  const files = await readdir(dir);
  for (const f of ['config.json', 'log.jsonl', 'loss.svg', 'samples-0000006.png', 'checkpoint-000000003', 'checkpoint-000000006']) {
    assert.ok(files.includes(f), `${f} in ${files}`);
  }
  const logLines = (await readFile(join(dir, 'log.jsonl'), 'utf8')).trim().split('\n');
  assert.equal(logLines.length, 6);
  const ck = orThrow(await loadCheckpoint(join(dir, 'checkpoint-000000006'), { expectedConfig: tiny() }));
  assert.equal(ck.step, 6);
  assert.deepEqual(await leafValues(ck.trees['params']), await leafValues(result.state.params));
});

test('training 2N steps equals training N, stopping, resuming and training N more, bit for bit', async () => {
  const config = tiny();
  const straight = await trainRun({ runDir: await mkdtemp(join(tmpdir(), 'tessera-a-')), config, gridSamples: 0 });
  const dir = await mkdtemp(join(tmpdir(), 'tessera-b-'));
  await trainRun({ runDir: dir, config, gridSamples: 0, stopAfter: 3 });
  const resumed = await trainRun({ runDir: dir, config, gridSamples: 0, resume: true });
  assert.equal(resumed.step, 6);
  assert.deepEqual(await leafValues(resumed.state.params), await leafValues(straight.state.params));
  assert.deepEqual(await leafValues(resumed.state.ema), await leafValues(straight.state.ema));
  assert.deepEqual(await leafValues(resumed.state.opt), await leafValues(straight.state.opt));
  assert.deepEqual(resumed.log.map((l) => l.loss), straight.log.map((l) => l.loss));
});

test('a run carrying its state packed, stopped and resumed, ends where an unpacked run does, bit for bit, with the same checkpoints', async () => {
  const config = tiny();
  const straight = await trainRun({ runDir: await mkdtemp(join(tmpdir(), 'tessera-u-')), config, gridSamples: 0, packState: false });
  const dir = await mkdtemp(join(tmpdir(), 'tessera-p-'));
  // A sample grid at the end reads the EMA through its views of the packed state.
  await trainRun({ runDir: dir, config, gridSamples: 4, sampleSteps: 2, stopAfter: 3, packState: true });
  const resumed = await trainRun({ runDir: dir, config, gridSamples: 0, resume: true, packState: true });
  assert.equal(resumed.step, 6);
  for (const k of ['params', 'ema', 'opt'] as const) assert.deepEqual(await leafValues(resumed.state[k]), await leafValues(straight.state[k]), k);
  assert.deepEqual(resumed.log.map((l) => l.loss), straight.log.map((l) => l.loss));
  const ck = orThrow(await loadCheckpoint(join(dir, 'checkpoint-000000006'), { expectedConfig: tiny() }));
  assert.deepEqual(await leafValues(ck.trees['params']), await leafValues(straight.state.params));
  assert.ok((await readdir(dir)).some((f) => /^samples-0000003\.png$/.test(f)));
});

test('checkpointAtSeconds writes and logs a checkpoint at the first step past each mark, counted over resumes', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'tessera-marks-'));
  const config = tiny({ checkpoint_every: 1000, log_every: 1000 });
  // Marks at a nanosecond (crossed by step 1) and far ahead (never): checkpoints at steps 1 and 3 (the last).
  const first = await trainRun({ runDir: dir, config, gridSamples: 0, stopAfter: 3, checkpointAtSeconds: [1e6, 1e-9] });
  assert.deepEqual(first.log.map((l) => l.step), [1, 3]);
  assert.deepEqual((await readdir(dir)).filter((f) => f.startsWith('checkpoint-')).sort(), ['checkpoint-000000001', 'checkpoint-000000003']);
  // Resumed, a mark the run has passed is not written again; one just past the resumed seconds is.
  const resumed = await trainRun({ runDir: dir, config, gridSamples: 0, resume: true, stopAfter: 2, checkpointAtSeconds: [1e-9, first.log.at(-1)!.seconds + 1e-9] });
  assert.deepEqual(resumed.log.map((l) => l.step), [1, 3, 4, 5]);
  assert.deepEqual((await readdir(dir)).filter((f) => f.startsWith('checkpoint-')).sort(), ['checkpoint-000000001', 'checkpoint-000000003', 'checkpoint-000000004', 'checkpoint-000000005']);
});

test('a non-finite loss stops the run with a clear message and the last good checkpoint intact', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'tessera-nan-'));
  await trainRun({ runDir: dir, config: tiny({ steps: 3 }), gridSamples: 0 });
  const good = await latestCheckpoint(dir);
  // sigma = exp(100 + ...) overflows float32: the loss is not finite at the first step.
  await assert.rejects(trainRun({ runDir: dir, config: tiny({ steps: 3, P_mean: 100 }), gridSamples: 0 }), /step 1: the loss is (NaN|Infinity); stopping\. The initial state already gives it/);
  assert.equal(await latestCheckpoint(dir), good);
  assert.ok(orThrow(await loadCheckpoint(good!)).step === 3);
});

test('resume refuses a checkpoint written with another config, naming the path', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'tessera-cfg-'));
  await trainRun({ runDir: dir, config: tiny({ steps: 3 }), gridSamples: 0 });
  await assert.rejects(trainRun({ runDir: dir, config: tiny({ steps: 3, P_mean: -1 }), gridSamples: 0, resume: true }), /resuming cannot change train\.P_mean: -1\.2 -> -1/);
});

test('a run traces its step once per batch shape, not once per step (the batch\'s step and position stay out of jit)', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'tessera-run-'));
  const warnings: string[] = [];
  const warn = console.warn;
  console.warn = (m: string) => warnings.push(String(m));
  try {
    await trainRun({ runDir: dir, config: tiny({ steps: 20, checkpoint_every: 100, sample_every: 100 }), gridSamples: 0 });
  } finally {
    console.warn = warn;
  }
  assert.deepEqual(warnings.filter((w) => /traced and compiled/.test(w)), []);
});

test('Fourier embedding: the frozen frequencies never move, resuming is bit for bit, and moments an old checkpoint holds for them are zeroed', async () => {
  const user = tinyUserConfig({ sample_every: 6 });
  const config = orThrow(resolveConfig({ ...user, model: { ...user.model, embedding_type: 'fourier' } }, {}));
  const straight = await trainRun({ runDir: await mkdtemp(join(tmpdir(), 'tessera-a-')), config, gridSamples: 0 });
  const dir = await mkdtemp(join(tmpdir(), 'tessera-b-'));
  await trainRun({ runDir: dir, config, gridSamples: 0, stopAfter: 3 });
  const resumed = await trainRun({ runDir: dir, config, gridSamples: 0, resume: true });
  assert.deepEqual(await leafValues(resumed.state.params), await leafValues(straight.state.params));
  assert.deepEqual(await leafValues(resumed.state.opt), await leafValues(straight.state.opt));
  const init = initState(buildModel(config), config);
  assert.deepEqual(await leafValues((straight.state.params as typeof init.params).model.map_noise), await leafValues(init.params.model.map_noise));

  // An optimizer state with nonzero moments everywhere: only the frozen frequencies' are zeroed.
  const { leaves, def } = flatten<Tensor>(init.opt);
  const paths = leafPaths(def);
  const zeroed = flatten<Tensor>(zeroFrozenMoments(unflatten(def, leaves.map((l) => add(l, 1))))).leaves;
  const frozen = paths.flatMap((p, i) => (p.endsWith('.map_noise.freqs') ? [i] : []));
  assert.equal(frozen.length, 2, `the two Adam moments of map_noise.freqs among ${paths.length} leaves`);
  for (let i = 0; i < leaves.length; i++) {
    const before = Array.from(await leaves[i]!.data());
    const after = Array.from(await zeroed[i]!.data());
    assert.deepEqual(after, before.map((v) => (frozen.includes(i) ? 0 : v + 1)), paths[i]);
  }
});
