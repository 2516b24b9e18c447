/** `tessera eval` on a checkpoint of a one-step run: JSON with every metric, written to --out. */
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { latestCheckpoint } from '../../../train/checkpoint.ts';
import { resolveConfig } from '../../../train/config.ts';
import { orThrow } from '../../../train/errors.ts';
import { evalCommand } from '../../../train/eval/cli.ts';
import { trainRun } from '../../../train/run.ts';

test('evalCommand samples from a checkpoint and writes FD, KID, precision and recall', { timeout: 300_000 }, async () => {
  const dir = await mkdtemp(join(tmpdir(), 'tessera-eval-'));
  try {
    const config = orThrow(resolveConfig({
      backend: 'cpu',
      model: { kind: 'patch', model_channels: 4, channel_mult: [1, 2], num_blocks: 1, attn_resolutions: [], dropout: 0 },
      data: { name: 'mnist', resolution: 16 },
      train: { batch_size: 4, steps: 1, checkpoint_every: 1, log_every: 1, sample_every: 100 },
    }));
    await trainRun({ runDir: dir, config, gridSamples: 0 });
    const ck = (await latestCheckpoint(dir))!;
    const out = join(dir, 'eval.json');
    await evalCommand(['--checkpoint', ck, '--samples', '8', '--steps', '2', '--real', '40', '--out', out, '--backend', 'cpu']);
    const r = JSON.parse(await readFile(out, 'utf8')) as Record<string, unknown>;
    assert.equal(r['dataset'], 'mnist');
    assert.equal(r['generated'], 8);
    assert.equal(r['real'], 40);
    for (const k of ['fd', 'precision', 'recall']) assert.ok(Number.isFinite(r[k]), k);
    assert.ok(Number.isFinite((r['kid'] as { mean: number }).mean));
    await assert.rejects(evalCommand(['--samples', '8']), /--checkpoint is required/);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
