/**
 * A training run: a config, a dataset and a run folder. It resolves the state (fresh or resumed from
 * the latest checkpoint), streams patch batches from the data position, folds the compiled step
 * over them, and attaches the observers: progress line, log, sample grids, loss plot, checkpoints.
 *
 * Run folder: config.json (the resolved config of the latest segment), log.jsonl (one line per
 * logged step, which a resumed run truncates back to its checkpoint), history.jsonl (one line per
 * segment start and end: resumed from where, with which config changes, the weights a new run took
 * from train.init_from, why it ended), lock (held
 * while a trainer runs), samples-<step>.png, loss.svg, checkpoint-<step>/.
 */
import { mkdir } from 'node:fs/promises';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { defaultBackend, flatten, getBackend, onCompileProgress, random, realize, type Backend, type BackendName, type CompileProgress, type PyTree, type Tensor } from '../core/index.ts';
import { writeFileAtomic, type FileWriter } from './atomicFile.ts';
import { listCheckpoints, setAsideCheckpoint, writeCheckpointFiles, type PendingCheckpoint } from './checkpoint.ts';
import { totalSteps, type TrainingConfig } from './config.ts';
import { takeBatch } from './data/batches.ts';
import type { Dataset } from './data/dataset.ts';
import { openDataset } from './data/open.ts';
import { TrainingError, orThrow } from './errors.ts';
import { fold, type Observer } from './fold.ts';
import { imageGridPng } from './images.ts';
import { describeInitFrom, initFrom } from './initFrom.ts';
import { cropPatches, patchChoice } from './patches.ts';
import { lossCurveSvg } from './plot.ts';
import { resumePoint, type ResumePoint } from './resume.ts';
import { describeChange } from './resumeConfig.ts';
import { appendJsonLine, readJsonLines, writeTextAtomic } from './runFiles.ts';
import { acquireRunLock } from './runLock.ts';
import { trainingMethod, type TrainingMethod } from './method.ts';
import { usesPackedState } from './packed.ts';
import { fullSize, stepBatch, type StepBatch, type StepMetrics, type TrainState } from './step.ts';

export { restoreLike } from './resume.ts';
export { totalSteps } from './config.ts';

export interface TrainingBatch extends StepBatch {
  /** The step this batch is for (0-based). */
  readonly step: number;
  /** Data stream position after this batch. */
  readonly position: number;
}

/** Patch batches from `startStep` at data `startPosition`: a pure function of (config, dataset, start). */
export async function* trainingBatches(ds: Dataset, config: TrainingConfig, startStep: number, startPosition: number): AsyncGenerator<TrainingBatch> {
  const { height, width } = fullSize(config);
  if (ds.height !== height || ds.width !== width) {
    throw new TrainingError(`data: images are ${ds.height}x${ds.width} but model.img_resolution is ${height}x${width}`);
  }
  const t = config.train;
  const patch = {
    height, width,
    // Only the patch model trains on patches; the others see full images.
    realP: config.model.kind === 'patch' ? t.real_p : 1,
    sizes: t.patch_sizes as [number, number, number] | undefined,
    batchMultiplier: t.batch_multiplier,
    progressive: config.model.kind === 'patch' && t.progressive,
    totalSteps: totalSteps(config),
  };
  let position = startPosition;
  for (let step = startStep; ; step++) {
    const choice = patchChoice(patch, step, t.seed, t.batch_size);
    const raw = takeBatch(ds, { seed: t.seed, position, batchSize: choice.batchSize });
    const crops = cropPatches(raw.images, raw.shape, choice.height, choice.width, t.seed, step);
    position = raw.position;
    yield { ...stepBatch(crops.patches, [choice.batchSize, ds.channels, choice.height, choice.width], crops.top, crops.left), step, position };
  }
}

