/**
 * `model.kind: "maskdm"` through the run loop and the command line: the config's rules, a masked
 * run with checkpoints that resumes bit for bit (with the cosine schedule), fine-tuning from a
 * pre-trained checkpoint loaded non-strictly (missing and unexpected names listed, shapes checked),
 * and `tessera sample` and `tessera eval` on a maskdm checkpoint.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { PNG } from 'pngjs';
import '../../index.ts';
import { latestCheckpoint, loadCheckpoint } from '../../train/checkpoint.ts';
import { loadConfig, resolveConfig, UVIT_DEFAULTS } from '../../train/config.ts';
import { orThrow } from '../../train/errors.ts';
import { evalCommand } from '../../train/eval/cli.ts';
import { trainingMethod } from '../../train/method.ts';
import { trainRun } from '../../train/run.ts';
import { leafValues, tinyUserConfig } from './tinyRun.ts';
import { repoRoot } from './trainerProcess.ts';

/** 8x8 MNIST, 2-pixel patches (a 4x4 grid of 16 tokens), a U-ViT of width 16 and 1 + 1 + 1 blocks. */
const maskdmUser = (uvit: Record<string, unknown> = {}, train: Record<string, unknown> = {}) => {
  const base = tinyUserConfig();
  return {
    backend: 'cpu',
    model: { kind: 'maskdm', uvit: { patch_size: 2, embed_dim: 16, depth: 3, num_heads: 2, ...uvit } },
    data: base.data,
    train: { ...base.train, mask: { kind: 'block', ratio: 0.5, block_size: 2 }, ...train },
  };
};
const maskdmConfig = (uvit: Record<string, unknown> = {}, train: Record<string, unknown> = {}) => orThrow(resolveConfig(maskdmUser(uvit, train), {}));
const problems = (user: unknown) => {
  const r = resolveConfig(user, {});
  return r._tag === 'Left' ? r.left.lines : [];
};

test('maskdm configs: U-ViT defaults filled in, masks checked on the patch grid, maskdm fields only for maskdm, SongUNet fields refused', async () => {
  const c = maskdmConfig({ depth: undefined });
  assert.deepEqual(c.model.uvit, { ...UVIT_DEFAULTS, patch_size: 2, embed_dim: 16, num_heads: 2 });
  assert.deepEqual(c.train.mask, { kind: 'block', ratio: 0.5, block_size: 2 });
  assert.equal(trainingMethod(c).description, "MaskDM's U-ViT (16 patches of 2x2 px, block masks at ratio 0.5, 8 of 16 patches visible)");
  assert.equal(trainingMethod(maskdmConfig({}, { mask: { kind: 'patch', ratio: 0 } })).description, "MaskDM's U-ViT (16 patches of 2x2 px, no mask)");
  const pre = orThrow(await loadConfig(join(repoRoot, 'train', 'configs', 'maskdm-pretrain.json')));
  assert.equal(trainingMethod(pre).description, "MaskDM's U-ViT (64 patches of 4x4 px, block masks at ratio 0.9, 8 of 64 patches visible)");
  const fine = orThrow(await loadConfig(join(repoRoot, 'train', 'configs', 'maskdm-finetune.json')));
  assert.deepEqual([fine.train.lr_schedule, fine.train.init_from, trainingMethod(fine).sampler], ['cosine', 'runs/maskdm-pretrain', 'ddim']);

  const base = maskdmUser();
  const withTrain = (train: Record<string, unknown>) => ({ ...base, train: { ...base.train, ...train } });
  assert.deepEqual(problems({ ...base, model: { ...base.model, model_channels: 8, label_dim: 10, uvit: { patch_size: 3, embed_dim: 15, num_heads: 2 } } }), [
    'model.model_channels: a SongUNet setting, not used when model.kind is "maskdm" (set model.uvit instead)',
    'model.label_dim: model.kind "maskdm" is unconditional here, got 10',
    'model.uvit.patch_size: 3 does not divide the image side 8',
    'model.uvit.embed_dim: must be even (the time token starts as a sinusoidal embedding), got 15',
    'model.uvit.num_heads: 15 channels (model.uvit.embed_dim) do not split into 2 heads',
  ]);
  assert.deepEqual(problems({ ...base, data: { ...base.data, resolution: [8, 16] } }), ['data.resolution: model.kind "maskdm" takes square images, got [8,16]']);
  assert.deepEqual(problems(withTrain({ mask: { kind: 'block', ratio: 1, block_size: 3 } })), [
    'train.mask.ratio: must be below 1 (some patches must stay visible), got 1',
    "train.mask.block_size: 3 does not divide the patch grid's side 4 (8 px / model.uvit.patch_size 2)",
  ]);
  assert.deepEqual(problems(withTrain({ mask: { kind: 'crop', ratio: 0.5 } })), [
    'train.mask.ratio: not used by a "crop" mask (only by "patch" and "block" masks)',
    "train.mask.crop_size: required for a \"crop\" mask (the visible crop's side in patches)",
  ]);
  assert.deepEqual(problems(withTrain({ mask: { kind: 'patch', block_size: 2 } })), [
    'train.mask.block_size: not used by a "patch" mask (only by "block" masks)',
    'train.mask.ratio: required for a "patch" mask (the fraction of patches masked, in [0, 1))',
  ]);
  assert.deepEqual(problems(withTrain({ mask: { kind: 'holes', ratio: 2 } })), [
    'train.mask.kind: expected "patch" | "block" | "crop", got "holes"',
    'train.mask.ratio: expected number >= 0 and <= 1, got 2',
  ]);
  const patchUser = tinyUserConfig({ warmup_images: 10, mask: { kind: 'patch', ratio: 0.5 } });
  assert.deepEqual(problems({ ...patchUser, model: { ...patchUser.model, uvit: { depth: 3 } } }), [
    'model.uvit: only used when model.kind is "maskdm", not "patch"',
    'train.mask: only used when model.kind is "maskdm", not "patch"',
    'train.warmup_images: only used when train.lr_schedule is "cosine", not "edm"',
  ]);
  const msdiff = tinyUserConfig({ lr_schedule: 'cosine' });
  assert.deepEqual(problems({ ...msdiff, model: { ...msdiff.model, kind: 'msdiff', attn_resolutions: [] } }), [
    'train.lr_schedule: "cosine" decays over the run\'s optimizer steps, but model.kind "msdiff" gives each scale its own; use "edm"',
  ]);
});

