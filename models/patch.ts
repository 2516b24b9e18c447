/**
 * Patch Diffusion's coordinate channels (Wang et al. 2023, Sec. 3.2; `training/patch_loss.py` of the
 * reference code): a patch cut at (top, left) from an H x W image is conditioned on two extra
 * channels [x, y] holding the pixel's position in the full image, each normalised as
 * (index / (R - 1) - 0.5) * 2 so that the full image spans exactly [-1, 1]; x runs along the width.
 */
import { add, broadcastTo, cast, concat, div, iota, isTensor, mul, reshape, sub, tensor, ShapeError, type Tensor } from '../core/index.ts';

export interface ImageSize {
  readonly height: number;
  readonly width: number;
}

/** A patch corner: one number for every sample, or one per sample (an array or an int/float tensor [N]). */
export type Corner = number | readonly number[] | Tensor;

/**
 * Coordinates of the `size` window whose top-left pixel is (top, left) in the full grid `full`:
 * [2, h, w] with channel 0 = x (column) and channel 1 = y (row). With per-sample corners
 * (arrays or tensors of length N) the result is [N, 2, h, w]. Windows may reach outside the image
 * (negative corners, larger sizes): the grid then extends linearly beyond [-1, 1], which samples a
 * larger canvas.
 * @example
 * const one = patchCoordinates({ height: 32, width: 32 }, 8, 8, 16);                          // [2, 16, 16]
 * const perSample = patchCoordinates({ height: 32, width: 32 }, [0, 16], [16, 0], 16);        // [2, 2, 16, 16]
 */
export function patchCoordinates(full: ImageSize, top: Corner, left: Corner, size: number | { readonly h: number; readonly w: number }): Tensor {
  const { height, width } = full;
  if (!(Number.isInteger(height) && Number.isInteger(width) && height >= 2 && width >= 2)) {
    throw new ShapeError(`patchCoordinates: the full image must be at least 2x2 pixels, got ${height}x${width}`);
  }
  const h = typeof size === 'number' ? size : size.h;
  const w = typeof size === 'number' ? size : size.w;
  if (!(Number.isInteger(h) && Number.isInteger(w) && h >= 1 && w >= 1)) throw new ShapeError(`patchCoordinates: invalid patch size ${h}x${w}`);
  const batched = typeof top !== 'number' || typeof left !== 'number';
  const n = batched ? lengthOf(top, left) : 1;
  const corner = (c: Corner) => reshape(asFloat(c, n), [n, 1, 1]);
  // (index / (R - 1) - 0.5) * 2; the division first, so the last index gives exactly 1.
  const axis = (offset: Tensor, r: number, along: 1 | 2) => mul(sub(div(add(iota([n, h, w], along, 'float32'), offset), r - 1), 0.5), 2);
  const xs = axis(corner(left), width, 2);
  const ys = axis(corner(top), height, 1);
  const grid = concat([reshape(xs, [n, 1, h, w]), reshape(ys, [n, 1, h, w])], 1);
  return batched ? grid : reshape(grid, [2, h, w]);
}

/**
 * The full-image grid [2, H, W]: what the patch model sees at full resolution (and samples on).
 * @example
 * const coords = fullCoordinates({ height: 32, width: 32 });   // [2, 32, 32], values in [-1, 1]
 */
export function fullCoordinates(full: ImageSize): Tensor {
  return patchCoordinates(full, 0, 0, { h: full.height, w: full.width });
}

/**
 * Broadcasts coordinates [2, h, w] or [N|1, 2, h, w] to a batch of `n`.
 * @example
 * const coords = batchCoordinates(fullCoordinates({ height: 32, width: 32 }), 8);   // [8, 2, 32, 32]
 */
export function batchCoordinates(coords: Tensor, n: number): Tensor {
  const c = coords.rank === 3 ? reshape(coords, [1, ...coords.shape]) : coords;
  if (c.rank !== 4 || c.shape[1] !== 2) throw new ShapeError(`batchCoordinates: expects [2,h,w] or [N,2,h,w], got [${coords.shape.join(',')}]`);
  return broadcastTo(c, [n, 2, c.shape[2]!, c.shape[3]!]);
}

function lengthOf(top: Corner, left: Corner): number {
  const len = (c: Corner) => (typeof c === 'number' ? undefined : isTensor(c) ? c.size : c.length);
  const a = len(top);
  const b = len(left);
  if (a !== undefined && b !== undefined && a !== b) throw new ShapeError(`patchCoordinates: ${a} tops but ${b} lefts`);
  return a ?? b ?? 1;
}

function asFloat(c: Corner, n: number): Tensor {
  if (typeof c === 'number') return broadcastTo(tensor([c]), [n]);
  if (isTensor(c)) {
    if (c.size !== n) throw new ShapeError(`patchCoordinates: corner tensor has ${c.size} entries, expected ${n}`);
    return reshape(cast(c, 'float32'), [n]);
  }
  return tensor([...c], [n]);
}