export interface RunOptions {
  readonly runDir: string;
  readonly config: TrainingConfig;
  /**
   * Continue from the run folder's newest intact checkpoint. `config` may differ from the
   * checkpoint's in the fields of `RESUMABLE_FIELDS` (recorded in history.jsonl), in no other.
   */
  readonly resume?: boolean;
  /** On resume, stop at a corrupt newest checkpoint instead of falling back to an older one. */
  readonly strict?: boolean;
  /** Stop after this many steps even if the config asks for more (tests). */
  readonly stopAfter?: number;
  /** Stop after the first step that ends past this many seconds of training (equal-time comparisons). */
  readonly stopAfterSeconds?: number;
  /**
   * Training seconds, counted over the run's resumes as log.jsonl's `seconds` are, at which to also
   * write (and log) a checkpoint: at the first step that ends past each. An equal-time comparison
   * evaluates these afterwards, so a run is measured at fixed points of its budget without stopping.
   */
  readonly checkpointAtSeconds?: readonly number[];
  /** When aborted, the run finishes its current step, writes a checkpoint and returns (Ctrl-C). */
  readonly signal?: AbortSignal;
  /** Write progress to stderr: one line updated in place on a terminal, else a plain line every 30 s and at the end. */
  readonly progress?: boolean;
  /** Samples in each grid (0: none). */
  readonly gridSamples?: number;
  /** Sampler steps for the grids (default: the method's). */
  readonly sampleSteps?: number;
  /** Hears warnings and notes (default: stderr). */
  readonly say?: (message: string) => void;
  /** Writes and flushes one checkpoint file; replaced in tests to simulate a full disk. */
  readonly writeFile?: FileWriter;
  /**
   * Carry the state packed between steps (`train/packed.ts`; the methods that can). Default: on
   * WebGPU only (`usesPackedState`). The values are the same either way.
   */
  readonly packState?: boolean;
}

export interface LogLine {
  readonly step: number;
  readonly loss: number;
  readonly images_seen: number;
  readonly patch: string;
  readonly images_per_s: number;
  readonly seconds: number;
  readonly replaced: number;
}

/** The state of a run of any model kind. */
export type RunState = TrainState<PyTree<Tensor>>;

export interface RunResult {
  readonly state: RunState;
  readonly step: number;
  readonly log: readonly LogLine[];
  readonly backend: string;
  /** The newest checkpoint this run wrote (or resumed from), if any. */
  readonly checkpoint?: string;
  /** Why the run ended before its last step: 'signal' (the abort signal), 'time' (stopAfterSeconds) or 'steps' (stopAfter). */
  readonly stoppedEarly?: 'signal' | 'time' | 'steps';
}

interface Start {
  readonly state: RunState;
  readonly step: number;
  readonly position: number;
  readonly resumed?: ResumePoint;
}

function formatEta(seconds: number): string {
  if (!Number.isFinite(seconds)) return '?';
  const s = Math.round(seconds);
  return s >= 3600 ? `${Math.floor(s / 3600)}h${Math.floor((s % 3600) / 60)}m` : s >= 60 ? `${Math.floor(s / 60)}m${s % 60}s` : `${s}s`;
}

/** Samples a grid of full-size images with the given (EMA) params, by the method's sampler. */
export async function sampleGrid(method: TrainingMethod<PyTree<Tensor>>, params: PyTree<Tensor>, config: TrainingConfig, count: number, steps: number, seed: number, backend?: BackendName): Promise<Uint8Array> {
  const { height, width } = fullSize(config);
  const x = await method.sample(params, count, steps, random.key(seed), backend);
  // Small images are drawn at least 64 pixels tall, so a 16x16 sample is visible as it is.
  return imageGridPng((await x.data()) as Float32Array, [count, config.model.img_channels, height, width], { scale: Math.max(1, Math.floor(64 / height)) });
}

/** Images shown so far: the state's count, or the sum of its per-network counts. */
export async function imagesSeen(state: { readonly imagesSeen: Tensor }): Promise<number> {
  return Array.from(await state.imagesSeen.data(), Number).reduce((a, x) => a + x, 0);
}

/** How often a progress line is printed when stderr is not a terminal (a log file, a pipe, CI). */
const PLAIN_PROGRESS_MS = 30_000;
/** How often a compile progress line is printed when stderr is not a terminal. */
const PLAIN_COMPILE_PROGRESS_MS = 10_000;

/**
 * The progress of a long compile (WebGPU's pipelines on a software adapter take minutes) as lines
 * for stderr: one line rewritten in place on a terminal, else one every PLAIN_COMPILE_PROGRESS_MS,
 * and a last line when the program is ready. Returns the `onCompileProgress` listener.
 */