test('a maskdm run checkpoints, samples grids, and resumes bit for bit (cosine schedule, gradient clipping)', async () => {
  const config = maskdmConfig({}, { lr_schedule: 'cosine', warmup_images: 4, grad_clip: 1, sample_every: 6 });
  const a = await mkdtemp(join(tmpdir(), 'tessera-maskdm-a-'));
  const b = await mkdtemp(join(tmpdir(), 'tessera-maskdm-b-'));
  try {
    const straight = await trainRun({ runDir: a, config, gridSamples: 4, sampleSteps: 3 });
    assert.equal(straight.step, 6);
    assert.ok(straight.log.every((l) => Number.isFinite(l.loss) && l.loss > 0 && l.patch === '8x8'));
    assert.deepEqual(straight.log.map((l) => l.images_seen), [2, 4, 6, 8, 10, 12]);
    const ck = orThrow(await loadCheckpoint(join(a, 'checkpoint-000000006')));
    assert.deepEqual(await leafValues(ck.trees['counters']), [[12]]);
    assert.ok('in_blocks' in (ck.trees['params'] as object) && 'final_layer' in (ck.trees['ema'] as object));
    const grid = PNG.sync.read(await readFile(join(a, 'samples-0000006.png')));
    assert.ok(grid.width > 0 && grid.height > 0);

    await trainRun({ runDir: b, config, gridSamples: 0, stopAfter: 4 });
    const resumed = await trainRun({ runDir: b, config, gridSamples: 0, resume: true });
    assert.equal(resumed.step, 6);
    assert.deepEqual(await leafValues(resumed.state.params), await leafValues(straight.state.params));
    assert.deepEqual(await leafValues(resumed.state.ema), await leafValues(straight.state.ema));
    assert.deepEqual(await leafValues(resumed.state.opt), await leafValues(straight.state.opt));
    assert.deepEqual(resumed.log.map((l) => l.loss), straight.log.map((l) => l.loss));
    // The mask defines the experiment: a resume may not change it.
    await assert.rejects(trainRun({ runDir: b, config: maskdmConfig({}, { lr_schedule: 'cosine', warmup_images: 4, grad_clip: 1, mask: { kind: 'patch', ratio: 0.5 } }), gridSamples: 0, resume: true }), /train\.mask\.block_size: 2 -> \(unset\), train\.mask\.kind: "block" -> "patch"/);
  } finally {
    await rm(a, { recursive: true, force: true });
    await rm(b, { recursive: true, force: true });
  }
});

