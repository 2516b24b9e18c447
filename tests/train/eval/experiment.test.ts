/** The experiment end to end in its --tiny mode: two short runs, evaluated, plots and a results page. */
import assert from 'node:assert/strict';
import { mkdtemp, readFile, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { parseExperimentArgs, runExperiment, timeToReach } from '../../../train/experiments/patch-vs-edm.ts';

test('timeToReach interpolates the first crossing of a target FD', () => {
  const evals = [{ seconds: 10, fd: 100 }, { seconds: 20, fd: 50 }, { seconds: 30, fd: 20 }] as never;
  assert.equal(timeToReach(evals, 75), 15);
  assert.equal(timeToReach(evals, 120), 10);
  assert.equal(timeToReach(evals, 10), undefined);
});

test('patch-vs-edm --tiny trains, evaluates and writes plots and a results page', { timeout: 600_000 }, async () => {
  const dir = await mkdtemp(join(tmpdir(), 'tessera-exp-'));
  try {
    const options = parseExperimentArgs(['--tiny', '--out', dir, '--doc', join(dir, 'results.md'), '--budget', '3']);
    const outcomes = await runExperiment(options);
    assert.deepEqual(outcomes.map((o) => o.spec.name), ['EDM', 'Patch p=0.5']);
    for (const o of outcomes) {
      assert.equal(o.evals.length, 1);
      assert.ok(Number.isFinite(o.evals[0]!.fd) && o.evals[0]!.fd >= 0);
    }
    const md = await readFile(join(dir, 'results.md'), 'utf8');
    assert.match(md, /\| EDM \| 1\/1 \|/);
    assert.match(md, /Time to reach the baseline's final FD/);
    const files = await readdir(dir);
    assert.ok(files.includes('results-full-data-fd-vs-seconds.png') && files.includes('results-full-data-fd-vs-images.svg'), files.join(', '));
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
