/**
 * MaskDM's masks on the patch grid (Lei et al. 2023, "Masked Diffusion Models are Fast Distribution
 * Learners", Sec. 3): random patches, random k x k blocks of patches aligned to the block grid, or one
 * visible crop. Each sample of a batch gets its own mask, with the same number of masked tokens for
 * every sample (so visible tokens form a dense [B, nVisible] batch); the extra tokens (time, class)
 * are not on the grid and are never masked.
 *
 * A mask is returned as the visible tokens' grid indices, int32 [B, nVisible], ascending per sample:
 * what `uvit`'s `apply` takes to drop the others. Masks are pure functions of a PRNG key, built from
 * primitives (random bits, comparisons, sums), so they are drawn inside a compiled training step and
 * every backend draws the same mask from the same key.
 *
 * With no sort primitive, "choose m of L positions uniformly" ranks L random 32-bit draws by
 * pairwise comparison (rank_i = #{j : u_j < u_i, ties broken by index}), which is a uniformly random
 * permutation, and masks the m lowest ranks: O(L^2) comparisons per sample, a few hundred thousand
 * for the 256 tokens of MaskDM's settings, negligible beside the network.
 */
import {
  add, broadcastTo, cast, equal, iota, less, logicalAnd, logicalNot, logicalOr, mul, randomBits, reshape, sum, tensor, where,
  random, ShapeError, fmtShape, type Tensor,
} from '../core/index.ts';

/** A MaskDM mask: its kind and its size (a ratio of the patches, a block or a crop side in patches). */
export type MaskConfig =
  /** Random patches: floor(ratio L) of the L patches masked (the reference's RandomMaskingGenerator). */
  | { readonly kind: 'patch'; readonly ratio: number }
  /**
   * Random aligned blocks of blockSize x blockSize patches: floor(floor(ratio L) / k^2) of the
   * (side / k)^2 blocks masked (RandomBlockMaskingGenerator). MaskDM's main setting: k = 4, ratio 0.9.
   */
  | { readonly kind: 'block'; readonly ratio: number; readonly blockSize: number }
  /** One visible square crop of cropSize x cropSize patches at a uniformly random place (CropMaskingGenerator). */
  | { readonly kind: 'crop'; readonly cropSize: number };

function checkRatio(ratio: number): void {
  if (!(ratio >= 0 && ratio < 1)) throw new ShapeError(`mask: ratio must be in [0, 1), got ${ratio}`);
}

/**
 * The number of masked patches on a side x side grid: the same for every sample.
 * @example
 * maskedCount({ kind: 'block', ratio: 0.9, blockSize: 2 }, 8);   // 56 of 64: 14 blocks of 2x2 patches
 * maskedCount({ kind: 'patch', ratio: 0.5 }, 8);      // 32
 */
export function maskedCount(config: MaskConfig, side: number): number {
  if (!Number.isInteger(side) || side < 1) throw new ShapeError(`mask: grid side must be an integer >= 1, got ${side}`);
  const l = side * side;
  switch (config.kind) {
    case 'patch':
      checkRatio(config.ratio);
      return Math.floor(config.ratio * l);
    case 'block': {
      checkRatio(config.ratio);
      const k = config.blockSize;
      if (!Number.isInteger(k) || k < 1 || side % k !== 0) throw new ShapeError(`mask: blockSize ${k} must be an integer >= 1 dividing the grid side ${side}`);
      return Math.floor(Math.floor(config.ratio * l) / (k * k)) * k * k;
    }
    case 'crop': {
      const c = config.cropSize;
      if (!Number.isInteger(c) || c < 1 || c > side) throw new ShapeError(`mask: cropSize ${c} must be an integer in [1, ${side}]`);
      return l - c * c;
    }
    default:
      return config satisfies never;
  }
}

/**
 * The number of visible patches per sample.
 * @example
 * visibleCount({ kind: 'block', ratio: 0.9, blockSize: 2 }, 8);   // 8 of 64
 * visibleCount({ kind: 'crop', cropSize: 3 }, 8);     // 9
 */
export function visibleCount(config: MaskConfig, side: number): number {
  return side * side - maskedCount(config, side);
}

/**
 * bool [B, n]: for each sample, exactly `m` of n positions true, every m-subset equally likely.
 * rank_i = #{j : u_j < u_i or (u_j = u_i and j < i)} is a permutation of 0..n-1; rank < m is masked.
 */
