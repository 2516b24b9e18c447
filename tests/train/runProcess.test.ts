/**
 * Trainers as processes: one trainer per run folder (a live one's lock stops a second trainer, a
 * killed one's lock is taken over), and SIGINT/SIGTERM stop a run cleanly (first signal: finish the
 * step, checkpoint, exit 130/143; second signal: exit at once).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, writeFile } from 'node:fs/promises';
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import '../../index.ts';
import { latestCheckpoint, listCheckpoints } from '../../train/checkpoint.ts';
import { trainRun } from '../../train/run.ts';
import { LOCK_FILE } from '../../train/runLock.ts';
import { leafValues, tinyConfig, tinyUserConfig } from './tinyRun.ts';
import { startTrainer, waitForLogLines } from './trainerProcess.ts';

const temp = (name: string) => mkdtemp(join(tmpdir(), `tessera-${name}-`));
const long = { steps: 100_000, checkpoint_every: 1 };

test('a second trainer on a run folder stops with a clear error; the lock of a killed one is taken over', async () => {
  const dir = await temp('lock');
  const first = await startTrainer(dir, tinyUserConfig(long));
  await waitForLogLines(dir, 2);
  const lock = JSON.parse(await readFile(join(dir, LOCK_FILE), 'utf8')) as { pid: number; host: string };
  assert.equal(lock.pid, first.child.pid);
  assert.equal(lock.host, hostname());
  await assert.rejects(
    trainRun({ runDir: dir, config: tinyConfig(long), gridSamples: 0, resume: true, stopAfter: 1, say: () => undefined }),
    new RegExp(`${dir} is in use by another trainer \\(process ${first.child.pid} on host ${hostname()}, since .*\\); wait for it to finish or stop it first`),
  );
  first.child.kill('SIGKILL');
  assert.equal((await first.exited).code, 137);
  const heard: string[] = [];
  const second = await trainRun({ runDir: dir, config: tinyConfig(long), gridSamples: 0, resume: true, stopAfter: 1, say: (m) => void heard.push(m) });
  assert.match(heard.join('\n'), new RegExp(`taking over the lock of ${dir}: it was held by process ${first.child.pid} on host .*, which no longer runs`));
  assert.ok(second.step >= 2);
  // Released at the end; a lock that is not ours is never taken.
  await assert.rejects(readFile(join(dir, LOCK_FILE)), /ENOENT/);
  await writeFile(join(dir, LOCK_FILE), JSON.stringify({ pid: 1, host: 'elsewhere', started: 'then', token: 'x' }));
  await assert.rejects(trainRun({ runDir: dir, config: tinyConfig(long), gridSamples: 0, resume: true, stopAfter: 1 }),
    /is in use by another trainer \(process 1 on host elsewhere, since then\); this host .* cannot tell whether it still runs\. Remove .*lock if it does not/);
});

test('SIGINT finishes the step, writes a checkpoint and exits 130; the resumed run matches an uninterrupted one bit for bit', async () => {
  const dir = await temp('sigint');
  const trainer = await startTrainer(dir, tinyUserConfig({ steps: 100_000, checkpoint_every: 1000 }));
  await waitForLogLines(dir, 3);
  trainer.child.kill('SIGINT');
  const { code, stdout, stderr } = await trainer.exited;
  assert.equal(code, 130, stderr);
  assert.match(stderr, /SIGINT received: finishing the current step and writing a checkpoint \(send Ctrl-C again to exit at once\)/);
  const m = /stopped by SIGINT after step (\d+); checkpoint (\S+)\. Continue with: tessera train --run (\S+) --resume/.exec(stdout);
  assert.ok(m !== null, stdout);
  const stoppedAt = Number(m[1]);
  assert.equal(m[2], await latestCheckpoint(dir));
  assert.deepEqual((await listCheckpoints(dir)).map((c) => c.step), [stoppedAt]);
  const resumed = await trainRun({ runDir: dir, config: tinyConfig({ steps: stoppedAt + 2, checkpoint_every: 1000 }), gridSamples: 0, resume: true, say: () => undefined });
  const straight = await trainRun({ runDir: await temp('straight'), config: tinyConfig({ steps: stoppedAt + 2, checkpoint_every: 1000 }), gridSamples: 0 });
  assert.deepEqual(await leafValues(resumed.state.params), await leafValues(straight.state.params));
  assert.deepEqual(await leafValues(resumed.state.opt), await leafValues(straight.state.opt));
});

test('a second SIGTERM exits at once with 143, leaving the lock free', async () => {
  const dir = await temp('sigterm');
  const trainer = await startTrainer(dir, tinyUserConfig(long));
  // Both during start-up (data, compilation), so that the first step cannot finish in between.
  await trainer.printed(/tessera: training/);
  trainer.child.kill('SIGTERM');
  await trainer.printed(/SIGTERM received/);
  trainer.child.kill('SIGTERM');
  const { code, stderr } = await trainer.exited;
  assert.equal(code, 143, stderr);
  assert.match(stderr, /SIGTERM again: exiting at once; the newest complete checkpoint in .* is intact/);
  await assert.rejects(readFile(join(dir, LOCK_FILE)), /ENOENT/);
});
