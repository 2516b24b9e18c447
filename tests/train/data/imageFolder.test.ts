import assert from 'node:assert/strict';
import { mkdir, mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { isLeft } from 'fp-ts/lib/Either.js';
import jpeg from 'jpeg-js';
import { PNG } from 'pngjs';
import { orThrow } from '../../../train/errors.ts';
import { openImageFolder } from '../../../train/data/imageFolder.ts';
import { openDataset } from '../../../train/data/open.ts';
import { resolveConfig } from '../../../train/config.ts';

/** A w x h PNG filled with one colour, or with `pixel(x, y)`. */
function png(w: number, h: number, pixel: (x: number, y: number) => [number, number, number]): Buffer {
  const p = new PNG({ width: w, height: h });
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const [r, g, b] = pixel(x, y);
      p.data.set([r, g, b, 255], 4 * (y * w + x));
    }
  }
  return PNG.sync.write(p);
}

function jpg(w: number, h: number, rgb: [number, number, number]): Buffer {
  const data = Buffer.alloc(w * h * 4);
  for (let i = 0; i < w * h; i++) data.set([...rgb, 255], 4 * i);
  return Buffer.from(jpeg.encode({ data, width: w, height: h }, 100).data);
}

async function folder(): Promise<string> {
  const root = await mkdtemp(join(tmpdir(), 'tessera-images-'));
  await mkdir(join(root, 'sub'));
  await writeFile(join(root, 'a.png'), png(8, 8, () => [255, 0, 0]));
  await writeFile(join(root, 'b.PNG'), png(12, 8, (x) => (x < 2 || x >= 10 ? [0, 0, 0] : [0, 255, 0]))); // wide: centre crop drops the black sides
  await writeFile(join(root, 'sub', 'c.jpg'), jpg(16, 16, [0, 0, 255]));
  await writeFile(join(root, 'notes.txt'), 'not an image');
  return root;
}

test('image folder: decodes PNG and JPEG recursively in sorted order, centre-cropped and resized', async () => {
  const root = await folder();
  const ds = orThrow(await openImageFolder(root, { height: 4, width: 4 }));
  assert.equal(ds.count, 3);
  assert.deepEqual(ds.files, ['a.png', 'b.PNG', 'sub/c.jpg']);
  assert.deepEqual([ds.channels, ds.height, ds.width], [3, 4, 4]);
  const plane = (img: Float32Array, c: number): number[] => Array.from(img.subarray(c * 16, (c + 1) * 16));
  const red = ds.get(0);
  assert.deepEqual([plane(red, 0)[0], plane(red, 1)[0], plane(red, 2)[0]], [1, -1, -1]);
  const green = ds.get(1);
  assert.ok(plane(green, 1).every((v) => v === 1), 'the black borders of the wide image were cropped away');
  const blue = ds.get(2);
  assert.ok(plane(blue, 2).every((v) => v > 0.95) && plane(blue, 0).every((v) => v < -0.95), 'JPEG is lossy but close');
  assert.deepEqual(ds.skipped, []);
});

test('image folder: grey and non-square outputs', async () => {
  const root = await folder();
  const ds = orThrow(await openImageFolder(root, { height: 2, width: 6, channels: 1 }));
  assert.deepEqual([ds.channels, ds.height, ds.width, ds.get(0).length], [1, 2, 6, 12]);
  // BT.601 luma of pure red: round(0.299 * 255) = 76.
  assert.ok(ds.get(0).every((v) => v === Math.fround(76 / 127.5 - 1)));
});

test('image folder: a corrupt image is reported by path, or skipped and listed with skipCorrupt', async () => {
  const root = await folder();
  const bad = join(root, 'sub', 'broken.png');
  await writeFile(bad, Buffer.concat([png(8, 8, () => [1, 2, 3]).subarray(0, 40)]));
  await writeFile(join(root, 'empty.jpg'), Buffer.alloc(0));
  const r = await openImageFolder(root, { height: 4, width: 4 });
  assert.ok(isLeft(r));
  assert.match(r.left.message, new RegExp(`^${join(root, 'empty.jpg').replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}: not a PNG or JPEG file \\(first bytes: none, the file is empty\\) \\(pass skipCorrupt: true`));
  const ds = orThrow(await openImageFolder(root, { height: 4, width: 4, skipCorrupt: true }));
  assert.equal(ds.count, 3);
  assert.deepEqual(ds.skipped.map((s) => s.path).sort(), [join(root, 'empty.jpg'), bad]);
  assert.match(ds.skipped.find((s) => s.path === bad)!.reason, /cannot be decoded/);
});

test('image folder: seeded limit, empty and missing folders', async () => {
  const root = await folder();
  const a = orThrow(await openImageFolder(root, { height: 4, width: 4, limit: 2, seed: 9 }));
  const b = orThrow(await openImageFolder(root, { height: 4, width: 4, limit: 2, seed: 9 }));
  assert.equal(a.count, 2);
  assert.deepEqual(a.files, b.files);
  const empty = await mkdtemp(join(tmpdir(), 'tessera-empty-'));
  const e = await openImageFolder(empty, { height: 4, width: 4 });
  assert.ok(isLeft(e) && /no \.png, \.jpg or \.jpeg files found/.test(e.left.message));
  const m = await openImageFolder(join(empty, 'nope'), { height: 4, width: 4 });
  assert.ok(isLeft(m) && /cannot list the image folder/.test(m.left.message));
});

test('openDataset: a config data section becomes a dataset (limit, then x-flip)', async () => {
  const root = await folder();
  const config = orThrow(resolveConfig({ model: { channel_mult: [1], attn_resolutions: [] }, data: { name: 'folder', path: root, resolution: 4, limit: 2, xflip: true } }));
  const { dataset, skipped } = orThrow(await openDataset(config.data, config.train.seed));
  assert.equal(dataset.count, 4);
  assert.deepEqual(skipped, []);
  const mnist = orThrow(await openDataset(orThrow(resolveConfig({ data: { limit: 100 } })).data, 0));
  assert.equal(mnist.dataset.count, 100);
});