test('fine-tuning starts from a pre-trained checkpoint\'s EMA, loaded by name: missing and unexpected names listed, shapes checked', async () => {
  const pre = await mkdtemp(join(tmpdir(), 'tessera-maskdm-pre-'));
  const fine = await mkdtemp(join(tmpdir(), 'tessera-maskdm-fine-'));
  const refused = await mkdtemp(join(tmpdir(), 'tessera-maskdm-refused-'));
  try {
    // Pre-trained with a time MLP and without the final convolution; fine-tuned the other way round.
    await trainRun({ runDir: pre, config: maskdmConfig({ mlp_time_embed: true, final_conv: false }, { steps: 3 }), gridSamples: 0 });
    const preEma = orThrow(await loadCheckpoint((await latestCheckpoint(pre))!)).trees['ema'] as Record<string, unknown>;
    const heard: string[] = [];
    const tune = maskdmConfig({}, { init_from: pre, mask: { kind: 'block', ratio: 0 }, lr_schedule: 'cosine', steps: 2 });
    const started = await trainRun({ runDir: fine, config: tune, gridSamples: 0, stopAfter: 0, say: (m) => heard.push(m) });
    assert.equal(started.step, 0);
    assert.match(heard.join('\n'), /initialised from .*checkpoint-000000003 \(step 3\): 42 of the model's 44 tensors loaded; 2 missing from the checkpoint, kept at their initial values: final_layer\.bias, final_layer\.weight; 4 in the checkpoint not used by the model, ignored: time_embed\.0\.bias, time_embed\.0\.weight, time_embed\.2\.bias, time_embed\.2\.weight/);
    const state = started.state as { params: Record<string, unknown>; ema: Record<string, unknown> };
    for (const name of ['pos_embed', 'in_blocks', 'decoder_pred']) {
      assert.deepEqual(await leafValues(state.params[name]), await leafValues(preEma[name]), name);
      assert.deepEqual(await leafValues(state.ema[name]), await leafValues(preEma[name]), name);
    }
    const history = (await readFile(join(fine, 'history.jsonl'), 'utf8')).trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
    const init = history[0]!['init_from'] as { missing: string[]; unexpected: string[]; loaded: number };
    assert.deepEqual([init.loaded, init.missing, init.unexpected.length], [42, ['final_layer.bias', 'final_layer.weight'], 4]);

    // A tensor of another shape is refused, named with both shapes; so is a checkpoint that shares no name.
    await assert.rejects(
      trainRun({ runDir: join(refused, 'a'), config: maskdmConfig({ embed_dim: 8 }, { init_from: pre }), gridSamples: 0 }),
      /train\.init_from: .*ema: 'decoder_pred\.weight' is float32 \[4,16\] in the checkpoint, the model expects float32 \[4,8\]; .* and 36 more/,
    );
    await assert.rejects(
      trainRun({ runDir: join(refused, 'b'), config: orThrow(resolveConfig(tinyUserConfig({ init_from: pre }), {})), gridSamples: 0 }),
      /none of the \d+ tensors of the model is in .*a checkpoint of another kind of model\?/,
    );

    // A fine-tuning run resumes from its own checkpoints: init_from is not read again.
    await rm(fine, { recursive: true, force: true });
    await trainRun({ runDir: fine, config: tune, gridSamples: 0, stopAfter: 1, say: () => undefined });
    await rm(pre, { recursive: true, force: true });
    const done = await trainRun({ runDir: fine, config: tune, gridSamples: 0, resume: true });
    assert.equal(done.step, 2);
  } finally {
    for (const dir of [pre, fine, refused]) await rm(dir, { recursive: true, force: true });
  }
});

test('tessera sample and tessera eval take a maskdm checkpoint: DDIM, 100 steps by default', { timeout: 300_000 }, async () => {
  const dir = await mkdtemp(join(tmpdir(), 'tessera-maskdm-cli-'));
  try {
    const config = maskdmConfig({}, { steps: 3 });
    assert.equal(trainingMethod(config).defaultSampleSteps, 100);
    await trainRun({ runDir: dir, config, gridSamples: 0 });
    const out = join(dir, 'grid.png');
    const { stdout } = await promisify(execFile)(process.execPath, ['--import', 'tsx', join(repoRoot, 'train', 'cli.ts'), 'sample', '--run', dir, '--n', '4', '--steps', '5', '--out', out], { cwd: repoRoot, timeout: 120_000 });
    assert.match(stdout, /wrote .*grid\.png/);
    const png = PNG.sync.read(await readFile(out));
    assert.ok(png.width >= 2 * 64, `a 2x2 grid of 8x8 images drawn at least 64 px: ${png.width} px wide`);

    const json = join(dir, 'eval.json');
    await evalCommand(['--checkpoint', (await latestCheckpoint(dir))!, '--samples', '8', '--steps', '5', '--real', '40', '--out', json, '--backend', 'cpu']);
    const r = JSON.parse(await readFile(json, 'utf8')) as { sampler: { name: string; steps: number }; images_seen: number; fd: number };
    assert.deepEqual([r.sampler.name, r.sampler.steps, r.images_seen], ['ddim', 5, 6]);
    assert.ok(Number.isFinite(r.fd));
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
