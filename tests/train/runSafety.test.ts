/**
 * Runs that protect themselves (issue 16): divergence is recoverable from a checkpoint that truly
 * is good; a resume takes the changes it may take and refuses the others by name; a corrupt newest
 * checkpoint falls back to an older intact one; torn log lines and bad files are named; a failed
 * checkpoint write leaves earlier ones intact and says how much room it needs.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { appendFile, mkdtemp, readdir, readFile, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import '../../index.ts';
import { flatten, jit, tensor, unflatten, type PyTree, type Tensor } from '../../core/index.ts';
import { writeAndSync, type FileWriter } from '../../train/atomicFile.ts';
import { checkpointDir, latestCheckpoint, listCheckpoints, loadCheckpoint } from '../../train/checkpoint.ts';
import { orThrow } from '../../train/errors.ts';
import { readJsonFile, readJsonLines } from '../../train/runFiles.ts';
import { trainRun } from '../../train/run.ts';
import { buildModel, initState, stepBatch, stepFunction } from '../../train/step.ts';
import { leafValues, tinyConfig } from './tinyRun.ts';

const temp = (name: string) => mkdtemp(join(tmpdir(), `tessera-${name}-`));

/** Collects what a run says instead of printing it. */
function listener() {
  const heard: string[] = [];
  return { heard, say: (m: string) => void heard.push(m) };
}

test('divergence: the error names a checkpoint that truly is good, and resuming it with a lower lr trains on', async () => {
  const dir = await temp('diverge');
  const { heard, say } = listener();
  const error = await trainRun({ runDir: dir, config: tiny1e10(), gridSamples: 0, say }).then(() => undefined, (e: Error) => e);
  assert.ok(error !== undefined, 'lr = 1e10 must diverge');
  const m = /^step (\d+): (the loss is (NaN|Infinity|-Infinity)|\d+ values of the new parameters and optimizer state are not finite); stopping\. The last good checkpoint is (\S+) \(step (\d+)\)/.exec(error.message);
  assert.ok(m !== null, error.message);
  const named = m[4]!;
  // The named checkpoint is the newest one there (a plain --resume picks it) and holds finite, sane weights.
  assert.equal(await latestCheckpoint(dir), named);
  const ck = orThrow(await loadCheckpoint(named));
  const values = (await leafValues(ck.trees['params'])).flat();
  assert.ok(values.every((v) => Number.isFinite(v) && Math.abs(v) < 1e3), `max |param| ${Math.max(...values.map(Math.abs))}`);
  const resumed = await trainRun({ runDir: dir, config: tinyConfig({ checkpoint_every: 1 }), gridSamples: 0, resume: true, say });
  assert.equal(resumed.step, 6);
  assert.ok(resumed.log.every((l) => Number.isFinite(l.loss)));
  assert.ok(heard.some((h) => h.includes('train.lr: 10000000000 -> 0.01')), heard.join('\n'));
});

test('divergence: a resumed checkpoint that proves bad is set aside as .diverged, and the error names an older good one', async () => {
  const dir = await temp('diverge-resume');
  // The run's final checkpoint is committed without a next step to vouch for it.
  await trainRun({ runDir: dir, config: tinyConfig({ lr: 1e10, checkpoint_every: 1, steps: 2 }), gridSamples: 0 });
  assert.deepEqual((await listCheckpoints(dir)).map((c) => c.step), [1, 2]);
  const { heard, say } = listener();
  await assert.rejects(trainRun({ runDir: dir, config: tinyConfig({ checkpoint_every: 1 }), gridSamples: 0, resume: true, say }),
    /^TrainingError: step 3: the loss is NaN; stopping\. The last good checkpoint is .*checkpoint-000000001 \(step 1\)/);
  assert.match(heard.join('\n'), /training from .*checkpoint-000000002 diverges \(step 3: the loss is NaN\); kept as .*checkpoint-000000002\.diverged/);
  assert.deepEqual((await listCheckpoints(dir)).map((c) => c.step), [1]);
  assert.equal((await trainRun({ runDir: dir, config: tinyConfig({ checkpoint_every: 1 }), gridSamples: 0, resume: true, say })).step, 6);
});

function tiny1e10() {
  return tinyConfig({ lr: 1e10, checkpoint_every: 1 });
}

