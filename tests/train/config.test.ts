import assert from 'node:assert/strict';
import { mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { isLeft } from 'fp-ts/lib/Either.js';
import { DEFAULTS, loadConfig, mergeConfig, parseOverrides, resolveConfig } from '../../train/config.ts';
import { ConfigError, orThrow } from '../../train/errors.ts';

function problems(user: unknown, args: string[] = []): string[] {
  const overrides = orThrow(parseOverrides(args));
  const r = resolveConfig(user, overrides);
  assert.ok(isLeft(r), 'expected the config to be rejected');
  assert.ok(r.left instanceof ConfigError);
  return [...r.left.lines];
}

test('config: an empty config resolves to the defaults with derived fields filled', () => {
  const c = orThrow(resolveConfig({}));
  assert.equal(c.model.kind, 'patch');
  assert.equal(c.model.img_resolution, 32);
  assert.equal(c.model.img_channels, 1);
  assert.equal(c.data.name, 'mnist');
  assert.equal(c.train.steps, 100_000);
  assert.equal(c.train.real_p, 0.5);
  assert.equal(c.train.P_mean, -1.2);
  assert.equal(c.train.P_std, 1.2);
  assert.equal(c.train.sigma_data, 0.5);
  assert.equal(c.backend, undefined);
  assert.deepEqual(JSON.parse(JSON.stringify(c)), c, 'the resolved config is plain JSON');
});

test('config: file values and CLI overrides merge over defaults, later wins', () => {
  const c = orThrow(resolveConfig(
    { model: { attn_resolutions: [24] }, data: { name: 'folder', path: '/data/afhq', resolution: [48, 64], limit: 5000, xflip: true }, train: { lr: 2e-4, batch_multiplier: { 12: 4 } } },
    orThrow(parseOverrides(['--train.lr=1e-4', '--train.batch_multiplier.24=2', '--backend=webgpu', '--model.use_coords=false', '--data.skipCorrupt'])),
  ));
  assert.equal(c.train.lr, 1e-4);
  assert.deepEqual(c.train.batch_multiplier, { 12: 4, 24: 2 });
  assert.equal(c.backend, 'webgpu');
  assert.equal(c.model.use_coords, false);
  assert.equal(c.data.skipCorrupt, true);
  assert.deepEqual(c.model.img_resolution, [48, 64]);
  assert.equal(c.model.img_channels, 3);
  assert.equal(c.data.limit, 5000);
  // null removes a key so its default (or absence) applies.
  const d = orThrow(resolveConfig({ train: { steps: 10 } }, orThrow(parseOverrides(['--train.steps=null', '--train.duration_images=200000000']))));
  assert.equal(d.train.steps, undefined);
  assert.equal(d.train.duration_images, 2e8);
});

test('config: bad values are reported with their path, expected type and value', () => {
  assert.deepEqual(problems({}, ['--train.lr=fast']), ['train.lr: expected number > 0, got "fast"']);
  assert.deepEqual(problems({ model: { kind: 'unet', channel_mult: [1, 2.5] }, data: { resolution: [32, 'a'] }, train: { batch_size: 0, batch_multiplier: { x: 2 } } }), [
    'model.kind: expected "patch" | "edm" | "msdiff" | "maskdm", got "unet"',
    'model.channel_mult[1]: expected integer >= 1, got 2.5',
    'data.resolution[1]: expected integer in [2, 4096], got "a"',
    'train.batch_size: expected integer >= 1, got 0',
    'train.batch_multiplier.x: not a patch size (integer >= 1)',
  ]);
  assert.deepEqual(problems({ train: { batch_multiplier: 'sometimes', real_p: 1.5 }, backend: 'cuda' }), [
    'train.real_p: expected number >= 0 and <= 1, got 1.5',
    'train.batch_multiplier: expected "auto" or {patch size: multiplier}, got "sometimes"',
    'backend: expected "cpu" | "webgpu" | "reference", got "cuda"',
  ]);
  assert.deepEqual(problems({ data: 'mnist' }), ['data: expected data config, got "mnist"']);
  assert.deepEqual(problems([1]), ['<root>: expected a JSON object, got [1]']);
});

test('config: unknown keys are rejected with their path (typo protection)', () => {
  assert.deepEqual(problems({ data: { nmae: 'mnist' }, trian: {} }, ['--train.learning_rate=1']), [
    'data.nmae: unknown key',
    'train.learning_rate: unknown key',
    'trian: unknown key',
  ]);
});

test('config: rules between fields', () => {
  assert.deepEqual(problems({ data: { name: 'folder' } }), ['data.path: required when data.name is "folder"']);
  assert.deepEqual(problems({ data: { path: '/x' } }), ['data.path: only used when data.name is "folder", not "mnist"']);
  assert.deepEqual(problems({ model: { img_resolution: 64 } }), ['model.img_resolution: 64 does not match data.resolution 32']);
  assert.deepEqual(problems({ model: { img_channels: 3 } }), ["model.img_channels: 3 does not match the data's 1 channel(s)"]);
  assert.deepEqual(problems({ train: { steps: 5, duration_images: 10 } }), ['train.duration_images: set either train.steps or train.duration_images, not both']);
  assert.deepEqual(problems({ train: { patch_sizes: [8, 64] } }), ['train.patch_sizes[1]: 64 is larger than the image (32)']);
});

test('config: override parsing', () => {
  assert.deepEqual(orThrow(parseOverrides(['--a.b=1', '--a.c=[1,2]', '--d=hello world', '--e'])), { a: { b: 1, c: [1, 2] }, d: 'hello world', e: true });
  const bad = parseOverrides(['train.lr=1', '--=3', '--a..b=1']);
  assert.ok(isLeft(bad));
  assert.equal(bad.left.lines.length, 3);
  assert.deepEqual(mergeConfig({ a: { b: 1, c: 2 } }, { a: { c: null, d: 3 } }), { a: { b: 1, d: 3 } });
  assert.equal(DEFAULTS.model.kind, 'patch');
});

test('config: loadConfig reads a file and names it when it is not JSON', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'tessera-config-'));
  const good = join(dir, 'run.json');
  await writeFile(good, JSON.stringify({ train: { batch_size: 64 } }));
  const c = orThrow(await loadConfig(good, ['--train.seed=3']));
  assert.equal(c.train.batch_size, 64);
  assert.equal(c.train.seed, 3);
  const bad = join(dir, 'bad.json');
  await writeFile(bad, '{ "train": ');
  const r = await loadConfig(bad);
  assert.ok(isLeft(r));
  assert.match(r.left.lines[0]!, new RegExp(`^${bad.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}: not valid JSON`));
});
