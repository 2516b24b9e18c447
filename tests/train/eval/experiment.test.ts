/**
 * The Patch Diffusion experiment (train/experiments/patch-vs-edm.ts) end to end in its --tiny mode:
 * four short runs with checkpoints at fractions of the budget, evaluated afterwards, the small-data
 * runs' nearest neighbours, samples beyond the training resolution and the results page; then a
 * second invocation that finds everything done, and a third whose larger budget extends one run.
 */
import assert from 'node:assert/strict';
import { mkdtemp, readFile, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { allRunSpecs, inkInsideOutside, otherMachineBaseline, parseExperimentArgs, runExperiment } from '../../../train/experiments/patch-vs-edm.ts';
import { currentEvals, evalSettings, fdAtImages, speedUp, timeToReach } from '../../../train/experiments/patch-vs-edm-report.ts';

test('timeToReach interpolates the first crossing of a target FD; speedUp divides the baseline\'s time by the patch run\'s', () => {
  const evals = [{ seconds: 10, fd: 100 }, { seconds: 20, fd: 50 }, { seconds: 30, fd: 20 }];
  assert.equal(timeToReach(evals, 75), 15);
  assert.equal(timeToReach(evals, 120), 10);
  assert.equal(timeToReach(evals, 10), undefined);
  const at = (seconds: number, fd: number, images = 0) => ({ seconds, fd, fdStderr: 5, images_seen: images }) as never;
  const s = speedUp([at(10, 100), at(20, 60), at(30, 40)], [at(10, 60), at(20, 30)]);
  // The patch run reaches 40 at 10 + (60 - 40) / 30 * 10 = 16.67 s; the baseline at 30 s.
  assert.ok(Math.abs(s.ratio! - 30 / (10 + 20 / 3)) < 1e-9, `${s.ratio}`);
  assert.equal(s.atFirst, false);
  assert.ok(s.range[0]! < s.ratio! && s.ratio! < s.range[1]!, JSON.stringify(s.range));
  assert.equal(speedUp([at(10, 100), at(20, 40)], [at(10, 90), at(20, 80)]).ratio, undefined);
  assert.equal(fdAtImages([at(1, 100, 1000), at(2, 50, 2000)], 1500), 75);
  assert.equal(fdAtImages([at(1, 100, 1000)], 1500), undefined);
});

test('inkInsideOutside measures ink inside and outside the central window of a doubled canvas', () => {
  // One 4x4 image of a 2x2 training size: ink 1 (value 1) on the central 2x2, background (-1) elsewhere.
  const img = new Float32Array(16).fill(-1);
  for (const i of [5, 6, 9, 10]) img[i] = 1;
  assert.deepEqual(inkInsideOutside(img, 1, 2), { outside_ink: 0, outside_ink_se: 0, inside_mean: 1, outside_mean: 0 });
  const two = new Float32Array(32).fill(-1);
  two.set(img);
  for (const i of [0, 5, 6, 9, 10]) two[16 + i] = 1;
  const ink = inkInsideOutside(two, 2, 2);
  assert.equal(ink.outside_ink, (0 + 1 / 5) / 2);
  assert.ok(Math.abs(ink.outside_ink_se - 0.1) < 1e-12, `${ink.outside_ink_se}`);
});

test('patch-vs-edm --tiny trains, evaluates and reports; run again it trains nothing; a larger budget extends a run', { timeout: 600_000 }, async () => {
  const dir = await mkdtemp(join(tmpdir(), 'tessera-exp-'));
  const out = join(dir, 'runs');
  // A budget of 4 s (checkpoints at 2 s and 4 s): the first step, which compiles, must end before the
  // second checkpoint is due for the two to be distinct, and on a loaded two-core machine it can take 2 s.
  const args = ['--tiny', '--budget', '4', '--out', out, '--doc', join(dir, 'results.md')];
  try {
    const first = await runExperiment(parseExperimentArgs(args));
    const ids = ['mnist-edm', 'mnist-patch0.5', 'small-edm', 'small-patch0.5'];
    assert.deepEqual(first.trained, ids);
    const settings = evalSettings(parseExperimentArgs(args));
    for (const id of ids) {
      const r = first.records.get(id)!;
      // Checkpoints at 2 s and 4 s of training (evals 2, budget 4), both evaluated.
      assert.deepEqual(r.points.map((p) => p.target), [2, 4], id);
      assert.ok(r.points.every((p) => p.seconds >= p.target), JSON.stringify(r.points));
      const evals = currentEvals(r, settings);
      assert.equal(evals.length, 2, id);
      for (const e of evals) assert.ok(e.fd >= 0 && e.fdStderr! > 0 && Number.isFinite(e.kid.jackknife), JSON.stringify(e));
    }
    assert.ok(first.records.get('mnist-patch0.5')!.points.at(-1)!.images_seen > 0);
    assert.deepEqual(Object.keys(first.extras.neighbours).sort(), ['small-edm', 'small-patch0.5']);
    assert.deepEqual(first.extras.beyond.map((b) => b.label), ['EDM, 32x32 canvas', 'Patch p=0.5, coordinates extended', 'Patch p=0.5, coordinates stretched']);
    const md = await readFile(join(dir, 'results.md'), 'utf8');
    for (const heading of ['## Setup', '## Headline: time to the baseline\'s final FD', '## MNIST, all 10,000 images', '## MNIST, a 64-image subset', '### Nearest training images', '## Beyond the training resolution: 32x32', '## Discussion', '## Earlier: 16x16, 180 s per run']) {
      assert.ok(md.includes(`\n${heading}\n`), `the page has '${heading}'`);
    }
    assert.match(md, /\| EDM \| \d+ \| \d+ \| [\d,]+ \| [\d.]+ ± [\d.]+ \| -?[\d.]+ ± [\d.]+ \|/);
    assert.match(md, /\| MNIST, all 10,000 images \| Patch p=0.5 \| [\d.]+ ± [\d.]+ \| /);
    assert.match(md, /\*\*Incomplete:\*\* fashion-edm, fashion-patch0.5, fashion-patch0.25 have not trained/);
    assert.match(md, /\(patch-diffusion-results-16\.md\)/);
    const files = await readdir(dir);
    for (const f of ['results-mnist-fd-vs-seconds.png', 'results-mnist-fd-vs-images.svg', 'results-small-fd-vs-seconds.png', 'results-small-edm-neighbours.png',
      'results-small-patch0.5-neighbours.png', 'results-beyond-mnist-edm-none.png', 'results-beyond-mnist-patch0.5-extended.png', 'results-beyond-mnist-patch0.5-stretched.png']) {
      assert.ok(files.includes(f), `${f} in ${files.join(', ')}`);
    }

    // Run again: nothing to train or evaluate; the records are as they were.
    const logLines = async (id: string) => (await readFile(join(out, id, 'log.jsonl'), 'utf8')).split('\n').length;
    const linesBefore = await Promise.all(ids.map(logLines));
    const second = await runExperiment(parseExperimentArgs(args));
    assert.deepEqual([second.trained, second.evaluated], [[], 0]);
    for (const id of ids) assert.deepEqual(second.records.get(id), first.records.get(id));
    assert.deepEqual(await Promise.all(ids.map(logLines)), linesBefore);

    // A larger budget for a finished run: resumed from its last checkpoint, a new point at 8 s, the old ones
    // kept; and a run not trained before (Fashion-MNIST) from scratch.
    const third = await runExperiment(parseExperimentArgs([...args, '--budget', '8', '--runs', 'mnist-edm,fashion-edm']));
    assert.deepEqual([third.trained, third.evaluated], [['mnist-edm', 'fashion-edm'], 3]);
    assert.deepEqual(third.records.get('fashion-edm')!.points.map((p) => p.target), [4, 8]);
    assert.equal(currentEvals(third.records.get('fashion-edm')!, settings)[0]!.dataset, 'fashion-mnist');
    const page = await readFile(join(dir, 'results.md'), 'utf8');
    assert.match(page, /\n## Fashion-MNIST, all 70,000 images\n/);
    // Each regime's budget is its longest run's; the runs behind it in their regime are unfinished.
    assert.match(page, /- Budget: equal training time within each regime \(MNIST, all 10,000 images: 8 s; MNIST, a 64-image subset: 4 s; Fashion-MNIST, all 70,000 images: 8 s\) per run/);
    assert.match(page, /\*\*Incomplete:\*\* mnist-patch0.5, fashion-patch0.5, fashion-patch0.25 have not trained for their regime's budget/);
    const extended = third.records.get('mnist-edm')!;
    assert.deepEqual(extended.points.map((p) => p.target), [2, 4, 8]);
    assert.ok(extended.points.at(-1)!.seconds >= 8);
    assert.deepEqual(currentEvals(extended, settings).slice(0, 2), currentEvals(first.records.get('mnist-edm')!, settings));
    assert.equal(extended.sessions.length, 2);
    // Resumed where the first session stopped (its last checkpoint, at or past the last evaluation point).
    assert.equal(extended.sessions[1]!.from_seconds, extended.sessions[0]!.to_seconds);
    assert.ok(extended.sessions[1]!.from_seconds >= first.records.get('mnist-edm')!.points.at(-1)!.seconds);
    const history = (await readFile(join(out, 'mnist-edm', 'history.jsonl'), 'utf8')).trim().split('\n').map((l) => JSON.parse(l) as { event: string });
    assert.deepEqual(history.map((h) => h.event), ['start', 'end', 'resume', 'end']);
    assert.ok(extended.sessions.every((s) => s.machine !== undefined && s.machine.includes('Node')));

    // A fresh machine: the records and extras, kept beside the page, survive; the checkpoints do not.
    const records = await readdir(join(dir, 'results-records'));
    assert.deepEqual(records.sort(), ['extras.json', 'fashion-edm.json', ...ids.map((id) => `${id}.json`)].sort());
    const fresh = ['--tiny', '--budget', '4', '--out', join(dir, 'fresh-scratch'), '--doc', join(dir, 'results.md')];
    const fourth = await runExperiment(parseExperimentArgs(fresh));
    assert.deepEqual([fourth.trained, fourth.evaluated], [[], 0]);
    for (const id of ids) assert.deepEqual(fourth.records.get(id), third.records.get(id) ?? first.records.get(id));
    assert.deepEqual(fourth.extras.beyond.map((b) => b.label), first.extras.beyond.map((b) => b.label));
    assert.deepEqual(Object.keys(fourth.extras.neighbours).sort(), ['small-edm', 'small-patch0.5']);
    // A patch run whose baseline trained on another machine is flagged before it trains.
    const specs = allRunSpecs(parseExperimentArgs(fresh));
    const patch = specs.find((x) => x.id === 'mnist-patch0.5')!;
    assert.equal(otherMachineBaseline(patch, specs, fourth.records), undefined);
    const elsewhere = new Map(fourth.records);
    const edm = elsewhere.get('mnist-edm')!;
    elsewhere.set('mnist-edm', { ...edm, sessions: edm.sessions.map((x) => ({ ...x, machine: '2 x Other CPU, 24 GiB, Node v20' })) });
    assert.match(otherMachineBaseline(patch, specs, elsewhere) ?? '', /mnist-patch0.5's baseline mnist-edm trained on 2 x Other CPU.*--runs mnist-edm,mnist-patch0.5/);
    assert.equal(otherMachineBaseline(specs.find((x) => x.id === 'mnist-edm')!, specs, elsewhere), undefined);
    // Extending a run needs its checkpoints: refused, naming the run, the record and the way out.
    await assert.rejects(runExperiment(parseExperimentArgs([...fresh, '--budget', '8', '--runs', 'mnist-patch0.5'])),
      /run mnist-patch0.5 trained \d+ s in an earlier session \(.*mnist-patch0.5.json\), but its checkpoints are not under .*fresh-scratch.*cannot be extended to --budget 8/);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
  assert.throws(() => parseExperimentArgs(['--budget', 'soon']), /--budget must be a positive number, got 'soon'/);
  await assert.rejects(runExperiment(parseExperimentArgs(['--tiny', '--runs', 'mnist-vae', '--out', join(dir, 'x')])), /unknown run\(s\) mnist-vae; the runs are mnist-edm, /);
});
