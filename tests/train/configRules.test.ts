/**
 * Config rules across fields (issue 16, item 8): values that used to fail deep inside a run
 * ("Invalid typed array length", "concat: shapes differ", "kernel does not fit", NaN batch sizes)
 * or pass silently (attention at a resolution no level has) are refused when the config is resolved,
 * naming the field. And the other direction, as a property: a config the rules accept builds a
 * model whose forward pass shape-checks on every patch size the run would draw.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { isLeft } from 'fp-ts/lib/Either.js';
import { random, tensor } from '../../core/index.ts';
import { patchCoordinates } from '../../models/patch.ts';
import { loadConfig, resolveConfig } from '../../train/config.ts';
import { estimateTrainingMemory } from '../../train/configRules.ts';
import { ConfigError, orThrow } from '../../train/errors.ts';
import { defaultPatchSizes } from '../../train/patches.ts';
import { buildModel, initState } from '../../train/step.ts';
import { numRuns } from './fcRuns.ts';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const GiB = 2 ** 30;

function problems(user: unknown, totalMemory = Infinity): string[] {
  const r = resolveConfig(user, {}, { totalMemory });
  assert.ok(isLeft(r), 'expected the config to be rejected');
  assert.ok(r.left instanceof ConfigError);
  return [...r.left.lines];
}

test('config rules: the issue\'s nonsense values are refused by field', () => {
  assert.deepEqual(problems({ data: { resolution: 100_000 } }), ['data.resolution: expected integer in [2, 4096] or [height, width], got 100000']);
  assert.deepEqual(problems({ train: { patch_sizes: [3] } }), [
    'train.patch_sizes: expected 3 sizes [small, medium, full], drawn with probabilities (1-p)*2/5, (1-p)*3/5 and p = train.real_p, got 1',
    'train.patch_sizes[0]: 3 does not divide the image height 32',
  ]);
  assert.deepEqual(problems({ model: { channel_mult: [1, 2], attn_resolutions: [] }, data: { resolution: 7 } }), [
    "data.resolution: 7 does not fit the UNet: model.channel_mult's 2 levels halve the image 1 time(s), so every side must be a multiple of 2; use such a resolution or fewer levels",
  ]);
  assert.deepEqual(problems({ model: { channel_mult: [1, 1, 1, 1, 1], attn_resolutions: [] }, data: { resolution: 8 } }), [
    "data.resolution: 8 does not fit the UNet: model.channel_mult's 5 levels halve the image 4 time(s), so every side must be a multiple of 16; use such a resolution or fewer levels",
  ]);
  assert.deepEqual(problems({ model: { channel_mult: [1, 2], attn_resolutions: [5] }, data: { resolution: 8 } }), [
    'model.attn_resolutions[0]: no level has resolution 5 (the levels are 8, 4), so this attention would never run',
  ]);
});

test('config rules: patch sizes fit the image, the UNet and their probabilities', () => {
  assert.deepEqual(problems({ train: { patch_sizes: [16, 8, 32] } }), ['train.patch_sizes: expected sizes in increasing order [small, medium, full], got [16,8,32]']);
  assert.deepEqual(problems({ train: { patch_sizes: [8, 16, 16] } }), ['train.patch_sizes[2]: the full-size patch, drawn with probability train.real_p, must be the image height 32, got 16']);
  // Three levels need sides that are multiples of 4: a 2-pixel patch is not.
  assert.deepEqual(problems({ train: { patch_sizes: [2, 16, 32] } }), [
    "train.patch_sizes[0]: a 2x2 patch does not fit the UNet: model.channel_mult's 3 levels halve the image 2 time(s), so every side must be a multiple of 4",
  ]);
  // The defaults R/4, R/2, R at 12 pixels are 3, 6, 12.
  assert.deepEqual(problems({ model: { channel_mult: [1, 2, 2], attn_resolutions: [] }, data: { resolution: 12 } }), [
    "train.patch_sizes: the default sizes [3,6,12] (R/4, R/2, R) include 3, 6, which do not fit the UNet: model.channel_mult's 3 levels halve the image 2 time(s), so every side must be a multiple of 4; set train.patch_sizes, use fewer levels, or train on full images (train.real_p = 1)",
  ]);
  // ... which is fine for the EDM baseline, which trains on full images only.
  assert.ok(!isLeft(resolveConfig({ model: { kind: 'edm', channel_mult: [1, 2, 2], attn_resolutions: [] }, data: { resolution: 12 } }, {}, { totalMemory: Infinity })));
  assert.deepEqual(problems({ train: { batch_multiplier: { 8: 2, 12: 3 } } }), ['train.batch_multiplier.12: 12 is not one of the patch sizes drawn, [8,16,32], so it would never apply']);
});

test('config rules: a config far beyond the machine\'s memory names the field that weighs most', () => {
  assert.deepEqual(problems({ train: { batch_size: 4096 } }, 16 * GiB).map((l) => l.replace(/[\d.]+ GiB/g, 'X GiB')), [
    "train.batch_size: training would need roughly X GiB (activations X GiB for 4096 images of 32x32, attention X GiB, weights and optimizer state X GiB, dataset X GiB), more than this machine's X GiB of memory; lower train.batch_size",
  ]);
  // 2048-pixel MNIST: the always-on attention at the lowest level (512x512) dominates.
  assert.match(problems({ data: { resolution: 2048 }, model: { attn_resolutions: [] } }, 64 * GiB)[0]!, /^model\.attn_resolutions: training would need roughly/);
  // The estimate grows with what it should, and the defaults fit a 16 GiB machine.
  const at = (user: object) => estimateTrainingMemory(orThrow(resolveConfig(user, {}, { totalMemory: Infinity }))).total;
  assert.ok(at({}) < 16 * GiB);
  assert.ok(at({ train: { batch_size: 256 } }) > at({}));
  assert.ok(at({ model: { model_channels: 256 } }) > at({}));
  assert.ok(at({ data: { limit: 100 } }) < at({}));
});

test('config rules: a config file nested too deep is refused with its name', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'tessera-rules-'));
  try {
    const file = join(dir, 'deep.json');
    await writeFile(file, `{"model":${'['.repeat(100_000)}${']'.repeat(100_000)}}`);
    const r = await loadConfig(file);
    assert.ok(isLeft(r));
    assert.deepEqual(r.left.lines, [`${file}: JSON nested deeper than 64 levels at byte 72`]);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('config rules: every accepted config builds a model that takes each patch size the run draws', () => {
  // Drawn near the boundary: sides with few or many factors of two, attention at a level or not,
  // patch sizes from the divisors of the side or anything.
  const arbUser = fc.integer({ min: 1, max: 4 }).chain((levels) => fc.record({
    levels: fc.constant(levels),
    resolution: fc.oneof(
      { weight: 4, arbitrary: fc.integer({ min: 1, max: 3 }).map((k) => 2 ** (levels - 1) * 4 * k) },
      { weight: 1, arbitrary: fc.integer({ min: 2, max: 40 }) },
    ),
    channels: fc.oneof({ weight: 4, arbitrary: fc.constantFrom(4, 8) }, { weight: 1, arbitrary: fc.constantFrom(2, 6, 9) }),
    attnLevel: fc.option(fc.integer({ min: 0, max: levels - 1 }), { nil: undefined }),
    attnOther: fc.oneof({ weight: 6, arbitrary: fc.constant(undefined) }, { weight: 1, arbitrary: fc.integer({ min: 1, max: 40 }) }),
    kind: fc.constantFrom('patch', 'edm'),
    patchDivisors: fc.option(fc.tuple(fc.constantFrom(1, 2, 4, 3), fc.constantFrom(1, 2)), { nil: undefined }),
  })).map((u) => ({
    ...u,
    attn: [...(u.attnLevel === undefined ? [] : [u.resolution >> u.attnLevel]), ...(u.attnOther === undefined ? [] : [u.attnOther])],
    patchSizes: u.patchDivisors === undefined ? undefined
      : [Math.max(...u.patchDivisors), Math.min(...u.patchDivisors), 1].map((d) => Math.floor(u.resolution / d)),
  }));
  let accepted = 0;
  fc.assert(fc.property(arbUser, (u) => {
    const r = resolveConfig({
      model: { kind: u.kind, model_channels: u.channels, channel_mult: Array(u.levels).fill(1), num_blocks: 1, attn_resolutions: u.attn, dropout: 0, channel_mult_emb: 1 },
      data: { resolution: u.resolution },
      train: { batch_size: 1, ...(u.patchSizes === undefined ? {} : { patch_sizes: u.patchSizes }) },
    }, {}, { totalMemory: Infinity });
    if (isLeft(r)) return;
    accepted++;
    const config = r.right;
    const model = buildModel(config);
    const params = initState(model, config).params;
    const sizes = config.model.kind === 'edm' ? [u.resolution] : config.train.patch_sizes ?? defaultPatchSizes(u.resolution);
    for (const s of sizes) {
      // Graphs are built, not computed: a shape that does not fit throws here.
      const coords = patchCoordinates({ height: u.resolution, width: u.resolution }, 0, 0, s);
      const out = model.apply(params, random.normal(random.key(0), [1, 1, s, s]), tensor([1]), { coords });
      assert.deepEqual(out.shape, [1, 1, s, s]);
    }
    const levels = config.model.channel_mult.map((_, l) => u.resolution >> l);
    for (const a of config.model.attn_resolutions) assert.ok(levels.includes(a));
  }), { numRuns: Math.max(numRuns, 40) });
  assert.ok(accepted >= 5, `only ${accepted} generated configs were accepted`);
});
