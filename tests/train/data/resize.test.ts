import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { centerCrop, cropResize } from '../../../train/data/resize.ts';
import { numRuns } from '../fcRuns.ts';

test('resize: centre crop keeps the largest centred window of the target aspect', () => {
  assert.deepEqual(centerCrop(12, 8, 4, 4), { x: 2, y: 0, w: 8, h: 8 });
  assert.deepEqual(centerCrop(8, 12, 4, 4), { x: 0, y: 2, w: 8, h: 8 });
  assert.deepEqual(centerCrop(10, 10, 6, 2), { x: 0, y: 3, w: 10, h: 3 });
  assert.deepEqual(centerCrop(10, 10, 5, 5), { x: 0, y: 0, w: 10, h: 10 });
});

test('resize: 2x area downscale averages 2x2 blocks; same size is the identity', () => {
  const src = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16];
  assert.deepEqual([...cropResize(src, 1, 4, 4, 2, 2)], [3.5, 5.5, 11.5, 13.5]);
  assert.deepEqual([...cropResize(src, 1, 4, 4, 4, 4)], src);
});

test('resize: area resampling preserves the mean and constant images (any sizes)', () => {
  fc.assert(
    fc.property(fc.integer({ min: 1, max: 9 }), fc.integer({ min: 1, max: 9 }), fc.integer({ min: 1, max: 9 }), fc.integer({ min: 0, max: 255 }), (n, out, ch, v) => {
      const src = Array.from({ length: n * n }, (_, i) => (i * 37) % 256);
      const mean = (xs: ArrayLike<number>): number => Array.from(xs).reduce((a, b) => a + b, 0) / xs.length;
      assert.ok(Math.abs(mean(cropResize(src, 1, n, n, out, out)) - mean(src)) < 1e-3);
      const constant = cropResize(new Array(ch * n * n).fill(v), ch, n, n, out, out + 1);
      assert.ok(constant.every((x) => Math.abs(x - v) < 1e-3));
    }),
    { numRuns },
  );
});
