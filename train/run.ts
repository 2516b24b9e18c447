/**
 * A training run: a config, a dataset and a run folder. It resolves the state (fresh or resumed from
 * the latest checkpoint), streams patch batches from the data position, folds the compiled step
 * over them, and attaches the observers: progress line, log, sample grids, loss plot, checkpoints.
 *
 * Run folder: config.json (the resolved config), log.jsonl (one line per logged step, which a
 * resumed run truncates back to its checkpoint), samples-<step>.png, loss.svg, checkpoint-<step>/.
 */
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { defaultBackend, getBackend, random, type Backend, type BackendName, type PyTree, type Tensor } from '../core/index.ts';
import { flatten, unflatten } from '../core/pytree.ts';
import { makeDenoiser } from '../models/precond.ts';
import { heunSampler } from '../models/samplers.ts';
import { latestCheckpoint, loadCheckpoint, saveCheckpoint } from './checkpoint.ts';
import type { TrainingConfig } from './config.ts';
import { takeBatch } from './data/batches.ts';
import type { Dataset } from './data/dataset.ts';
import { openDataset } from './data/open.ts';
import { CheckpointError, TrainingError, orThrow } from './errors.ts';
import { fold, type Observer } from './fold.ts';
import { imageGridPng } from './images.ts';
import { cropPatches, patchChoice } from './patches.ts';
import { lossCurveSvg } from './plot.ts';
import { tensorNames } from './stateDict.ts';
import { buildModel, compileStep, fullSize, initState, stepBatch, type Model, type StepBatch, type StepMetrics, type TrainState } from './step.ts';

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
    realP: config.model.kind === 'edm' ? 1 : t.real_p,
    sizes: t.patch_sizes as [number, number, number] | undefined,
    batchMultiplier: t.batch_multiplier,
    progressive: t.progressive,
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

export function totalSteps(config: TrainingConfig): number {
  const t = config.train;
  return t.steps ?? Math.ceil((t.duration_images ?? 0) / t.batch_size);
}