test('divergence: the step counts non-finite values of the new state in one scalar', async () => {
  const config = tinyConfig();
  const model = buildModel(config);
  const state = initState(model, config);
  // An infinite second moment keeps the loss and the update finite (m / sqrt(inf) = 0) but not the state.
  const [adamState] = (state.opt as PyTree<Tensor>[]).slice(-1) as [{ nu: PyTree<Tensor> }];
  const nu = flatten(adamState.nu);
  const poisoned = { ...state, opt: (state.opt as PyTree<Tensor>[]).map((s) => (s === adamState ? { ...adamState, nu: rebuild(nu, Infinity) } : s)) };
  const batch = stepBatch(new Float32Array(2 * 64).fill(0.5), [2, 1, 8, 8], new Int32Array(2), new Int32Array(2));
  const step = jit(stepFunction(model, config), { backend: 'cpu' });
  const clean = await step(state, batch);
  assert.equal(await clean.metrics.nonFinite.item(), 0);
  const bad = await step(poisoned, batch);
  assert.ok(Number.isFinite(await bad.metrics.loss.item()));
  assert.equal(await bad.metrics.nonFinite.item(), nu.leaves[0]!.size);
});

/** The tree with its first leaf filled with `value`. */
function rebuild(flat: ReturnType<typeof flatten<Tensor>>, value: number): PyTree<Tensor> {
  return unflatten(flat.def, flat.leaves.map((l, i) => (i === 0 ? tensor(new Float32Array(l.size).fill(value), l.shape) : l)));
}

test('resume: changeable fields are taken, logged and recorded; fixed ones are refused by name', async () => {
  const dir = await temp('changes');
  await trainRun({ runDir: dir, config: tinyConfig(), gridSamples: 0, stopAfter: 3 });
  const { heard, say } = listener();
  await assert.rejects(
    trainRun({ runDir: dir, config: tinyConfig({ batch_size: 4, seed: 3 }), gridSamples: 0, resume: true, say }),
    /resuming cannot change train\.batch_size: 2 -> 4, train\.seed: 0 -> 3 .*Fields a resume may change: backend, train\.lr/,
  );
  // A refused resume changes nothing: the checkpoint stays where it was, nothing was set aside.
  assert.deepEqual((await listCheckpoints(dir)).map((c) => c.step), [3]);
  const changed = tinyConfig({ lr: 0.005, grad_clip: 1, steps: 9, checkpoint_every: 2 });
  const result = await trainRun({ runDir: dir, config: changed, gridSamples: 0, resume: true, say });
  assert.equal(result.step, 9);
  assert.deepEqual((await listCheckpoints(dir)).map((c) => c.step), [3, 4, 6, 8, 9]);
  const said = heard.find((h) => h.startsWith('resuming from'));
  assert.match(said ?? '', /train\.checkpoint_every: 3 -> 2, train\.grad_clip: \(unset\) -> 1, train\.lr: 0\.01 -> 0\.005, train\.steps: 6 -> 9/);
  const history = (await readJsonLines(join(dir, 'history.jsonl'), assert.fail)) as { event: string; changes?: { path: string }[] }[];
  assert.deepEqual(history.map((h) => h.event), ['start', 'end', 'end', 'resume', 'end']);
  assert.deepEqual(history[3]!.changes!.map((c) => c.path), ['train.checkpoint_every', 'train.grad_clip', 'train.lr', 'train.steps']);
  // Removing the clip again carries the optimizer state the other way.
  const back = await trainRun({ runDir: dir, config: tinyConfig({ lr: 0.005, steps: 10, checkpoint_every: 2 }), gridSamples: 0, resume: true, say });
  assert.equal(back.step, 10);
  // From the newest checkpoint, written with clipping: none was set aside as unreadable.
  assert.ok(heard.some((h) => h.startsWith(`resuming from ${checkpointDir(dir, 9)} (step 9)`)), heard.join('\n'));
  assert.ok(!heard.some((h) => h.includes('cannot be resumed')), heard.join('\n'));
});

