/**
 * A grid of sample images as one PNG, for looking at what a model generates during training.
 * Values in [-1, 1] map to 8-bit pixels as EDM's generate.py does: clip(x * 127.5 + 128, 0, 255),
 * truncated. Tiles are laid out row-major with `padding` pixels of `background` between and
 * around them.
 */
import { PNG } from 'pngjs';
import { DataError } from './errors.ts';

/** Layout of `imageGridPng`: columns, padding, background and scale. */
export interface GridOptions {
  /** Tiles per row (default: ceil(sqrt(N))). */
  readonly columns?: number;
  /** Pixels between and around tiles (default 2). */
  readonly padding?: number;
  /** Grey level 0..255 of the padding (default 255, white). */
  readonly background?: number;
  /** Each image pixel becomes scale x scale PNG pixels (nearest neighbour; default 1), so small samples stay visible. */
  readonly scale?: number;
}

/** The 8-bit value of a sample value in [-1, 1]. */
export function toPixel(x: number): number {
  const v = Math.floor(x * 127.5 + 128);
  return v < 0 || Number.isNaN(v) ? 0 : v > 255 ? 255 : v;
}

/**
 * Encodes `images` ([N, C, H, W], C = 1 or 3) as a PNG grid.
 * @example
 * const png = imageGridPng(await samples.data() as Float32Array, [16, 3, 32, 32], { columns: 4, scale: 2 });
 * await writeFile('samples.png', png);
 */
export function imageGridPng(images: Float32Array, shape: readonly [number, number, number, number], options: GridOptions = {}): Uint8Array {
  const [n, c, h, w] = shape;
  if (n * c * h * w !== images.length || n < 1 || h < 1 || w < 1) {
    throw new DataError(`imageGridPng: ${images.length} values do not fill shape [${shape.join(',')}] with at least one image`);
  }
  if (c !== 1 && c !== 3) throw new DataError(`imageGridPng: images need 1 or 3 channels, got ${c}`);
  const columns = options.columns ?? Math.ceil(Math.sqrt(n));
  const padding = options.padding ?? 2;
  const background = options.background ?? 255;
  const scale = options.scale ?? 1;
  if (!Number.isInteger(scale) || scale < 1) throw new DataError(`imageGridPng: scale must be an integer >= 1, got ${scale}`);
  const rows = Math.ceil(n / columns);
  const width = columns * (w * scale + padding) + padding;
  const height = rows * (h * scale + padding) + padding;
  const png = new PNG({ width, height, colorType: 6 });
  png.data.fill(background);
  for (let p = 3; p < png.data.length; p += 4) png.data[p] = 255;
  for (let i = 0; i < n; i++) {
    const x0 = padding + (i % columns) * (w * scale + padding);
    const y0 = padding + Math.floor(i / columns) * (h * scale + padding);
    for (let y = 0; y < h * scale; y++) {
      for (let x = 0; x < w * scale; x++) {
        const at = 4 * ((y0 + y) * width + x0 + x);
        for (let ch = 0; ch < 3; ch++) {
          const src = ((i * c + (c === 1 ? 0 : ch)) * h + Math.floor(y / scale)) * w + Math.floor(x / scale);
          png.data[at + ch] = toPixel(images[src]!);
        }
      }
    }
  }
  return new Uint8Array(PNG.sync.write(png));
}
