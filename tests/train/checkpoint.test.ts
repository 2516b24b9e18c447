import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { isLeft } from 'fp-ts/lib/Either.js';
import { tensor } from '../../core/ops.ts';
import type { PyTree } from '../../core/pytree.ts';
import type { Tensor } from '../../core/tensor.ts';
import { writeAndSync, type FileWriter } from '../../train/atomicFile.ts';
import {
  MANIFEST, checkpointDir, jsonDifference, latestCheckpoint, listCheckpoints, loadCheckpoint, saveCheckpoint, type CheckpointState,
} from '../../train/checkpoint.ts';
import { orThrow } from '../../train/errors.ts';

const config = { model: { kind: 'patch', channel_mult: [2, 2] }, train: { lr: 1e-3 } };

function state(step: number): CheckpointState {
  const params = { 'enc.32x32_conv': { weight: tensor([step, 1, 2, 3], [2, 2]) }, blocks: [{ b: tensor([step], [1]) }] };
  return {
    step,
    config,
    prngKey: tensor([7, -3], [2], 'int32'),
    dataPosition: { position: step * 64, seed: 1 },
    trees: {
      params,
      ema: { 'enc.32x32_conv': { weight: tensor([0.5, 0.5, 0.5, step], [2, 2]) }, blocks: [{ b: tensor([0], [1]) }] },
      optimizer: { count: tensor([step], [1], 'int32'), mu: params },
    },
  };
}

async function tempRun(): Promise<string> {
  return mkdtemp(join(tmpdir(), 'tessera-ckpt-'));
}

async function leaf(tree: PyTree<Tensor> | undefined, ...path: (string | number)[]): Promise<number[]> {
  let node: unknown = tree;
  for (const p of path) node = (node as Record<string | number, unknown>)[p];
  return Array.from(await (node as Tensor).data());
}

test('checkpoint: save then load restores trees, step, key, data position and config', async () => {
  const run = await tempRun();
  const dir = await saveCheckpoint(run, state(1000));
  assert.equal(dir, checkpointDir(run, 1000));
  assert.equal(await latestCheckpoint(run), dir);
  const loaded = orThrow(await loadCheckpoint(dir, { expectedConfig: config }));
  assert.equal(loaded.step, 1000);
  assert.deepEqual(Array.from(await loaded.prngKey.data()), [7, -3]);
  assert.equal(loaded.prngKey.dtype, 'int32');
  assert.deepEqual(loaded.dataPosition, { position: 64000, seed: 1 });
  assert.deepEqual(loaded.config, config);
  assert.deepEqual(await leaf(loaded.trees.params, 'enc.32x32_conv', 'weight'), [1000, 1, 2, 3]);
  assert.deepEqual(await leaf(loaded.trees.ema, 'enc.32x32_conv', 'weight'), [0.5, 0.5, 0.5, 1000]);
  assert.deepEqual(await leaf(loaded.trees.optimizer, 'count'), [1000]);
  assert.deepEqual(await leaf(loaded.trees.optimizer, 'mu', 'blocks', 0, 'b'), [1000]);
  assert.deepEqual((await readdir(dir)).sort(), ['ema.safetensors', MANIFEST, 'optimizer.safetensors', 'params.safetensors']);
  await rm(run, { recursive: true });
});

test('checkpoint: keeps the newest K and ignores (then removes) incomplete folders', async () => {
  const run = await tempRun();
  for (const step of [100, 200, 300, 400]) await saveCheckpoint(run, state(step), { keep: 2 });
  assert.deepEqual((await listCheckpoints(run)).map((c) => c.step), [300, 400]);
  assert.deepEqual((await readdir(run)).sort(), ['checkpoint-000000300', 'checkpoint-000000400']);
  await saveCheckpoint(run, state(400), { keep: 2 }); // re-saving a step replaces it
  assert.equal(orThrow(await loadCheckpoint(checkpointDir(run, 400))).step, 400);
  await rm(run, { recursive: true });
});