test('resume: a corrupt newest checkpoint is named and set aside, and the run resumes from the newest intact one', async () => {
  const config = tinyConfig({ steps: 9 });
  const straight = await trainRun({ runDir: await temp('straight'), config, gridSamples: 0 });
  const dir = await temp('corrupt');
  await trainRun({ runDir: dir, config, gridSamples: 0, stopAfter: 6 });
  const newest = checkpointDir(dir, 6);
  const file = join(newest, 'params.safetensors');
  const bytes = await readFile(file);
  bytes[bytes.length - 1] = bytes[bytes.length - 1]! ^ 0xff;
  await writeFile(file, bytes);
  await assert.rejects(trainRun({ runDir: dir, config, gridSamples: 0, resume: true, strict: true, say: () => undefined }),
    /checkpoint-000000006 cannot be resumed: .*params\.safetensors: SHA-256 .* Stopping \(--strict\); without --strict the run would try the older .*checkpoint-000000003/);
  const { heard, say } = listener();
  const resumed = await trainRun({ runDir: dir, config, gridSamples: 0, resume: true, say });
  assert.match(heard.join('\n'), /checkpoint-000000006 cannot be resumed: .*SHA-256/);
  assert.match(heard.join('\n'), /resuming from the older .*checkpoint-000000003 \(step 3\); kept .*checkpoint-000000006 as .*checkpoint-000000006\.corrupt/);
  // The bad one is kept, byte for byte, and the run reaches the uninterrupted run's tensors.
  assert.deepEqual(await readFile(join(`${newest}.corrupt`, 'params.safetensors')), bytes);
  assert.deepEqual(await leafValues(resumed.state.params), await leafValues(straight.state.params));
  assert.deepEqual(await leafValues(resumed.state.opt), await leafValues(straight.state.opt));
});

test('run files: a torn final log line is dropped with a warning; bad files are named', async () => {
  const dir = await temp('torn');
  const config = tinyConfig();
  await trainRun({ runDir: dir, config, gridSamples: 0, stopAfter: 3 });
  await appendFile(join(dir, 'log.jsonl'), '{"step":4,"loss":0.1');
  const { heard, say } = listener();
  const resumed = await trainRun({ runDir: dir, config, gridSamples: 0, resume: true, say });
  assert.equal(resumed.step, 6);
  assert.match(heard.join('\n'), /log\.jsonl: dropping its last line 4, torn by an interrupted write/);
  assert.deepEqual((await readFile(join(dir, 'log.jsonl'), 'utf8')).trim().split('\n').map((l) => (JSON.parse(l) as { step: number }).step), [1, 2, 3, 4, 5, 6]);
  // No temporary files are left behind by the atomic writes.
  assert.deepEqual((await readdir(dir)).filter((f) => f.includes('.tmp')), []);

  // A damaged line before the last one is an error naming the file and the line.
  await writeFile(join(dir, 'bad.jsonl'), '{"a":1}\n{"a":\n{"a":3}\n');
  await assert.rejects(readJsonLines(join(dir, 'bad.jsonl'), assert.fail), /bad\.jsonl: line 2 is not valid JSON/);
  await writeFile(join(dir, 'config.json'), '');
  await assert.rejects(readJsonFile(join(dir, 'config.json')), /config\.json: not valid JSON \(the file is empty\)/);
});

test('a failed checkpoint write stops the run naming the folder and the bytes needed; earlier checkpoints stay intact', async () => {
  const dir = await temp('enospc');
  const config = tinyConfig();
  await trainRun({ runDir: dir, config, gridSamples: 0, stopAfter: 3 });
  const before = await readFile(join(checkpointDir(dir, 3), 'params.safetensors'));
  let calls = 0;
  const diskFull: FileWriter = async (path, bytes) => {
    if (++calls === 2) {
      await writeFile(path, bytes.subarray(0, 100));
      throw Object.assign(new Error(`ENOSPC: no space left on device, write`), { code: 'ENOSPC' });
    }
    await writeAndSync(path, bytes);
  };
  await assert.rejects(trainRun({ runDir: dir, config, gridSamples: 0, resume: true, writeFile: diskFull, say: () => undefined }),
    /cannot write checkpoint .*checkpoint-000000006 \(at .*\.safetensors\): no space left on the device \(ENOSPC\)\. The checkpoint needs about \d+ bytes \(\d+\.\d MiB\) in \S+, \d+ bytes .* are free there\. Its incomplete folder and temporary files were removed; earlier checkpoints are intact\./);
  assert.deepEqual((await readdir(dir)).filter((f) => f.startsWith('checkpoint') || f.includes('.tmp')), ['checkpoint-000000003']);
  assert.deepEqual(await readFile(join(checkpointDir(dir, 3), 'params.safetensors')), before);
  assert.equal(orThrow(await loadCheckpoint(checkpointDir(dir, 3))).step, 3);
});
