/** Nearest training images in pixel space: exact neighbours, their order, the median, the grid. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { pixelDataset } from '../../../train/data/dataset.ts';
import { medianNearestDistance, nearestImages, neighbourGridPng } from '../../../train/eval/neighbours.ts';

test('nearestImages finds each query\'s k nearest training images, nearest first, with L2 distances', () => {
  // Four 2x2 images of constant value 0, 64, 128 and 255 (in [-1, 1]: -1, -0.498, 0.004, 1).
  const train = pixelDataset({ count: 4, channels: 1, height: 2, width: 2, pixels: Uint8Array.from([0, 64, 128, 255].flatMap((v) => [v, v, v, v])) });
  const queries = { count: 2, side: 2, data: Float32Array.from([...train.get(2), ...[0.9, 0.9, 0.9, 0.9]]) };
  const nn = nearestImages(queries, train, 2);
  assert.deepEqual(Array.from(nn.index), [2, 1, 3, 2]);
  assert.equal(nn.distance[0], 0);
  // The second query is 0.1 from image 3 in each of 4 pixels: distance sqrt(4 * 0.01) = 0.2.
  assert.ok(Math.abs(nn.distance[2]! - 0.2) < 1e-6, `${nn.distance[2]}`);
  assert.ok(Math.abs(medianNearestDistance(nn) - 0.1) < 1e-6);
  const png = neighbourGridPng(queries, train, nn);
  assert.deepEqual(Array.from(png.subarray(1, 4)), [80, 78, 71]);   // 'PNG'
  assert.throws(() => nearestImages(queries, train, 5), /k must be an integer in \[1, 4\]/);
  assert.throws(() => nearestImages({ count: 1, side: 3, data: new Float32Array(9) }, train, 1), /queries are 3x3/);
});