export function randomSubset(key: Tensor, batch: number, n: number, m: number): Tensor {
  const u = randomBits(key, [batch, n]);
  const ui = reshape(u, [batch, n, 1]);
  const uj = reshape(u, [batch, 1, n]);
  const i = iota([batch, n, n], 1);
  const j = iota([batch, n, n], 2);
  const before = logicalOr(less(uj, ui), logicalAnd(equal(uj, ui), less(j, i)));
  return less(sum(cast(before, 'int32'), 2), m);
}

/**
 * The ascending indices of the true entries of `keep` [B, L], which has exactly `count` per row:
 * int32 [B, count]. Entry i's place is the number of kept entries before it; slot c collects the
 * index whose place is c. O(L^2 + L count) comparisons.
 */
export function keptIndices(keep: Tensor, count: number): Tensor {
  const [b, l] = keep.shape as [number, number];
  const k = cast(keep, 'int32');
  const place = sum(where(less(iota([b, l, l], 2), iota([b, l, l], 1)), broadcastTo(reshape(k, [b, 1, l]), [b, l, l]), 0), 2);
  const hit = logicalAnd(reshape(keep, [b, 1, l]), equal(reshape(place, [b, 1, l]), iota([b, count, l], 1)));
  return sum(where(hit, iota([b, count, l], 2), 0), 2);
}

/** A crop's visible indices: (top + q // c) side + left + q % c for q < c^2, ascending. */
function cropIndices(key: Tensor, batch: number, side: number, c: number): Tensor {
  const [kTop, kLeft] = random.split(key, 2) as [Tensor, Tensor];
  const top = random.randint(kTop, [batch, 1], 0, side - c + 1);
  const left = random.randint(kLeft, [batch, 1], 0, side - c + 1);
  const q = Array.from({ length: c * c }, (_, i) => i);
  const rows = tensor(q.map((i) => Math.floor(i / c) * side), [1, c * c], 'int32');
  const cols = tensor(q.map((i) => i % c), [1, c * c], 'int32');
  return add(add(mul(top, side), left), add(rows, cols));
}

/**
 * The visible patches of a batch of masks drawn from `key`: int32 [batch, visibleCount(config, side)],
 * ascending grid indices (row-major on the side x side patch grid) per sample.
 * @example
 * const visible = drawVisible(random.key(0), { kind: 'block', ratio: 0.9, blockSize: 2 }, 4, model.side);   // int32 [4, 8] for side 8
 * const eps = model.apply(params, x, t, { visible });   // model from uvit: only the visible tokens go through the blocks
 */
export function drawVisible(key: Tensor, config: MaskConfig, batch: number, side: number): Tensor {
  const l = side * side;
  const masked = maskedCount(config, side);
  switch (config.kind) {
    case 'patch':
      return keptIndices(logicalNot(randomSubset(key, batch, l, masked)), l - masked);
    case 'block': {
      const k = config.blockSize;
      const g = side / k;
      const blocks = reshape(randomSubset(key, batch, g * g, masked / (k * k)), [batch, g, 1, g, 1]);
      const patches = reshape(broadcastTo(blocks, [batch, g, k, g, k]), [batch, l]);
      return keptIndices(logicalNot(patches), l - masked);
    }
    case 'crop':
      return cropIndices(key, batch, side, config.cropSize);
    default:
      return config satisfies never;
  }
}

/**
 * The visible patches' pixels as a float mask [B, 1, side p, side p]: 1 on every pixel of a visible
 * patch, 0 elsewhere. For the masked loss (MaskDM: visible pixels only).
 * @example
 * const m = visiblePixelMask(visible, 8, 4);          // [B, 1, 32, 32]: 1 on the pixels of visible patches
 * const loss = div(sum(mul(m, square(sub(eps, noise)))), sum(m));
 */
export function visiblePixelMask(visible: Tensor, side: number, patchSize: number): Tensor {
  if (visible.rank !== 2 || visible.dtype !== 'int32') throw new ShapeError(`visiblePixelMask: expects int32 [B, n], got ${visible.dtype} ${fmtShape(visible.shape)}`);
  const [b, n] = visible.shape as [number, number];
  const l = side * side;
  const hit = sum(cast(equal(reshape(visible, [b, 1, n]), iota([b, l, n], 1)), 'float32'), 2);
  const p = patchSize;
  return reshape(broadcastTo(reshape(hit, [b, 1, side, 1, side, 1]), [b, 1, side, p, side, p]), [b, 1, side * p, side * p]);
}
