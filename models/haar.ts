/**
 * The orthonormal 2-D Haar transform of NCHW images, over any number of levels: the decomposition
 * behind multi-scale non-uniform diffusion (MSDiff, Batzolis et al. 2022, Sec. 3), which diffuses the
 * detail bands of an image faster than its coarse approximation.
 *
 * One level maps each 2x2 block [p q; r s] of every channel to four coefficients,
 *   a = (p + q + r + s) / 2,  h = (p - q + r - s) / 2,  v = (p + q - r - s) / 2,  d = (p - q - r + s) / 2,
 * an orthonormal 4x4 matrix, so norms are preserved and the inverse is the adjoint. Both are
 * written as one grouped stride-2 convolution and its transpose: primitives the autodiff rules and
 * every backend already have, and the inverse is the exact adjoint of the transform.
 */
import { conv2d, conv2dGradInput, reshape, shapesEqual, slice, concat, tensor, ShapeError, fmtShape, type Tensor } from '../core/index.ts';

/** A one-level split: the approximation [N, C, H/2, W/2] and the detail bands [N, 3C, H/2, W/2] (h, v, d per channel). */
export interface HaarLevel {
  readonly approx: Tensor;
  readonly detail: Tensor;
}

/**
 * An image split over several levels: `details[0]` holds the finest bands (of the full image, at
 * half its size), `details[L - 1]` the coarsest, and `approx` the coarse approximation at 1 / 2^L
 * of the size. A pytree, so it can be diffused, differentiated and checkpointed as a whole.
 */
export interface HaarComponents {
  readonly details: readonly Tensor[];
  readonly approx: Tensor;
}

/** The four 2x2 filters (a, h, v, d) of every channel: weights [4C, 1, 2, 2] for a grouped convolution. */
function haarFilters(channels: number, dtype: Tensor['dtype']): Tensor {
  const bands = [
    [1, 1, 1, 1],
    [1, -1, 1, -1],
    [1, 1, -1, -1],
    [1, -1, -1, 1],
  ];
  const values = Array.from({ length: channels }, () => bands.flat().map((v) => v / 2)).flat();
  return tensor(values, [4 * channels, 1, 2, 2], dtype);
}

function checkImage(op: string, x: Tensor): [number, number, number, number] {
  if (x.rank !== 4) throw new ShapeError(`${op}: expects NCHW images, got ${fmtShape(x.shape)}`);
  const [n, c, h, w] = x.shape as [number, number, number, number];
  if (h % 2 !== 0 || w % 2 !== 0) throw new ShapeError(`${op}: height and width must be even, got ${fmtShape(x.shape)}`);
  return [n, c, h, w];
}

/**
 * One level of the orthonormal Haar transform.
 * @example
 * const { approx, detail } = haar2d(random.normal(random.key(0), [2, 3, 32, 32]));   // [2, 3, 16, 16], [2, 9, 16, 16]
 * const back = inverseHaar2d({ approx, detail });     // [2, 3, 32, 32]
 */
export function haar2d(x: Tensor): HaarLevel {
  const [n, c, h, w] = checkImage('haar2d', x);
  const coefficients = reshape(conv2d(x, haarFilters(c, x.dtype), { stride: 2, groups: c }), [n, c, 4, h / 2, w / 2]);
  return {
    approx: reshape(slice(coefficients, [0, 0, 0, 0, 0], [n, c, 1, h / 2, w / 2]), [n, c, h / 2, w / 2]),
    detail: reshape(slice(coefficients, [0, 0, 1, 0, 0], [n, c, 4, h / 2, w / 2]), [n, 3 * c, h / 2, w / 2]),
  };
}

/**
 * The inverse (and adjoint) of `haar2d`.
 * @example
 * const x = inverseHaar2d(haar2d(images));            // images again, up to rounding
 */
export function inverseHaar2d({ approx, detail }: HaarLevel): Tensor {
  if (approx.rank !== 4 || detail.rank !== 4) throw new ShapeError(`inverseHaar2d: expects NCHW approx and detail, got ${fmtShape(approx.shape)} and ${fmtShape(detail.shape)}`);
  const [n, c, h, w] = approx.shape as [number, number, number, number];
  const want = [n, 3 * c, h, w];
  if (!shapesEqual(detail.shape, want)) {
    throw new ShapeError(`inverseHaar2d: detail bands must be ${fmtShape(want)} for approx ${fmtShape(approx.shape)}, got ${fmtShape(detail.shape)}`);
  }
  const coefficients = concat([reshape(approx, [n, c, 1, h, w]), reshape(detail, [n, c, 3, h, w])], 2);
  return conv2dGradInput(reshape(coefficients, [n, 4 * c, h, w]), haarFilters(c, approx.dtype), [n, c, 2 * h, 2 * w], { stride: 2, groups: c });
}

/**
 * `levels` levels of the transform (0 levels: the image is its own approximation).
 * @example
 * const parts = haarDecompose(random.normal(random.key(0), [4, 1, 32, 32]), 2);
 * // parts.details: [4, 3, 16, 16] then [4, 3, 8, 8]; parts.approx: [4, 1, 8, 8]
 */
export function haarDecompose(x: Tensor, levels: number): HaarComponents {
  if (!Number.isInteger(levels) || levels < 0) throw new ShapeError(`haarDecompose: levels must be a whole number >= 0, got ${levels}`);
  const details: Tensor[] = [];
  let approx = x;
  for (let l = 0; l < levels; l++) {
    if (approx.rank === 4 && (approx.shape[2]! % 2 !== 0 || approx.shape[3]! % 2 !== 0)) {
      throw new ShapeError(`haarDecompose: ${fmtShape(x.shape)} cannot be halved ${levels} times (level ${l + 1} sees ${fmtShape(approx.shape)})`);
    }
    const level = haar2d(approx);
    details.push(level.detail);
    approx = level.approx;
  }
  return { details, approx };
}

/**
 * The inverse of `haarDecompose`.
 * @example
 * const x = haarReconstruct(haarDecompose(images, 3));   // images again, up to rounding
 */
export function haarReconstruct({ details, approx }: HaarComponents): Tensor {
  return details.reduceRight((a, detail) => inverseHaar2d({ approx: a, detail }), approx);
}
