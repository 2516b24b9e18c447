import assert from 'node:assert/strict';
import { test } from 'node:test';
import { limitDataset, xflipDataset } from '../../../train/data/dataset.ts';
import { loadMnist } from '../../../train/data/mnist.ts';

function range(x: Float32Array): [number, number] {
  let lo = Infinity;
  let hi = -Infinity;
  for (const v of x) {
    lo = Math.min(lo, v);
    hi = Math.max(hi, v);
  }
  return [lo, hi];
}

test('mnist: 10,000 digits, 1x32x32 in [-1, 1], padded with background, labels by class', async () => {
  const ds = await loadMnist('mnist');
  assert.equal(ds.count, 10_000);
  assert.deepEqual([ds.channels, ds.height, ds.width], [1, 32, 32]);
  assert.equal(ds.labels?.length, 10_000);
  assert.equal(ds.classCount, 10);
  assert.deepEqual([ds.labels![0], ds.labels![9999]], [0, 9]);
  const counts = Array.from({ length: 10 }, (_, c) => ds.labels!.filter((l) => l === c).length);
  assert.deepEqual(counts, [1001, 1127, 991, 1032, 980, 863, 1014, 1070, 944, 978]);
  const img = ds.get(0);
  assert.equal(img.length, 1024);
  assert.deepEqual(range(img), [-1, 1]);
  // The 2-pixel border is background.
  for (let y = 0; y < 32; y++) for (const x of [0, 1, 30, 31]) assert.equal(img[y * 32 + x], -1);
  // The package stores pixel/255 to 3 decimals; we recover exact 8-bit levels.
  for (const v of img) assert.ok(Number.isInteger(Math.round((v + 1) * 127.5 * 1000) / 1000));
  assert.notDeepEqual(ds.get(0), ds.get(1));
  assert.throws(() => ds.get(10_000), /index 10000 is out of range/);
});

test('fashion-mnist: 70,000 images (the two empty entries skipped), labels 0..9', async () => {
  const ds = await loadMnist('fashion-mnist');
  assert.equal(ds.count, 70_000);
  const counts = Array.from({ length: 10 }, (_, c) => ds.labels!.filter((l) => l === c).length);
  assert.deepEqual(counts, Array(10).fill(7000));
  const [lo, hi] = range(ds.get(123));
  assert.ok(lo >= -1 && hi <= 1 && hi > lo);
});

test('mnist: resizing to 16x16 by area and 28x28 native', async () => {
  const small = await loadMnist('mnist', { resolution: 16 });
  assert.deepEqual([small.height, small.width, small.get(5).length], [16, 16, 256]);
  const native = await loadMnist('mnist', { resolution: 28 });
  const padded = await loadMnist('mnist');
  const a = native.get(7);
  const b = padded.get(7);
  for (let y = 0; y < 28; y++) for (let x = 0; x < 28; x++) assert.equal(b[(y + 2) * 32 + x + 2], a[y * 28 + x]);
  await assert.rejects(loadMnist('mnist', { resolution: 20, fit: 'pad' }), /cannot pad 28x28 images to 20x20/);
});

test('datasets: seeded limit and x-flip are deterministic values', async () => {
  const ds = await loadMnist('mnist');
  const a = limitDataset(ds, 5000, 1);
  const b = limitDataset(ds, 5000, 1);
  const c = limitDataset(ds, 5000, 2);
  assert.equal(a.count, 5000);
  assert.deepEqual(a.get(17), b.get(17));
  const differs = Array.from({ length: 100 }, (_, i) => i).some((i) => a.get(i).some((v, k) => v !== c.get(i)[k]));
  assert.ok(differs, 'another seed picks another subset');
  assert.ok(new Set(a.labels).size === 10, 'a random subset holds every class');
  assert.equal(limitDataset(ds, undefined, 0), ds);
  const f = xflipDataset(a);
  assert.equal(f.count, 10_000);
  const img = a.get(3);
  const flipped = f.get(5003);
  for (let y = 0; y < 32; y++) for (let x = 0; x < 32; x++) assert.equal(flipped[y * 32 + x], img[y * 32 + 31 - x]);
  assert.deepEqual(f.get(3), img);
  assert.equal(f.labels![5003], a.labels![3]);
});
