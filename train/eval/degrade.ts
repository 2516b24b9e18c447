/**
 * Known degradations of real images, on host arrays, for checking that a metric ranks what it
 * should: more noise or more blur must mean a larger distance to the clean images. Images are
 * [count, channels, side, side] in [-1, 1]; results are clipped back to [-1, 1] like a sampler's
 * output would be when saved.
 */
import { splitmix32 } from '../data/prng.ts';

/** Standard normals from a seeded uniform stream (Box-Muller). */
function normals(seed: number): () => number {
  const next = splitmix32(seed);
  return () => {
    const u = (next() + 1) / 2 ** 32;
    const v = next() / 2 ** 32;
    return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v);
  };
}

const clip = (x: number): number => (x < -1 ? -1 : x > 1 ? 1 : x);

/** x + sigma * N(0, 1) per value, clipped to [-1, 1]. */
export function addGaussianNoise(images: Float32Array, sigma: number, seed: number): Float32Array {
  const n = normals(seed);
  return images.map((x) => clip(x + sigma * n()));
}

/** The normalised 1-D Gaussian kernel of standard deviation `sigma` pixels, radius ceil(3 sigma). */
export function gaussianKernel(sigma: number): Float64Array {
  const r = Math.max(1, Math.ceil(3 * sigma));
  const k = new Float64Array(2 * r + 1);
  for (let i = -r; i <= r; i++) k[i + r] = Math.exp(-(i * i) / (2 * sigma * sigma));
  const s = k.reduce((a, b) => a + b, 0);
  return k.map((v) => v / s);
}

/**
 * Separable Gaussian blur of each plane (rows, then columns); outside the image counts as
 * background (-1), which is what MNIST's border is, so blurring does not brighten the edges.
 */
export function gaussianBlur(images: Float32Array, side: number, sigma: number): Float32Array {
  if (sigma <= 0) return images.slice();
  const k = gaussianKernel(sigma);
  const r = (k.length - 1) / 2;
  const planes = images.length / (side * side);
  const out = new Float32Array(images.length);
  const tmp = new Float64Array(side * side);
  const at = (plane: Float32Array | Float64Array, y: number, x: number) => (y < 0 || x < 0 || y >= side || x >= side ? -1 : plane[y * side + x]!);
  for (let p = 0; p < planes; p++) {
    const src = images.subarray(p * side * side, (p + 1) * side * side);
    for (let y = 0; y < side; y++) {
      for (let x = 0; x < side; x++) {
        let s = 0;
        for (let i = -r; i <= r; i++) s += k[i + r]! * at(src, y, x + i);
        tmp[y * side + x] = s;
      }
    }
    for (let y = 0; y < side; y++) {
      for (let x = 0; x < side; x++) {
        let s = 0;
        for (let i = -r; i <= r; i++) s += k[i + r]! * at(tmp, y + i, x);
        out[p * side * side + y * side + x] = clip(s);
      }
    }
  }
  return out;
}
