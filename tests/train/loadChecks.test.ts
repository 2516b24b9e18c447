/**
 * What loading a checkpoint refuses (issue 16, items 6 and 11): non-finite weights, tensor names that
 * are not exactly the model's, manifests nested deep enough to overflow a stack, folders that are not
 * checkpoints; and `tessera sample` checking its numbers and naming what it could not use.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { test } from 'node:test';
import { isLeft } from 'fp-ts/lib/Either.js';
import '../../index.ts';
import { tensor } from '../../core/ops.ts';
import { flatten, unflatten, type PyTree } from '../../core/pytree.ts';
import type { Tensor } from '../../core/tensor.ts';
import { MANIFEST, loadCheckpoint, saveCheckpoint } from '../../train/checkpoint.ts';
import { resolveConfig } from '../../train/config.ts';
import { orThrow } from '../../train/errors.ts';
import { buildModel, initState } from '../../train/step.ts';

const root = join(import.meta.dirname, '..', '..');
const config = orThrow(resolveConfig({
  backend: 'cpu',
  model: { kind: 'patch', model_channels: 4, channel_mult: [1, 2], num_blocks: 1, attn_resolutions: [], dropout: 0 },
  data: { name: 'mnist', resolution: 8 },
  train: { batch_size: 2, steps: 1 },
}));

/** `tree` with the leaf at flatten index `at` replaced. */
function withLeaf<T extends PyTree<Tensor>>(tree: T, at: number, f: (leaf: Tensor) => Tensor): T {
  const { leaves, def } = flatten(tree);
  return unflatten(def, leaves.map((l, i) => (i === at ? f(l as Tensor) : l))) as T;
}

async function checkpointWith(ema: PyTree<Tensor>): Promise<{ run: string; dir: string }> {
  const run = await mkdtemp(join(tmpdir(), 'tessera-load-'));
  const state = initState(buildModel(config), config);
  const dir = await saveCheckpoint(run, {
    step: 1, config, prngKey: tensor([0, 1], [2], 'int32'), dataPosition: { position: 0 },
    trees: { params: state.params, ema, optimizer: state.opt, counters: { imagesSeen: state.imagesSeen } },
  });
  return { run, dir };
}

async function tessera(...args: string[]): Promise<{ code: number; stderr: string }> {
  try {
    await promisify(execFile)(process.execPath, [join(root, 'bin', 'tessera.js'), ...args], { cwd: root, timeout: 120_000 });
    return { code: 0, stderr: '' };
  } catch (e) {
    const err = e as { code: number; stderr: string };
    return { code: err.code, stderr: err.stderr };
  }
}

test('load: a NaN in a checkpointed tensor is refused by loadCheckpoint and by `tessera sample`, naming the tensor and count', { timeout: 120_000 }, async () => {
  const ema = initState(buildModel(config), config).ema;
  const names = flatten(ema).leaves.length;
  const bad = withLeaf(ema, names - 1, (l) => tensor(Array.from({ length: l.size }, (_, i) => (i % 2 === 0 ? NaN : 0)), l.shape, l.dtype));
  const { run, dir } = await checkpointWith(bad);
  try {
    const loaded = await loadCheckpoint(dir);
    assert.ok(isLeft(loaded), 'a checkpoint with NaN weights loads');
    const last = flatten(bad).leaves.at(-1) as Tensor;
    assert.match(loaded.left.message, new RegExp(`^${join(dir, 'ema.safetensors').replace(/[.]/g, '\\.')}: 1 tensor\\(s\\) hold non-finite values.*has ${Math.ceil(last.size / 2)} non-finite of ${last.size} values \\(${Math.ceil(last.size / 2)} NaN; the first at element 0\\)`));
    const cli = await tessera('sample', '--checkpoint', dir, '--n', '1', '--steps', '1', '--out', join(run, 'x.png'));
    assert.equal(cli.code, 1);
    assert.match(cli.stderr, /ema\.safetensors: 1 tensor\(s\) hold non-finite values/);
  } finally {
    await rm(run, { recursive: true, force: true });
  }
});

test('load: an extra tensor unknown to the model is refused by `tessera sample`, listing it', { timeout: 120_000 }, async () => {
  const ema = initState(buildModel(config), config).ema as PyTree<Tensor>;
  const { run, dir } = await checkpointWith({ ...(ema as Record<string, PyTree<Tensor>>), stowaway: tensor([1, 2], [2]) });
  try {
    const cli = await tessera('sample', '--checkpoint', dir, '--n', '1', '--steps', '1', '--out', join(run, 'x.png'));
    assert.equal(cli.code, 1);
    assert.match(cli.stderr, /ema: the tensor names do not match the model's: 1 unknown to the model \('stowaway'\)/);
  } finally {
    await rm(run, { recursive: true, force: true });
  }
});

test('load: a manifest nested 200,000 deep is refused with its file name, not a stack overflow', async () => {
  const { run, dir } = await checkpointWith(initState(buildModel(config), config).ema);
  try {
    const deep = 200_000;
    await writeFile(join(dir, MANIFEST), `{"format":"tessera-checkpoint","config":${'['.repeat(deep)}${']'.repeat(deep)}}`);
    const loaded = await loadCheckpoint(dir);
    assert.ok(isLeft(loaded));
    assert.match(loaded.left.message, new RegExp(`^${join(dir, MANIFEST).replace(/[.]/g, '\\.')}: JSON nested deeper than 64 levels at byte \\d+$`));
  } finally {
    await rm(run, { recursive: true, force: true });
  }
});

test('load: a missing folder, a file and a run folder are each named for what they are', async () => {
  const { run, dir } = await checkpointWith(initState(buildModel(config), config).ema);
  try {
    const message = async (d: string) => {
      const r = await loadCheckpoint(d);
      assert.ok(isLeft(r));
      return r.left.message;
    };
    assert.equal(await message(join(run, 'nope')), `${join(run, 'nope')}: no such checkpoint folder`);
    assert.equal(await message(join(dir, 'ema.safetensors')), `${join(dir, 'ema.safetensors')}: not a folder (a checkpoint is a checkpoint-<step> folder)`);
    assert.match(await message(run), /: a run folder, not a checkpoint folder \(it holds checkpoint-<step> folders; pass one of them\)$/);
  } finally {
    await rm(run, { recursive: true, force: true });
  }
});

test('tessera sample: numbers are range-checked before loading, and a missing checkpoint is named', { timeout: 120_000 }, async () => {
  const missing = join(tmpdir(), 'tessera-no-such-checkpoint');
  const zeroN = await tessera('sample', '--checkpoint', missing, '--n', '0');
  assert.equal(zeroN.code, 2, 'a wrong command line exits 2');
  assert.match(zeroN.stderr, /^tessera: --n: expected an integer in \[1, 1024\], got '0'$/m);
  const zeroSteps = await tessera('sample', '--checkpoint', missing, '--steps', '0');
  assert.match(zeroSteps.stderr, /^tessera: --steps: expected an integer in \[1, 1000\], got '0'$/m);
  const badSeed = await tessera('sample', '--checkpoint', missing, '--seed', '-1');
  assert.match(badSeed.stderr, /^tessera: --seed: expected an integer in \[0, 2147483647\], got '-1'$/m);
  const nothing = await tessera('sample', '--checkpoint', missing);
  assert.equal(nothing.code, 1);
  assert.match(nothing.stderr, new RegExp(`^tessera: ${missing}: no such checkpoint folder$`, 'm'));
});
