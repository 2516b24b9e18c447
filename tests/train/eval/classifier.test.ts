import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { random } from '../../../index.ts';
import { initClassifier, loadClassifier } from '../../../train/eval/classifier.ts';
import { treeToSafetensors } from '../../../train/stateDict.ts';

test('the committed MNIST classifier loads and records its accuracy, seed and command', async () => {
  const c = await loadClassifier('mnist');
  assert.equal(c._tag, 'Right');
  if (c._tag !== 'Right') return;
  assert.ok(Number(c.right.metadata.test_accuracy) >= 0.95);
  assert.match(c.right.metadata.command, /scripts\/train-classifier\.ts --dataset mnist/);
});

test('loadClassifier refuses a file for another dataset, a low accuracy, or missing metadata', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'tessera-clf-'));
  try {
    const params = initClassifier(random.key(1));
    const meta = { format: 'tessera-classifier', dataset: 'mnist', resolution: '32', test_accuracy: '0.99', test_images: '2000', seed: '0', command: 'x' };
    const write = async (name: string, m: Record<string, string>) => {
      await writeFile(join(dir, name), await treeToSafetensors(params, m));
      return join(dir, name);
    };
    assert.equal((await loadClassifier('mnist', await write('ok.safetensors', meta)))._tag, 'Right');
    const wrong = await loadClassifier('fashion-mnist', await write('a.safetensors', meta));
    assert.ok(wrong._tag === 'Left' && /holds the mnist classifier/.test(wrong.left.message));
    const low = await loadClassifier('mnist', await write('b.safetensors', { ...meta, test_accuracy: '0.5' }));
    assert.ok(low._tag === 'Left' && /below/.test(low.left.message));
    const { command: _, ...noCommand } = meta;
    const bad = await loadClassifier('mnist', await write('c.safetensors', noCommand));
    assert.ok(bad._tag === 'Left' && /command/.test(bad.left.message));
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
