/**
 * The MaskDM experiment end to end in its --tiny mode: scratch, masked pre-training, fine-tuning
 * from it (train.init_from), transfer to 10% of Fashion-MNIST and its scratch baseline, each
 * evaluated, and a results page with plots and sample grids.
 */
import assert from 'node:assert/strict';
import { mkdtemp, readFile, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { parseMaskdmArgs, runMaskdmExperiment } from '../../../train/experiments/maskdm.ts';

test('maskdm --tiny pre-trains with masks, fine-tunes and transfers, evaluates every run and writes the results page', { timeout: 600_000 }, async () => {
  const dir = await mkdtemp(join(tmpdir(), 'tessera-maskdm-exp-'));
  try {
    const arms = await runMaskdmExperiment(parseMaskdmArgs(['--tiny', '--out', join(dir, 'runs'), '--doc', join(dir, 'results.md')]));
    assert.deepEqual(arms.map((r) => [r.name, r.part, r.config.data.name]), [
      ['Scratch', 'a', 'mnist'], ['Pre-train 90%', 'a', 'mnist'], ['Fine-tune', 'a', 'mnist'], ['Transfer', 'b', 'fashion-mnist'], ['Scratch 10%', 'b', 'fashion-mnist'],
    ]);
    for (const r of arms) {
      assert.equal(r.evals.length, 1, r.name);
      assert.ok(Number.isFinite(r.evals[0]!.fd) && r.evals[0]!.fd >= 0, r.name);
    }
    const [, pretrain, fine, transfer] = arms;
    assert.deepEqual([pretrain!.config.train.mask?.ratio, fine!.config.train.mask, fine!.config.train.lr_schedule], [0.9, undefined, 'cosine']);
    assert.deepEqual(fine!.init, { missing: 0, unexpected: 0 });
    assert.equal(transfer!.config.train.init_from, pretrain!.runDir);
    assert.ok(fine!.evals[0]!.seconds > pretrain!.seconds, 'the fine-tuning\'s time includes the pre-training\'s');
    const md = await readFile(join(dir, 'results.md'), 'utf8');
    assert.match(md, /\| Scratch \| 1\/1 \| \d+ \| \d+ \| \d+ \| [\d.]+ \|/);
    assert.match(md, /\| Fine-tune \| 1\/1 \|/);
    assert.match(md, /\| Scratch 10% \| 1\/1 \|/);
    assert.match(md, /8 of 64 patches visible per image/);
    assert.deepEqual((await readdir(dir)).filter((f) => f.endsWith('.png')).sort(), [
      'results-fine-tune.png', 'results-mnist-fd.png', 'results-scratch-10.png', 'results-scratch.png', 'results-transfer-fd.png', 'results-transfer.png',
    ]);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
  assert.throws(() => parseMaskdmArgs(['--budget', 'soon']), /--budget must be a number in \(0, Infinity\), got 'soon'/);
  assert.throws(() => parseMaskdmArgs(['--pretrain-fraction', '1.5']), /--pretrain-fraction must be a number in \(0, 1\), got '1.5'/);
});
