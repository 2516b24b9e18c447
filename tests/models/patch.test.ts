/** Patch Diffusion's coordinate channels. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { registerReferenceBackend } from '../../backends/reference/index.ts';
import { setDefaultBackend, tensor } from '../../core/index.ts';
import { batchCoordinates, fullCoordinates, patchCoordinates } from '../../models/patch.ts';

registerReferenceBackend();
setDefaultBackend('reference');

const f32 = Math.fround;

test('full grid: corners exactly -1 and 1, channel 0 = x along the width, channel 1 = y along the height', async () => {
  const c = fullCoordinates({ height: 5, width: 8 });
  assert.deepEqual(c.shape, [2, 5, 8]);
  const [xs, ys] = (await c.toArray()) as number[][][];
  assert.deepEqual(xs![0], [0, 1, 2, 3, 4, 5, 6, 7].map((i) => f32((f32(i / 7) - 0.5) * 2)));
  assert.ok(xs!.every((row) => row[0] === -1 && row[7] === 1), 'x is constant down a column');
  assert.deepEqual(ys!.map((row) => row[3]), [-1, -0.5, 0, 0.5, 1]);
  assert.ok(ys!.every((row) => row.every((v) => v === row[0])), 'y is constant along a row');
});

test('a patch takes its values from the full-resolution grid (non-square image)', async () => {
  const full = { height: 6, width: 10 };
  const grid = (await fullCoordinates(full).toArray()) as number[][][];
  const p = patchCoordinates(full, 2, 5, { h: 3, w: 4 });
  assert.deepEqual(p.shape, [2, 3, 4]);
  const v = (await p.toArray()) as number[][][];
  for (let ch = 0; ch < 2; ch++) {
    for (let i = 0; i < 3; i++) assert.deepEqual(v[ch]![i], grid[ch]![2 + i]!.slice(5, 9));
  }
  const square = (await patchCoordinates({ height: 64, width: 64 }, 48, 0, 16).toArray()) as number[][][];
  assert.equal(square[1]![15]![0], 1, 'bottom row of the image');
  assert.equal(square[0]![0]![0], -1, 'left column of the image');
});

test('per-sample corners give [N, 2, h, w]; arrays and int tensors agree', async () => {
  const full = { height: 8, width: 8 };
  const a = patchCoordinates(full, [0, 4], [4, 0], 4);
  const b = patchCoordinates(full, tensor([0, 4], [2], 'int32'), tensor([4, 0], [2], 'int32'), 4);
  assert.deepEqual(a.shape, [2, 2, 4, 4]);
  assert.deepEqual(await a.data(), await b.data());
  const one = await patchCoordinates(full, 4, 0, 4).data();
  assert.deepEqual(Array.from(await a.data()).slice(32), Array.from(one));
  assert.throws(() => patchCoordinates(full, [0, 1, 2], [0, 1], 4), /3 tops but 2 lefts/);
  assert.throws(() => patchCoordinates({ height: 1, width: 8 }, 0, 0, 1), /at least 2x2/);
  assert.deepEqual(batchCoordinates(fullCoordinates(full), 3).shape, [3, 2, 8, 8]);
});

test('a larger canvas extends the grid linearly beyond [-1, 1]', async () => {
  const c = (await patchCoordinates({ height: 5, width: 5 }, -2, -2, 9).toArray()) as number[][][];
  assert.deepEqual(c[0]![0], [-2, -1.5, -1, -0.5, 0, 0.5, 1, 1.5, 2]);
});
