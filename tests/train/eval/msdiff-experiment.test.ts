/** The MSDiff experiment end to end in its --tiny mode: both models trained, evaluated, and a results page with plot and sample grids. */
import assert from 'node:assert/strict';
import { mkdtemp, readFile, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { parseMsdiffArgs, runMsdiffExperiment } from '../../../train/experiments/msdiff-vs-uniform.ts';

test('msdiff-vs-uniform --tiny trains both models, evaluates them and writes the results page', { timeout: 600_000 }, async () => {
  const dir = await mkdtemp(join(tmpdir(), 'tessera-msdiff-'));
  try {
    const results = await runMsdiffExperiment(parseMsdiffArgs(['--tiny', '--budget', '3', '--doc', join(dir, 'results.md')]));
    assert.deepEqual(results.map((r) => [r.name, r.networks]), [['uniform', 1], ['MSDiff', 3]]);
    for (const r of results) {
      assert.equal(r.evals.length, 1);
      assert.ok(Number.isFinite(r.evals[0]!.fd) && r.evals[0]!.fd >= 0);
      assert.ok(r.stepsPerScale.every((n) => n >= 1), `steps per scale ${r.stepsPerScale}`);
    }
    const md = await readFile(join(dir, 'results.md'), 'utf8');
    assert.match(md, /\| uniform \| \d+ \| \d+ \| [\d.]+ \|/);
    assert.match(md, /\| MSDiff \| \d+ \| \d+ \| [\d.]+ \|/);
    assert.deepEqual((await readdir(dir)).sort(), ['results-fd.png', 'results-msdiff.png', 'results-uniform.png', 'results.md']);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
  assert.throws(() => parseMsdiffArgs(['--budget', 'soon']), /--budget must be a positive number, got 'soon'/);
});
