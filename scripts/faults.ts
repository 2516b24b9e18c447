/**
 * `npm run test:faults`: interrupts a tiny training run (CPU backend) at random moments (during
 * start-up, or within 0.6 s of training), 20 times by default, each time with `kill -9` or SIGINT
 * at random, resumes it each time, lets the last resume finish, and checks that the final
 * checkpoint (params, EMA, optimizer state, counters) and every logged loss equal an uninterrupted
 * run's, bit for bit. Prints the figures: cycles, kills of each kind, kills during start-up, mean
 * resume time (process start to the first step done).
 *
 * Environment: FAULT_CYCLES (20), FAULT_STEPS (200 training steps), FAULT_SEED (random: the
 * moments are drawn from it, and it is printed so that a failure can be replayed).
 */
import assert from 'node:assert/strict';
import { mkdtemp, readdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import '../index.ts';
import { checkpointDir, listCheckpoints, loadCheckpoint } from '../train/checkpoint.ts';
import { orThrow } from '../train/errors.ts';
import { trainRun, type LogLine } from '../train/run.ts';
import { readJsonLines } from '../train/runFiles.ts';
import { tinyConfig, tinyUserConfig } from '../tests/train/tinyRun.ts';
import { startTrainer } from '../tests/train/trainerProcess.ts';

const cycles = Number(process.env.FAULT_CYCLES ?? 20);
const steps = Number(process.env.FAULT_STEPS ?? 200);
const seed = Number(process.env.FAULT_SEED ?? Math.floor(Math.random() * 2 ** 31));
const train = { steps, checkpoint_every: 1, keep_checkpoints: 3, log_every: 1 };

/** mulberry32: a small seeded generator, so that a failing sequence of moments can be replayed. */
function generator(s: number): () => number {
  let a = s >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
  };
}

const random = generator(seed);
const root = await mkdtemp(join(tmpdir(), 'tessera-faults-'));
console.log(`faults: ${cycles} cycles on a ${steps}-step tiny run (cpu backend), seed ${seed}, in ${root}`);

const t0 = performance.now();
const reference = await trainRun({ runDir: join(root, 'reference'), config: tinyConfig(train), gridSamples: 0, say: () => undefined });
const referenceSeconds = (performance.now() - t0) / 1000;
console.log(`faults: uninterrupted run: ${reference.step} steps in ${referenceSeconds.toFixed(1)} s`);

const runDir = join(root, 'interrupted');
const figures = { kill9: 0, sigint: 0, duringStartup: 0, finishedBeforeKill: 0, resumeMs: [] as number[] };
let finished = false;
let startupMs = 2500;
for (let cycle = 0; cycle < cycles && !finished; cycle++) {
  const resume = (await listCheckpoints(runDir)).length > 0;
  const began = performance.now();
  const trainer = await startTrainer(runDir, tinyUserConfig(train), resume ? ['--resume'] : []);
  const firstStep = trainer.printed(/^step \d+\//m, 120_000).then(() => performance.now() - began, () => undefined);
  // A moment during start-up (a quarter of the cycles), else within 0.6 s after the first step.
  const signal = random() < 0.5 ? 'SIGKILL' : 'SIGINT';
  const early = random() < 0.25;
  const delay = random() * (early ? startupMs : 600);
  const timer = early
    ? setTimeout(() => trainer.child.kill(signal), delay)
    : void firstStep.then(() => setTimeout(() => trainer.child.kill(signal), delay));
  const { code, stderr } = await trainer.exited;
  clearTimeout(timer);
  const startedStep = await firstStep;
  if (startedStep !== undefined) startupMs = startedStep;
  if (startedStep !== undefined && resume) figures.resumeMs.push(startedStep);
  if (code === 0) {
    figures.finishedBeforeKill++;
    finished = true;
    continue;
  }
  if (startedStep === undefined) figures.duringStartup++;
  if (signal === 'SIGKILL') {
    assert.equal(code, 137, `cycle ${cycle}: kill -9 gave exit code ${code}\n${stderr}`);
    figures.kill9++;
  } else {
    assert.equal(code, 130, `cycle ${cycle}: SIGINT gave exit code ${code}\n${stderr}`);
    figures.sigint++;
  }
  const newest = (await listCheckpoints(runDir)).at(-1);
  console.log(`faults: cycle ${cycle + 1}: ${signal === 'SIGKILL' ? 'kill -9' : 'SIGINT '} ${early ? `${(delay / 1000).toFixed(2)} s after start` : `${(delay / 1000).toFixed(2)} s after the first step`}, newest checkpoint: step ${newest?.step ?? '-'}`);
}

if (!finished) {
  const began = performance.now();
  const last = await startTrainer(runDir, tinyUserConfig(train), (await listCheckpoints(runDir)).length > 0 ? ['--resume'] : []);
  const firstStep = last.printed(/^step \d+\//m, 120_000).then(() => performance.now() - began, () => undefined);
  const { code, stderr } = await last.exited;
  assert.equal(code, 0, `the final resume failed:\n${stderr}`);
  const ms = await firstStep;
  if (ms !== undefined) figures.resumeMs.push(ms);
}

// The final state equals the uninterrupted run's, file for file (same tensors, same metadata).
const a = orThrow(await loadCheckpoint(checkpointDir(join(root, 'reference'), steps)));
const b = orThrow(await loadCheckpoint(checkpointDir(runDir, steps)));
assert.deepEqual(b.manifest.files, a.manifest.files, 'final checkpoint files differ from the uninterrupted run');
assert.deepEqual(b.manifest.prng_key, a.manifest.prng_key);
assert.deepEqual(b.manifest.data_position, a.manifest.data_position);
const losses = async (dir: string) => ((await readJsonLines(join(dir, 'log.jsonl'), (m) => console.log(`faults: ${m}`))) as LogLine[]).map((l) => [l.step, l.loss]);
assert.deepEqual(await losses(runDir), await losses(join(root, 'reference')), 'logged losses differ');
const leftovers = (await readdir(runDir)).filter((f) => f === 'lock' || f.endsWith('.tmp') || f.includes('.corrupt') || f.includes('.diverged'));
assert.deepEqual(leftovers, [], 'left in the run folder');
const history = (await readJsonLines(join(runDir, 'history.jsonl'), () => undefined)).length;

const interrupts = figures.kill9 + figures.sigint;
const mean = figures.resumeMs.reduce((s, x) => s + x, 0) / Math.max(1, figures.resumeMs.length);
console.log([
  `faults: PASS (seed ${seed}): final params, EMA, optimizer state, counters, PRNG key, data position and all ${steps} logged losses equal the uninterrupted run's bit for bit`,
  `  interruption cycles: ${interrupts} (kill -9: ${figures.kill9}, SIGINT: ${figures.sigint}; ${figures.duringStartup} of them before the first step), runs that finished before their kill: ${figures.finishedBeforeKill}`,
  `  resumes: ${figures.resumeMs.length}, mean resume time (process start to first step done): ${(mean / 1000).toFixed(2)} s; history.jsonl lines: ${history}`,
  `  uninterrupted run: ${referenceSeconds.toFixed(1)} s in-process; whole check: ${((performance.now() - t0) / 1000).toFixed(0)} s`,
].join('\n'));
