/** The conditional-estimator experiment end to end in its --tiny mode: CDE and CMDE trained, scored, and a results page with a sample grid. */
import assert from 'node:assert/strict';
import { mkdtemp, readFile, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { parseConditionalArgs, runConditionalExperiment } from '../../../train/experiments/msdiff-conditional.ts';

test('msdiff-conditional --tiny trains CDE and CMDE for the same steps, scores them and writes the results page', { timeout: 600_000 }, async () => {
  const dir = await mkdtemp(join(tmpdir(), 'tessera-conditional-'));
  try {
    const results = await runConditionalExperiment(parseConditionalArgs(['--tiny', '--doc', join(dir, 'results.md')]));
    assert.deepEqual(results.map((r) => r.estimator), ['cde', 'cmde']);
    for (const r of results) {
      assert.deepEqual(r.evals.map((e) => e.steps), [6]);
      const e = r.evals[0]!;
      assert.ok(Number.isFinite(e.fd) && Number.isFinite(e.psnr) && e.consistency >= 0, JSON.stringify(e));
    }
    // CMDE's output conv has a second channel (y's noise): more parameters than CDE's.
    assert.ok(results[1]!.params > results[0]!.params);
    const md = await readFile(join(dir, 'results.md'), 'utf8');
    assert.match(md, /\| nearest-neighbour upsampling of y \| - \| [\d.]+ \|/);
    assert.match(md, /\| CDE \| 6 \| [\d.]+ \| [\d.]+ \|/);
    assert.match(md, /\| CMDE \| 6 \| [\d.]+ \| [\d.]+ \|/);
    assert.deepEqual((await readdir(dir)).sort(), ['results-samples.png', 'results.md']);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
  assert.throws(() => parseConditionalArgs(['--train-steps', 'many']), /--train-steps must be a positive number, got 'many'/);
});
