/**
 * Centre crop and area resampling of planar images ([C, h, w] -> [C, H, W]).
 *
 * The crop keeps the largest centred window with the target's aspect ratio, so nothing is
 * stretched. Resampling is by area (box filter): each output pixel is the average of the source
 * area it covers, with fractional weights at the edges. We chose area over bilinear because
 * datasets are mostly downscaled, where bilinear aliases (it reads 4 pixels whatever the scale)
 * and area does not; area also preserves the image mean exactly. Upscaling by area is nearest
 * neighbour with blended seams, which is acceptable for the rare small source.
 */

/**
 * The centred window of a w x h image with the aspect ratio of W x H.
 * @example
 * centerCrop(40, 30, 32, 32);                         // { x: 5, y: 0, w: 30, h: 30 }: the centred square
 */
export function centerCrop(w: number, h: number, W: number, H: number): { x: number; y: number; w: number; h: number } {
  // Compare w/h with W/H in integers to avoid rounding surprises on exact ratios.
  if (w * H > W * h) {
    const cw = Math.max(1, Math.round((h * W) / H));
    return { x: Math.floor((w - cw) / 2), y: 0, w: cw, h };
  }
  const ch = Math.max(1, Math.round((w * H) / W));
  return { x: 0, y: Math.floor((h - ch) / 2), w, h: ch };
}

/** For each output index, the source indices and weights (summing to 1) of a 1-D area resample. */
function areaWeights(inSize: number, outSize: number): { index: number[]; weight: number[] }[] {
  const scale = inSize / outSize;
  return Array.from({ length: outSize }, (_, o) => {
    const lo = o * scale;
    const hi = (o + 1) * scale;
    const index: number[] = [];
    const weight: number[] = [];
    for (let i = Math.floor(lo); i < Math.min(inSize, Math.ceil(hi)); i++) {
      const overlap = Math.min(hi, i + 1) - Math.max(lo, i);
      if (overlap > 1e-12) {
        index.push(i);
        weight.push(overlap / scale);
      }
    }
    return { index, weight };
  });
}

/**
 * Crops `src` ([C, h, w], any numeric array) to the centred window with the aspect ratio of
 * W x H and resamples it by area to [C, H, W].
 * @example
 * const out = cropResize(image.pixels, 3, image.height, image.width, 64, 64);   // Float32Array [3, 64, 64]
 */
export function cropResize(src: ArrayLike<number>, c: number, h: number, w: number, H: number, W: number): Float32Array {
  const crop = centerCrop(w, h, W, H);
  const wx = areaWeights(crop.w, W);
  const wy = areaWeights(crop.h, H);
  const rows = new Float32Array(crop.h * W);
  const out = new Float32Array(c * H * W);
  for (let ch = 0; ch < c; ch++) {
    const plane = ch * h * w;
    // Horizontal pass over the cropped rows, then vertical: separable, so O(pixels x taps).
    for (let y = 0; y < crop.h; y++) {
      const row = plane + (crop.y + y) * w + crop.x;
      for (let X = 0; X < W; X++) {
        const { index, weight } = wx[X]!;
        let acc = 0;
        for (let k = 0; k < index.length; k++) acc += src[row + index[k]!]! * weight[k]!;
        rows[y * W + X] = acc;
      }
    }
    for (let Y = 0; Y < H; Y++) {
      const { index, weight } = wy[Y]!;
      for (let X = 0; X < W; X++) {
        let acc = 0;
        for (let k = 0; k < index.length; k++) acc += rows[index[k]! * W + X]! * weight[k]!;
        out[(ch * H + Y) * W + X] = acc;
      }
    }
  }
  return out;
}