test('checkpoint: a write that fails midway leaves the previous checkpoint intact and latest', async () => {
  const run = await tempRun();
  const good = await saveCheckpoint(run, state(100), { keep: 1 });
  let files = 0;
  // Writes half of the second file, then "crashes".
  const failing: FileWriter = async (path, bytes) => {
    if (++files === 2) {
      await writeFile(path, bytes.subarray(0, bytes.length >> 1));
      throw new Error('disk full (simulated)');
    }
    await writeAndSync(path, bytes);
  };
  await assert.rejects(saveCheckpoint(run, state(200), { keep: 1, writeFile: failing }), /checkpoint-000000200 .*disk full \(simulated\).*needs about \d+ bytes/);
  assert.equal(await latestCheckpoint(run), good);
  assert.equal(orThrow(await loadCheckpoint(good, { expectedConfig: config })).step, 100);
  // A failure the writer sees removes its incomplete folder, temp files included.
  assert.deepEqual((await readdir(run)).sort(), ['checkpoint-000000100']);
  // One it cannot see (the process killed midway) leaves an incomplete folder: ignored, not loadable.
  const partial = checkpointDir(run, 200);
  await mkdir(partial);
  await writeFile(join(partial, 'ema.safetensors'), 'half a file');
  assert.equal(await latestCheckpoint(run), good);
  const r = await loadCheckpoint(partial);
  assert.ok(isLeft(r));
  assert.match(r.left.message, /manifest\.json: missing \(the checkpoint is incomplete/);
  // The next successful save completes step 300 and removes both the old and the incomplete folder.
  await saveCheckpoint(run, state(300), { keep: 1 });
  assert.deepEqual((await readdir(run)).sort(), ['checkpoint-000000300']);
  await rm(run, { recursive: true });
});

test('checkpoint: a failure while writing the manifest leaves no manifest behind', async () => {
  const run = await tempRun();
  const failing: FileWriter = async (path, bytes) => {
    if (path.includes(MANIFEST)) throw new Error('crash before manifest');
    await writeAndSync(path, bytes);
  };
  await assert.rejects(saveCheckpoint(run, state(5), { writeFile: failing }), /crash before manifest/);
  assert.equal(await latestCheckpoint(run), undefined);
  assert.deepEqual(await readdir(run), []);
  await rm(run, { recursive: true });
});

test('checkpoint: corruption, truncation and config changes are reported by file and problem', async () => {
  const run = await tempRun();
  const dir = await saveCheckpoint(run, state(10));
  const params = join(dir, 'params.safetensors');
  const original = await readFile(params);
  const message = async (options = {}): Promise<string> => {
    const r = await loadCheckpoint(dir, options);
    assert.ok(isLeft(r));
    return r.left.message;
  };

  const flipped = Buffer.from(original);
  flipped[flipped.length - 1]! ^= 0xff;
  await writeFile(params, flipped);
  assert.match(await message(), new RegExp(`^${params.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}: SHA-256 [0-9a-f]{64} does not match the manifest's [0-9a-f]{64} \\(the file is corrupt or was modified\\)$`));

  await writeFile(params, original.subarray(0, 20));
  assert.match(await message(), /params\.safetensors: 20 bytes, but the manifest records \d+ \(truncated or replaced\)/);

  await rm(params);
  assert.match(await message(), /params\.safetensors: cannot be read/);
  await writeFile(params, original);

  assert.equal(await message({ expectedConfig: { ...config, train: { lr: 2e-4 } } }),
    `${join(dir, MANIFEST)}: the checkpoint was written with another config: train.lr: 0.001 in the checkpoint, 0.0002 expected`);
  assert.match(await message({ expectedConfig: { ...config, model: { kind: 'patch', channel_mult: [2] } } }), /model\.channel_mult: 2 elements vs 1 expected/);

  const manifest = JSON.parse(await readFile(join(dir, MANIFEST), 'utf8'));
  await writeFile(join(dir, MANIFEST), JSON.stringify({ ...manifest, prng_key: [1, 2 ** 31], extra: 1 }));
  const m = await message();
  assert.match(m, /manifest\.json: prng_key\[1\]: expected integer in \[-2147483648, 2147483647\], got 2147483648; extra: unknown key/);
  await writeFile(join(dir, MANIFEST), '{ not json');
  assert.match(await message(), /manifest\.json: not valid JSON/);
  await rm(run, { recursive: true });
});

test('checkpoint: invalid states are rejected before anything is written', async () => {
  const run = await tempRun();
  await assert.rejects(saveCheckpoint(run, { ...state(1), prngKey: tensor([1, 2, 3], [3], 'int32') }), /PRNG key must be an int32 tensor of shape \[2\]/);
  await assert.rejects(saveCheckpoint(run, { ...state(1), trees: { '../evil': {} } }), /tree name '\.\.\/evil'/);
  await assert.rejects(saveCheckpoint(run, { ...state(1), config: { f: () => 1 } }), /config is not plain JSON/);
  assert.deepEqual(await readdir(run), []);
  assert.equal(await latestCheckpoint(join(run, 'missing')), undefined);
  await rm(run, { recursive: true });
});

test('jsonDifference names the first differing path', () => {
  assert.equal(jsonDifference({ a: { b: [1, 2] } }, { a: { b: [1, 2] } }), undefined);
  assert.equal(jsonDifference({ a: { b: [1, 2] } }, { a: { b: [1, 3] } }), 'a.b[1]: 2 in the checkpoint, 3 expected');
  assert.equal(jsonDifference({ a: 1 }, { a: 1, z: 'x' }), 'z: nothing in the checkpoint, "x" expected');
  assert.equal(jsonDifference(1, '1'), '<root>: 1 in the checkpoint, "1" expected');
});