export function compileProgressPrinter(write: (text: string) => void, tty: boolean): (p: CompileProgress) => void {
  let lastPlain = -Infinity;
  return (p) => {
    const text = p.finished
      ? `compiled ${p.program}: ${p.total} kernels in ${p.seconds.toFixed(1)} s`
      : `compiling ${p.program}: ${p.done}/${p.total} kernels built, ${p.seconds.toFixed(0)} s`;
    if (tty) {
      write(`\r${text}   ${p.finished ? '\n' : ''}`);
    } else if (p.finished || p.seconds * 1000 - lastPlain >= PLAIN_COMPILE_PROGRESS_MS) {
      write(`${text}\n`);
      lastPlain = p.seconds * 1000;
    }
  };
}

const defaultSay = (message: string) => process.stderr.write(`tessera: ${message}\n`);

/**
 * Trains per the config, writing everything to the run folder, which it locks for its duration.
 *
 * A checkpoint is committed (its manifest written) only once the state it holds is known to be
 * good: the step that made it found every new parameter and optimizer value finite, and the next
 * step computed a finite loss from it (the run's final checkpoint has no next step and is committed
 * at once). A run that diverges stops naming the step and the newest good checkpoint; a resumed
 * checkpoint that proves bad is set aside as `checkpoint-N.diverged`.
 */
export async function trainRun(options: RunOptions): Promise<RunResult> {
  const { runDir } = options;
  const say = options.say ?? defaultSay;
  await mkdir(runDir, { recursive: true });
  const lock = await acquireRunLock(runDir, say);
  const historyPath = join(runDir, 'history.jsonl');
  let outcome: Record<string, unknown> = { event: 'end', reason: 'error' };
  try {
    const result = await train(options, say, historyPath);
    outcome = { event: 'end', step: result.step, reason: result.stoppedEarly ?? 'finished', checkpoint: result.checkpoint ?? null };
    return result;
  } catch (e) {
    outcome = { event: 'end', reason: 'error', error: e instanceof Error ? e.message : String(e) };
    throw e;
  } finally {
    await appendJsonLine(historyPath, { ...outcome, time: new Date().toISOString() }).catch(() => undefined);
    await lock.release();
  }
}

