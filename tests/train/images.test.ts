import assert from 'node:assert/strict';
import { test } from 'node:test';
import { PNG } from 'pngjs';
import { imageGridPng, toPixel } from '../../train/images.ts';

test('images: [-1, 1] maps to 8-bit pixels as EDM does', () => {
  assert.deepEqual([-1, -2, 0, 1, 2, NaN].map(toPixel), [0, 0, 128, 255, 255, 0]);
});

test('images: an RGB grid decodes back to the expected pixels, padding included', () => {
  // 3 images of 2x3 (H x W); image i has R = pixel index, G = -1 (0), B = i-th level.
  const [n, c, h, w] = [3, 3, 2, 3];
  const images = new Float32Array(n * c * h * w);
  const levels = [-1, 0, 1];
  for (let i = 0; i < n; i++) {
    for (let p = 0; p < h * w; p++) {
      images[((i * c + 0) * h) * w + p] = p / 127.5 - 1;
      images[((i * c + 1) * h) * w + p] = -1;
      images[((i * c + 2) * h) * w + p] = levels[i]!;
    }
  }
  const png = PNG.sync.read(Buffer.from(imageGridPng(images, [n, c, h, w], { columns: 2, padding: 1, background: 200 })));
  assert.deepEqual([png.width, png.height], [2 * (3 + 1) + 1, 2 * (2 + 1) + 1]);
  const at = (x: number, y: number): number[] => Array.from(png.data.subarray(4 * (y * png.width + x), 4 * (y * png.width + x) + 4));
  assert.deepEqual(at(0, 0), [200, 200, 200, 255]);
  for (let i = 0; i < n; i++) {
    const x0 = 1 + (i % 2) * 4;
    const y0 = 1 + Math.floor(i / 2) * 3;
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < w; x++) assert.deepEqual(at(x0 + x, y0 + y), [toPixel(Math.fround((y * w + x) / 127.5 - 1)), 0, toPixel(levels[i]!), 255]);
    }
  }
  // The empty fourth cell is background.
  assert.deepEqual(at(5, 4), [200, 200, 200, 255]);
});

test('images: grey images fill all three colour channels; bad shapes are rejected', () => {
  const png = PNG.sync.read(Buffer.from(imageGridPng(new Float32Array([1, -1, 0, 0.5]), [1, 1, 2, 2], { padding: 0 })));
  assert.deepEqual(Array.from(png.data), [255, 255, 255, 255, 0, 0, 0, 255, 128, 128, 128, 255, 191, 191, 191, 255]);
  assert.throws(() => imageGridPng(new Float32Array(5), [1, 1, 2, 2]), /5 values do not fill shape \[1,1,2,2\]/);
  assert.throws(() => imageGridPng(new Float32Array(8), [1, 2, 2, 2]), /1 or 3 channels, got 2/);
});

test('scale draws each pixel as a scale x scale block', () => {
  const png = PNG.sync.read(Buffer.from(imageGridPng(new Float32Array([1, -1, 0, 0.5]), [1, 1, 2, 2], { padding: 1, scale: 3 })));
  assert.equal(png.width, 1 + 6 + 1);
  assert.equal(png.height, 8);
  const grey = (x: number, y: number) => png.data[4 * (y * png.width + x)];
  // Image pixel (row 0, col 1) = -1 -> 0 covers PNG pixels x in [4, 7), y in [1, 4).
  for (let y = 1; y < 4; y++) for (let x = 4; x < 7; x++) assert.equal(grey(x, y), 0);
  assert.equal(grey(1, 1), toPixel(1));
  assert.equal(grey(6, 6), toPixel(0.5));
  assert.throws(() => imageGridPng(new Float32Array(4), [1, 1, 2, 2], { scale: 0 }), /scale must be an integer >= 1, got 0/);
});
