/**
 * `model.kind: "msdiff"` through the run loop and the command line: the config's rules, a run that
 * rotates over the scales and checkpoints one count per scale, a resume that continues bit for bit,
 * and `tessera sample` and `tessera eval` on its checkpoint.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { PNG } from 'pngjs';
import '../../index.ts';
import { latestCheckpoint, loadCheckpoint } from '../../train/checkpoint.ts';
import { loadConfig, resolveConfig } from '../../train/config.ts';
import { orThrow } from '../../train/errors.ts';
import { evalCommand } from '../../train/eval/cli.ts';
import { trainingMethod } from '../../train/method.ts';
import { trainRun } from '../../train/run.ts';
import { leafValues, tinyUserConfig } from './tinyRun.ts';
import { repoRoot } from './trainerProcess.ts';

const msdiffUser = (model: Record<string, unknown> = {}, train: Record<string, unknown> = {}) => {
  const base = tinyUserConfig(train);
  return { ...base, model: { ...base.model, kind: 'msdiff', attn_resolutions: [], ...model } };
};
const msdiffConfig = (model: Record<string, unknown> = {}, train: Record<string, unknown> = {}) => orThrow(resolveConfig(msdiffUser(model, train), {}));

test('msdiff configs: two Haar levels by default; the levels must leave the coarsest network room, and only msdiff takes them', async () => {
  assert.equal(msdiffConfig().model.haar_levels, 2);
  const shipped = orThrow(await loadConfig(join(repoRoot, 'train', 'configs', 'msdiff.json')));
  assert.equal(trainingMethod(shipped).description, 'multi-scale non-uniform diffusion (3 scales, 32 to 8 px)');
  const problems = (user: unknown) => {
    const r = resolveConfig(user, {});
    return r._tag === 'Left' ? r.left.lines.join('\n') : '';
  };
  // 8 px, three Haar levels: the coarsest network would see 1x1 images, and channel_mult [1, 2] halves once.
  assert.match(problems(msdiffUser({ haar_levels: 3 })), /^model\.haar_levels: 3 Haar levels take the image to 1x1, where the coarsest network must still fit the UNet/m);
  assert.match(problems({ ...tinyUserConfig(), model: { ...tinyUserConfig().model, haar_levels: 2 } }), /^model\.haar_levels: only used when model\.kind is "msdiff", not "patch"/m);
  assert.match(problems(msdiffUser({ label_dim: 10 })), /^model\.label_dim: model\.kind "msdiff" is unconditional here/m);
  assert.match(problems(msdiffUser({ attn_resolutions: [16] })), /^model\.attn_resolutions\[0\]: no level has resolution 16 \(the levels are 8, 4, 2, 1\)/m);
});

test('an msdiff run rotates over the scales, checkpoints a count per scale, samples grids, and resumes bit for bit', async () => {
  const config = msdiffConfig({}, { sample_every: 6 });
  const a = await mkdtemp(join(tmpdir(), 'tessera-msdiff-a-'));
  const b = await mkdtemp(join(tmpdir(), 'tessera-msdiff-b-'));
  try {
    const straight = await trainRun({ runDir: a, config, gridSamples: 4, sampleSteps: 3 });
    assert.equal(straight.step, 6);
    assert.ok(straight.log.every((l) => Number.isFinite(l.loss) && l.loss > 0 && l.patch === '8x8'));
    assert.deepEqual(straight.log.map((l) => l.images_seen), [2, 4, 6, 8, 10, 12]);
    const ck = orThrow(await loadCheckpoint(join(a, 'checkpoint-000000006')));
    // Batch 2, six steps over three scales: four images each.
    assert.deepEqual(await leafValues(ck.trees['counters']), [[4, 4, 4]]);
    assert.equal((ck.trees['params'] as { scales: unknown[] }).scales.length, 3);
    const grid = PNG.sync.read(await readFile(join(a, 'samples-0000006.png')));
    assert.ok(grid.width > 0 && grid.height > 0);

    await trainRun({ runDir: b, config, gridSamples: 0, stopAfter: 4 });
    const resumed = await trainRun({ runDir: b, config, gridSamples: 0, resume: true });
    assert.equal(resumed.step, 6);
    assert.deepEqual(await leafValues(resumed.state.params), await leafValues(straight.state.params));
    assert.deepEqual(await leafValues(resumed.state.ema), await leafValues(straight.state.ema));
    assert.deepEqual(await leafValues(resumed.state.opt), await leafValues(straight.state.opt));
    assert.deepEqual(resumed.log.map((l) => l.loss), straight.log.map((l) => l.loss));

    // A run of another kind cannot resume it: the model's kind is a fixed field.
    await assert.rejects(trainRun({ runDir: b, config: orThrow(resolveConfig(tinyUserConfig(), {})), gridSamples: 0, resume: true }), /model\.kind/);
  } finally {
    await rm(a, { recursive: true, force: true });
    await rm(b, { recursive: true, force: true });
  }
});

test('tessera sample and tessera eval take an msdiff checkpoint: its sampler, its default steps', { timeout: 300_000 }, async () => {
  const dir = await mkdtemp(join(tmpdir(), 'tessera-msdiff-cli-'));
  try {
    const config = msdiffConfig({}, { steps: 3 });
    assert.equal(trainingMethod(config).defaultSampleSteps, 60);
    await trainRun({ runDir: dir, config, gridSamples: 0 });
    const out = join(dir, 'grid.png');
    const { stdout } = await promisify(execFile)(process.execPath, ['--import', 'tsx', join(repoRoot, 'train', 'cli.ts'), 'sample', '--run', dir, '--n', '4', '--steps', '6', '--out', out], { cwd: repoRoot, timeout: 120_000 });
    assert.match(stdout, /wrote .*grid\.png/);
    const png = PNG.sync.read(await readFile(out));
    assert.ok(png.width >= 2 * 64, `a 2x2 grid of 8x8 images drawn at least 64 px: ${png.width} px wide`);

    const ck = (await latestCheckpoint(dir))!;
    const json = join(dir, 'eval.json');
    await evalCommand(['--checkpoint', ck, '--samples', '8', '--steps', '6', '--real', '40', '--out', json, '--backend', 'cpu']);
    const r = JSON.parse(await readFile(json, 'utf8')) as { sampler: { name: string; steps: number }; images_seen: number; fd: number };
    assert.deepEqual([r.sampler.name, r.sampler.steps, r.images_seen], ['msdiff-euler-maruyama', 6, 6]);
    assert.ok(Number.isFinite(r.fd));
    assert.ok((await readdir(dir)).includes('grid.png'));
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