async function train(options: RunOptions, say: (message: string) => void, historyPath: string): Promise<RunResult> {
  const { config, runDir } = options;
  const backend: Backend = config.backend === undefined ? await defaultBackend() : await getBackend(config.backend);
  const method = trainingMethod(config);
  const data = orThrow(await openDataset(config.data, config.train.seed));
  // A resumed run continues its checkpoint; only a new run reads train.init_from.
  const init = options.resume !== true && config.train.init_from !== undefined ? await initFrom(method.initState(), config.train.init_from) : undefined;
  const start: Start = options.resume === true
    ? await resumePoint(method, config, runDir, { strict: options.strict, warn: say }).then((r) => ({ state: r.state, step: r.step, position: r.position, resumed: r }))
    : { state: init?.state ?? method.initState(), step: 0, position: 0 };
  await writeTextAtomic(join(runDir, 'config.json'), JSON.stringify(config, null, 2) + '\n');
  const changes = start.resumed?.changes ?? [];
  if (start.resumed !== undefined) {
    say(`resuming from ${start.resumed.dir} (step ${start.step})${changes.length === 0 ? '' : `, with ${changes.map(describeChange).join(', ')}`}`);
  }
  if (init !== undefined) say(describeInitFrom(init.report));
  await appendJsonLine(historyPath, {
    event: options.resume === true ? 'resume' : 'start', step: start.step, time: new Date().toISOString(), pid: process.pid, host: hostname(),
    backend: backend.name, checkpoint: start.resumed?.dir ?? null, changes, set_aside: start.resumed?.setAside ?? [],
    ...(init === undefined ? {} : { init_from: init.report }),
  });

  const logPath = join(runDir, 'log.jsonl');
  const previous = options.resume === true
    ? (await readJsonLines(logPath, say)).filter((l): l is LogLine => typeof (l as LogLine | null)?.step === 'number' && (l as LogLine).step <= start.step)
    : [];
  await writeTextAtomic(logPath, previous.map((l) => JSON.stringify(l) + '\n').join(''));
  const log: LogLine[] = [...previous];

  const total = Math.min(totalSteps(config), options.stopAfter === undefined ? Infinity : start.step + options.stopAfter);
  const t = config.train;
  const began = performance.now();
  const offset = previous.at(-1)?.seconds ?? 0;
  let windowImages = 0;
  let windowStart = began;
  let lastPlainProgress = -Infinity;
  let lastPosition = start.position;
  // The checkpointAtSeconds still ahead, and the step that crossed one (checkpointed by `checkpoint`).
  const marks = (options.checkpointAtSeconds ?? []).filter((m) => m > offset).sort((a, b) => a - b);
  let markedStep = -1;
  // Checkpoints known good, oldest first; the one whose manifest waits for the next step's loss.
  const good: { step: number; dir: string }[] = [...(start.resumed?.older ?? [])];
  let pending: PendingCheckpoint | undefined;
  const commit = async () => {
    if (pending === undefined) return;
    const p = pending;
    pending = undefined;
    good.push({ step: p.step, dir: await p.commit() });
  };
  const diverged = async (step: number, what: string, goodUpTo: number): Promise<never> => {
    await pending?.abandon();
    pending = undefined;
    const onDisk = new Set((await listCheckpoints(runDir)).map((c) => c.dir));
    const kept = good.filter((c) => onDisk.has(c.dir));
    for (const c of kept.filter((k) => k.step > goodUpTo)) say(`training from ${c.dir} diverges (step ${step}: ${what}); kept as ${await setAsideCheckpoint(c.dir, 'diverged')}`);
    const last = kept.filter((c) => c.step <= goodUpTo).at(-1);
    const advice = goodUpTo < 0
      ? 'The initial state already gives it: check the noise and data settings (train.P_mean, train.P_std, train.sigma_data, data.*).'
      : last === undefined
        ? 'No checkpoint of this run is known good; start again with a lower train.lr or a train.grad_clip.'
        : `The last good checkpoint is ${last.dir} (step ${last.step}); resume from it with a lower train.lr or a train.grad_clip, e.g. tessera train --run ${runDir} --resume --train.lr=${t.lr / 10}`;
    throw new TrainingError(`step ${step}: ${what}; stopping. ${advice}`);
  };

  type Obs = Observer<RunState, TrainingBatch, StepMetrics>;
  const checkStep: Obs = async ({ step, metrics, batch, state, last }) => {
    const loss = await metrics.loss.item();
    windowImages += batch.images.shape[0]!;
    lastPosition = batch.position;
    // The loss is computed from the state before this step: a non-finite one condemns that state.
    if (!Number.isFinite(loss)) await diverged(step, `the loss is ${loss}`, step - 2);
    await commit();
    const nonFinite = await metrics.nonFinite.item();
    if (nonFinite !== 0) await diverged(step, `${nonFinite} values of the new parameters and optimizer state are not finite`, step - 1);
    const now = performance.now();
    const seconds = offset + (now - began) / 1000;
    if (marks.length > 0 && seconds >= marks[0]!) {
      while (marks.length > 0 && seconds >= marks[0]!) marks.shift();
      markedStep = step;
    }
    if (step % t.log_every === 0 || last || step === markedStep) {
      const line: LogLine = {
        step, loss, images_seen: await imagesSeen(state),
        patch: `${batch.images.shape[2]}x${batch.images.shape[3]}`,
        images_per_s: (windowImages * 1000) / Math.max(now - windowStart, 1e-3),
        seconds,
        replaced: await metrics.replaced.item(),
      };
      windowImages = 0;
      windowStart = now;
      log.push(line);
      await appendJsonLine(logPath, line);
      if (options.progress === true) {
        const bySteps = ((total - step) * (now - began)) / 1000 / Math.max(step - start.step, 1);
        const eta = Math.max(0, Math.min(bySteps, (options.stopAfterSeconds ?? Infinity) - (now - began) / 1000));
        const text = `step ${step}/${total} | loss ${loss.toPrecision(4)} | ${line.images_per_s.toFixed(1)} img/s | patch ${line.patch} | ETA ${formatEta(eta)}`;
        // A terminal gets one line rewritten in place; a file or pipe gets a plain line every PLAIN_PROGRESS_MS.
        if (process.stderr.isTTY) {
          process.stderr.write(`\r${text}   `);
        } else if (last || now - lastPlainProgress >= PLAIN_PROGRESS_MS) {
          process.stderr.write(`${text}\n`);
          lastPlainProgress = now;
        }
      }
    }
  };
  const checkpoint: Obs = async ({ step, state, last }) => {
    if (step % t.checkpoint_every !== 0 && !last && step !== markedStep) return;
    const trees = { params: state.params, ema: state.ema, optimizer: state.opt, counters: { imagesSeen: state.imagesSeen } };
    // Views of a packed state are computed in one program, not one per tensor as each is read.
    await realize(flatten(trees as PyTree<Tensor>).leaves, backend);
    pending = await writeCheckpointFiles(runDir, {
      step, config, prngKey: state.key, dataPosition: { position: lastPosition }, trees,
    }, { keep: t.keep_checkpoints, writeFile: options.writeFile });
    if (last) await commit();
  };
  const samples: Obs = async ({ step, state, last }) => {
    if ((options.gridSamples ?? 16) === 0 || options.signal?.aborted === true || (step % t.sample_every !== 0 && !last)) return;
    const png = await sampleGrid(method, state.ema, config, options.gridSamples ?? 16, options.sampleSteps ?? method.defaultSampleSteps, t.seed + 1, backend.name);
    await writeFileAtomic(join(runDir, `samples-${String(step).padStart(7, '0')}.png`), png);
    await writeTextAtomic(join(runDir, 'loss.svg'), lossCurveSvg(log.map((l) => [l.step, l.loss] as const), { title: 'training loss', xLabel: 'step', yLabel: 'loss', logY: true, smoothing: 0.9 }));
  };

  // The state as the method carries it between steps (packed, for EDM, patch and MaskDM runs on WebGPU), stepped by
  // its compiled step; the observers and the result see the named state (views of the carried one).
  const packed = method.carry !== undefined && (options.packState ?? usesPackedState(backend.name));
  const carry = packed ? method.carry! : { to: async (s: RunState) => s as TrainState<unknown>, from: (c: TrainState<unknown>) => c as RunState, compileStep: method.compileStep as NonNullable<typeof method.carry>['compileStep'] };
  const step = carry.compileStep(backend.name);
  // The named views are made at most once per step, and only when an observer reads the params,
  // the EMA or the optimizer state (most steps only log the loss and the image count).
  const named = (c: TrainState<unknown>): RunState => {
    if (!packed) return c as RunState;
    let views: RunState | undefined;
    const get = () => (views ??= carry.from(c));
    return { get params() { return get().params; }, get ema() { return get().ema; }, get opt() { return get().opt; }, imagesSeen: c.imagesSeen, key: c.key };
  };
  const observe: Observer<TrainState<unknown>, TrainingBatch, StepMetrics> = async (e) => {
    const event = { ...e, state: named(e.state) };
    for (const obs of [checkStep, checkpoint, samples]) await obs(event);
  };
  // The first step and the first sample grid compile their programs: say so while it takes long.
  const stopCompileProgress = options.progress === true ? onCompileProgress(compileProgressPrinter((t) => process.stderr.write(t), process.stderr.isTTY === true)) : undefined;
  const outOfTime = () => options.stopAfterSeconds !== undefined && (performance.now() - began) / 1000 >= options.stopAfterSeconds;
  let result: { state: RunState; step: number };
  try {
    const carried = await fold(
      step,
      await carry.to(start.state, backend.name),
      trainingBatches(data.dataset, config, start.step, start.position),
      { startStep: start.step, totalSteps: total, observers: [observe], stopWhen: () => options.signal?.aborted === true || outOfTime() },
    );
    result = { state: carry.from(carried.state), step: carried.step };
  } finally {
    stopCompileProgress?.();
    await pending?.abandon();
    if (options.progress === true && process.stderr.isTTY) process.stderr.write('\n');
  }
  const stoppedEarly = result.step >= totalSteps(config) ? undefined
    : options.signal?.aborted === true ? 'signal' : outOfTime() ? 'time' : 'steps';
  return { state: result.state, step: result.step, log, backend: backend.name, checkpoint: good.at(-1)?.dir, stoppedEarly };
}