export interface RunOptions {
  readonly runDir: string;
  readonly config: TrainingConfig;
  /** Continue from the run folder's latest checkpoint (its config must equal `config`). */
  readonly resume?: boolean;
  /** Stop after this many steps even if the config asks for more (tests). */
  readonly stopAfter?: number;
  /** Stop after the first step that ends past this many seconds of training (equal-time comparisons). */
  readonly stopAfterSeconds?: number;
  /** Write a progress line to stderr. */
  readonly progress?: boolean;
  /** Samples in each grid (0: none). */
  readonly gridSamples?: number;
  /** Sampler steps for the grids. */
  readonly sampleSteps?: number;
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

export interface RunResult {
  readonly state: TrainState;
  readonly step: number;
  readonly log: readonly LogLine[];
  readonly backend: string;
}

/** Rebuilds a tree shaped like `template` from a loaded tree, by tensor name (empty subtrees are not stored). */
export function restoreLike<T extends PyTree<Tensor>>(template: T, loaded: PyTree<Tensor>, what: string): T {
  const t = flatten(template);
  const l = flatten(loaded);
  const byName = new Map(tensorNames(l.def).map((n, i) => [n, l.leaves[i]!]));
  const names = tensorNames(t.def);
  return unflatten(t.def, t.leaves.map((leaf, i) => {
    const got = byName.get(names[i]!);
    if (got === undefined) throw new CheckpointError(`${what}: checkpoint has no tensor '${names[i]}'`);
    if (got.dtype !== leaf.dtype || got.shape.join() !== leaf.shape.join()) {
      throw new CheckpointError(`${what}: '${names[i]}' is ${got.dtype} [${got.shape}] in the checkpoint, the model expects ${leaf.dtype} [${leaf.shape}]`);
    }
    return got;
  })) as T;
}

interface Start {
  readonly state: TrainState;
  readonly step: number;
  readonly position: number;
}

async function startState(model: Model, options: RunOptions): Promise<Start> {
  const fresh = initState(model, options.config);
  if (options.resume !== true) return { state: fresh, step: 0, position: 0 };
  const dir = await latestCheckpoint(options.runDir);
  if (dir === undefined) throw new CheckpointError(`resume: no checkpoint in ${options.runDir}`);
  const ck = orThrow(await loadCheckpoint(dir, { expectedConfig: options.config }));
  const trees = ck.trees;
  const position = (ck.dataPosition as { position?: unknown }).position;
  if (typeof position !== 'number') throw new CheckpointError(`${dir}: manifest dataPosition.position is not a number`);
  return {
    state: {
      params: restoreLike(fresh.params, trees['params'] ?? {}, `${dir} params`),
      ema: restoreLike(fresh.ema, trees['ema'] ?? {}, `${dir} ema`),
      opt: restoreLike(fresh.opt, trees['optimizer'] ?? {}, `${dir} optimizer`),
      imagesSeen: restoreLike({ imagesSeen: fresh.imagesSeen }, trees['counters'] ?? {}, `${dir} counters`).imagesSeen,
      key: ck.prngKey,
    },
    step: ck.step,
    position,
  };
}

function formatEta(seconds: number): string {
  if (!Number.isFinite(seconds)) return '?';
  const s = Math.round(seconds);
  return s >= 3600 ? `${Math.floor(s / 3600)}h${Math.floor((s % 3600) / 60)}m` : s >= 60 ? `${Math.floor(s / 60)}m${s % 60}s` : `${s}s`;
}

/** Samples a grid with the EMA params at full resolution on the full coordinate grid. */
export async function sampleGrid(model: Model, params: TrainState['ema'], config: TrainingConfig, count: number, steps: number, seed: number, backend?: BackendName): Promise<Uint8Array> {
  const { height, width } = fullSize(config);
  const x = await heunSampler(makeDenoiser(params, model), { key: random.key(seed), shape: [count, config.model.img_channels, height, width], numSteps: steps, backend });
  // Small images are drawn at least 64 pixels tall, so a 16x16 sample is visible as it is.
  return imageGridPng((await x.data()) as Float32Array, [count, config.model.img_channels, height, width], { scale: Math.max(1, Math.floor(64 / height)) });
}

/** Trains per the config, writing everything to the run folder. */
export async function trainRun(options: RunOptions): Promise<RunResult> {
  const { config, runDir } = options;
  await mkdir(runDir, { recursive: true });
  const backend: Backend = config.backend === undefined ? await defaultBackend() : await getBackend(config.backend);
  const model = buildModel(config);
  const data = orThrow(await openDataset(config.data, config.train.seed));
  const start = await startState(model, options);
  await writeFile(join(runDir, 'config.json'), JSON.stringify(config, null, 2) + '\n');

  const logPath = join(runDir, 'log.jsonl');
  const previous: LogLine[] = options.resume === true
    ? (await readFile(logPath, 'utf8').catch(() => '')).split('\n').filter((l) => l.trim() !== '').map((l) => JSON.parse(l) as LogLine).filter((l) => l.step <= start.step)
    : [];
  await writeFile(logPath, previous.map((l) => JSON.stringify(l) + '\n').join(''));
  const log: LogLine[] = [...previous];

  const total = Math.min(totalSteps(config), options.stopAfter === undefined ? Infinity : start.step + options.stopAfter);
  const t = config.train;
  const began = performance.now();
  const offset = previous.at(-1)?.seconds ?? 0;
  let windowImages = 0;
  let windowStart = began;
  let lastPosition = start.position;

  type Obs = Observer<TrainState, TrainingBatch, StepMetrics>;
  const checkLoss: Obs = async ({ step, metrics, batch, state, last }) => {
    const loss = await metrics.loss.item();
    windowImages += batch.images.shape[0]!;
    lastPosition = batch.position;
    if (!Number.isFinite(loss)) {
      throw new TrainingError(`step ${step}: the loss is ${loss}; stopping. The last good checkpoint in ${runDir} is intact; resume from it with a lower train.lr or train.grad_clip.`);
    }
    if (step % t.log_every === 0 || last) {
      const now = performance.now();
      const line: LogLine = {
        step, loss, images_seen: await state.imagesSeen.item(),
        patch: `${batch.images.shape[2]}x${batch.images.shape[3]}`,
        images_per_s: (windowImages * 1000) / Math.max(now - windowStart, 1e-3),
        seconds: offset + (now - began) / 1000,
        replaced: await metrics.replaced.item(),
      };
      windowImages = 0;
      windowStart = now;
      log.push(line);
      await writeFile(logPath, JSON.stringify(line) + '\n', { flag: 'a' });
      if (options.progress === true) {
        const bySteps = ((total - step) * (now - began)) / 1000 / Math.max(step - start.step, 1);
        const eta = Math.max(0, Math.min(bySteps, (options.stopAfterSeconds ?? Infinity) - (now - began) / 1000));
        process.stderr.write(`\rstep ${step}/${total} | loss ${loss.toPrecision(4)} | ${line.images_per_s.toFixed(1)} img/s | patch ${line.patch} | ETA ${formatEta(eta)}   `);
      }
    }
  };
  const checkpoint: Obs = async ({ step, state, last }) => {
    if (step % t.checkpoint_every !== 0 && !last) return;
    await saveCheckpoint(runDir, {
      step, config, prngKey: state.key, dataPosition: { position: lastPosition },
      trees: { params: state.params, ema: state.ema, optimizer: state.opt, counters: { imagesSeen: state.imagesSeen } },
    }, { keep: t.keep_checkpoints });
  };
  const samples: Obs = async ({ step, state, last }) => {
    if ((options.gridSamples ?? 16) === 0 || (step % t.sample_every !== 0 && !last)) return;
    const png = await sampleGrid(model, state.ema, config, options.gridSamples ?? 16, options.sampleSteps ?? 18, t.seed + 1, backend.name);
    await writeFile(join(runDir, `samples-${String(step).padStart(7, '0')}.png`), png);
    await writeFile(join(runDir, 'loss.svg'), lossCurveSvg(log.map((l) => [l.step, l.loss] as const), { title: 'training loss', xLabel: 'step', yLabel: 'loss', logY: true, smoothing: 0.9 }));
  };

  const step = compileStep(model, config, backend.name);
  const result = await fold(
    (s: TrainState, b: TrainingBatch) => step(s, b),
    start.state,
    trainingBatches(data.dataset, config, start.step, start.position),
    {
      startStep: start.step, totalSteps: total, observers: [checkLoss, checkpoint, samples],
      stopWhen: options.stopAfterSeconds === undefined ? undefined : () => (performance.now() - began) / 1000 >= options.stopAfterSeconds!,
    },
  );
  if (options.progress === true) process.stderr.write('\n');
  return { state: result.state, step: result.step, log, backend: backend.name };
}
