import { test } from 'node:test';
import assert from 'node:assert/strict';
import { cropPatches, patchChoice } from '../../train/patches.ts';

test('patch sizes follow ((1-p)2/5, (1-p)3/5, p) and are a pure function of (seed, step)', () => {
  const o = { height: 32, width: 32, realP: 0.5 };
  const counts = new Map<number, number>();
  const n = 20000;
  for (let s = 0; s < n; s++) {
    const c = patchChoice(o, s, 7, 4);
    counts.set(c.height, (counts.get(c.height) ?? 0) + 1);
    assert.equal(c.batchSize, 4 * (32 / c.height));
    assert.equal(c.width, c.height);
  }
  const expected = new Map([[8, 0.2], [16, 0.3], [32, 0.5]]);
  for (const [d, p] of expected) {
    const f = (counts.get(d) ?? 0) / n;
    assert.ok(Math.abs(f - p) < 4 * Math.sqrt((p * (1 - p)) / n), `size ${d}: frequency ${f} vs ${p}`);
  }
  assert.deepEqual(patchChoice(o, 123, 7, 4), patchChoice(o, 123, 7, 4));
});

test('real_p = 1 always gives the full image; the progressive schedule follows 20% / 50%', () => {
  for (let s = 0; s < 100; s++) assert.deepEqual(patchChoice({ height: 32, width: 48, realP: 1 }, s, 1, 2), { height: 32, width: 48, batchSize: 2 });
  assert.deepEqual(patchChoice({ height: 32, width: 48, realP: 0, sizes: [8, 8, 8] }, 0, 1, 2), { height: 8, width: 12, batchSize: 8 });
  const o = { height: 32, width: 32, realP: 0.5, progressive: true, totalSteps: 100 };
  assert.deepEqual([0, 19, 20, 49, 50, 99].map((s) => patchChoice(o, s, 1, 1).height), [8, 8, 16, 16, 32, 32]);
});

test('any patch size works, including ones missing from the reference code table (8 px at R = 32)', () => {
  const c = patchChoice({ height: 32, width: 32, realP: 0, sizes: [8, 8, 8], batchMultiplier: { 8: 3 } }, 0, 0, 2);
  assert.deepEqual(c, { height: 8, width: 8, batchSize: 6 });
  assert.deepEqual(patchChoice({ height: 40, width: 40, realP: 0, sizes: [5, 5, 5] }, 0, 0, 1), { height: 5, width: 5, batchSize: 8 });
  assert.throws(() => patchChoice({ height: 32, width: 32, realP: 0, sizes: [8, 8, 8], batchMultiplier: { 8: 0.5 } }, 0, 0, 2), /batch multiplier for patch size 8/);
  assert.throws(() => patchChoice({ height: 32, width: 32, realP: 0, sizes: [0, 8, 32] }, 0, 0, 2), /patch size 0 must be/);
});

test('crops are cut at uniform corners inside the image and copy the right pixels', () => {
  const [b, c, h, w] = [64, 2, 6, 5];
  const images = Float32Array.from({ length: b * c * h * w }, (_, i) => i);
  const { patches, top, left } = cropPatches(images, [b, c, h, w], 3, 2, 11, 5);
  for (let i = 0; i < b; i++) {
    assert.ok(top[i]! >= 0 && top[i]! <= h - 3 && left[i]! >= 0 && left[i]! <= w - 2);
    for (let ch = 0; ch < c; ch++) {
      for (let y = 0; y < 3; y++) {
        for (let x = 0; x < 2; x++) {
          assert.equal(patches[((i * c + ch) * 3 + y) * 2 + x], images[((i * c + ch) * h + top[i]! + y) * w + left[i]! + x]);
        }
      }
    }
  }
  assert.ok(new Set(top).size === h - 3 + 1, 'every row offset occurs');
  const full = cropPatches(images, [b, c, h, w], h, w, 11, 5);
  assert.deepEqual(full.patches, images);
  assert.ok(full.top.every((t) => t === 0));
});
