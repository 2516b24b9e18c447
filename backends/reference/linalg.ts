/**
 * Contractions: batched matmul, and 2-D convolution with its two adjoints. Sums accumulate in
 * double and each output element is rounded once on store. Inner loops run over contiguous memory
 * (a row of the right matrix; a row of the output or of dy).
 *
 * Convolution (NCHW, OIHW weights, symmetric zero padding), per group g of `groups`:
 *   y[n, o, oy, ox] = Σ_{c, ky, kx} w[o, c, ky, kx] · x[n, g·C/G + c, oy·sh - ph + ky·dh, ox·sw - pw + kx·dw]
 * for output channels o in group g, with out-of-range x reading as 0. conv2dGradInput sends dy back
 * along the same index map (dx = Jᵀ dy) and conv2dGradWeight correlates x with dy (dw = Jᵀ dy in w).
 */
import type { ConvAttrs } from '../../core/tensor.ts';
import type { TypedArray } from '../../core/dtype.ts';
import { sizeOf, type Shape } from '../../core/shape.ts';

/** [...b, m, k] x [...b, k, n] -> [...b, m, n]; the batch dims of both operands are equal. */
export function matmul(a: TypedArray, b: TypedArray, aShape: Shape, bShape: Shape, out: TypedArray): void {
  const r = aShape.length;
  const batch = sizeOf(aShape.slice(0, r - 2));
  const m = aShape[r - 2]!;
  const k = aShape[r - 1]!;
  const n = bShape[r - 1]!;
  const row = new Float64Array(n);
  for (let t = 0; t < batch; t++) {
    for (let i = 0; i < m; i++) {
      row.fill(0);
      const aRow = (t * m + i) * k;
      for (let p = 0; p < k; p++) {
        const av = a[aRow + p]!;
        const bRow = (t * k + p) * n;
        for (let j = 0; j < n; j++) row[j]! += av * b[bRow + j]!;
      }
      out.set(row, (t * m + i) * n);
    }
  }
}

interface ConvGeometry {
  readonly batch: number;
  readonly inChannels: number;
  readonly h: number;
  readonly w: number;
  readonly outChannels: number;
  /** Input and output channels per group. */
  readonly cg: number;
  readonly og: number;
  readonly kh: number;
  readonly kw: number;
  readonly oh: number;
  readonly ow: number;
  readonly groups: number;
  readonly attrs: ConvAttrs;
}

function geometry(xShape: Shape, wShape: Shape, yShape: Shape, attrs: ConvAttrs): ConvGeometry {
  const [batch, inChannels, h, w] = xShape as [number, number, number, number];
  const [outChannels, cg, kh, kw] = wShape as [number, number, number, number];
  const [, , oh, ow] = yShape as [number, number, number, number];
  return { batch, inChannels, h, w, outChannels, cg, og: outChannels / attrs.groups, kh, kw, oh, ow, groups: attrs.groups, attrs };
}

/**
 * The output positions [lo, hi) along one axis whose input position o·stride - pad + tap·dilation
 * falls inside [0, size).
 */
function validRange(tap: number, size: number, outSize: number, axis: 0 | 1, a: ConvAttrs): [number, number] {
  const shift = a.padding[axis] - tap * a.dilation[axis];
  const s = a.stride[axis];
  return [Math.max(0, Math.ceil(shift / s)), Math.min(outSize, Math.floor((size - 1 + shift) / s) + 1)];
}

/** The input position of output position `o` at kernel tap `tap` along one axis. */
function inputPos(o: number, tap: number, axis: 0 | 1, a: ConvAttrs): number {
  return o * a.stride[axis] - a.padding[axis] + tap * a.dilation[axis];
}

/**
 * The index map behind im2col: for column row k = (c, ky, kx) of one image's group of input
 * channels and each output row oy, calls `visit` with the offset of the column segment, the input
 * offset it reads, the valid output columns [ox0, ox1) (the rest is padding) and the input stride.
 */
function forEachTapRow(n: number, group: number, g: ConvGeometry, visit: (cRow: number, xRow: number, ox0: number, ox1: number, sx: number) => void): void {
  const a = g.attrs;
  const positions = g.oh * g.ow;
  for (let c = 0; c < g.cg; c++) {
    const xPlane = (n * g.inChannels + group * g.cg + c) * g.h * g.w;
    for (let ky = 0; ky < g.kh; ky++) {
      const [oy0, oy1] = validRange(ky, g.h, g.oh, 0, a);
      for (let kx = 0; kx < g.kw; kx++) {
        const [ox0, ox1] = validRange(kx, g.w, g.ow, 1, a);
        const row = ((c * g.kh + ky) * g.kw + kx) * positions;
        for (let oy = oy0; oy < oy1; oy++) {
          visit(row + oy * g.ow, xPlane + inputPos(oy, ky, 0, a) * g.w + inputPos(0, kx, 1, a), ox0, ox1, a.stride[1]);
        }
      }
    }
  }
}

/**
 * Unfolds one image's group of input channels into columns (im2col): row k = (c, ky, kx) holds,
 * for every output position p = (oy, ox), the input value that tap reads (0 in the padding). Every
 * convolution below is then a product with contiguous inner loops over positions.
 */
function im2col(x: TypedArray, n: number, group: number, g: ConvGeometry, cols: Float64Array): void {
  cols.fill(0);
  forEachTapRow(n, group, g, (cRow, xRow, ox0, ox1, sx) => {
    for (let ox = ox0; ox < ox1; ox++) cols[cRow + ox] = x[xRow + ox * sx]!;
  });
}

/** The transpose of im2col: adds each column entry back onto the input position it was read from. */
function col2imAdd(cols: Float64Array, n: number, group: number, g: ConvGeometry, dx: Float64Array): void {
  forEachTapRow(n, group, g, (cRow, xRow, ox0, ox1, sx) => {
    for (let ox = ox0; ox < ox1; ox++) dx[xRow + ox * sx]! += cols[cRow + ox]!;
  });
}

/** y = conv2d(x, w) of shape [N, O, OH, OW]: per image and group, y = W (im2col x). */
export function conv2d(x: TypedArray, w: TypedArray, xShape: Shape, wShape: Shape, yShape: Shape, attrs: ConvAttrs, y: TypedArray): void {
  const g = geometry(xShape, wShape, yShape, attrs);
  const positions = g.oh * g.ow;
  const taps = g.cg * g.kh * g.kw;
  const cols = new Float64Array(taps * positions);
  const acc = new Float64Array(positions);
  for (let n = 0; n < g.batch; n++) {
    for (let group = 0; group < g.groups; group++) {
      im2col(x, n, group, g, cols);
      for (let o = group * g.og; o < (group + 1) * g.og; o++) {
        acc.fill(0);
        const wRow = o * taps;
        // Four taps per pass: one read-modify-write of acc per four multiply-adds.
        let k = 0;
        for (; k + 4 <= taps; k += 4) {
          const w0 = w[wRow + k]!, w1 = w[wRow + k + 1]!, w2 = w[wRow + k + 2]!, w3 = w[wRow + k + 3]!;
          const c0 = k * positions, c1 = c0 + positions, c2 = c1 + positions, c3 = c2 + positions;
          for (let p = 0; p < positions; p++) acc[p]! += w0 * cols[c0 + p]! + w1 * cols[c1 + p]! + w2 * cols[c2 + p]! + w3 * cols[c3 + p]!;
        }
        for (; k < taps; k++) {
          const wv = w[wRow + k]!;
          const cRow = k * positions;
          for (let p = 0; p < positions; p++) acc[p]! += wv * cols[cRow + p]!;
        }
        y.set(acc, (n * g.outChannels + o) * positions);
      }
    }
  }
}

/** dx = conv2dGradInput(dy, w) of shape xShape = [N, C, H, W]: per image and group, col2im(Wᵀ dy). */
export function conv2dGradInput(dy: TypedArray, w: TypedArray, dyShape: Shape, wShape: Shape, xShape: Shape, attrs: ConvAttrs, dx: TypedArray): void {
  const g = geometry(xShape, wShape, dyShape, attrs);
  const positions = g.oh * g.ow;
  const taps = g.cg * g.kh * g.kw;
  const cols = new Float64Array(taps * positions);
  const dyRows = new Float64Array(4 * positions);
  const acc = new Float64Array(g.batch * g.inChannels * g.h * g.w);
  for (let n = 0; n < g.batch; n++) {
    for (let group = 0; group < g.groups; group++) {
      cols.fill(0);
      // Four output channels per pass: one read-modify-write of a column row per four multiply-adds.
      let o = group * g.og;
      const end = (group + 1) * g.og;
      for (; o + 4 <= end; o += 4) {
        for (let j = 0; j < 4; j++) {
          const src = (n * g.outChannels + o + j) * positions;
          for (let p = 0; p < positions; p++) dyRows[j * positions + p] = dy[src + p]!;
        }
        for (let k = 0; k < taps; k++) {
          const w0 = w[o * taps + k]!, w1 = w[(o + 1) * taps + k]!, w2 = w[(o + 2) * taps + k]!, w3 = w[(o + 3) * taps + k]!;
          const cRow = k * positions;
          for (let p = 0; p < positions; p++) {
            cols[cRow + p]! += w0 * dyRows[p]! + w1 * dyRows[positions + p]! + w2 * dyRows[2 * positions + p]! + w3 * dyRows[3 * positions + p]!;
          }
        }
      }
      for (; o < end; o++) {
        const dyRow = (n * g.outChannels + o) * positions;
        const wRow = o * taps;
        for (let k = 0; k < taps; k++) {
          const wv = w[wRow + k]!;
          const cRow = k * positions;
          for (let p = 0; p < positions; p++) cols[cRow + p]! += wv * dy[dyRow + p]!;
        }
      }
      col2imAdd(cols, n, group, g, acc);
    }
  }
  dx.set(acc);
}

/** dw = conv2dGradWeight(x, dy) of shape wShape = [O, C/groups, KH, KW]: Σ_n dy (im2col x)ᵀ. */
export function conv2dGradWeight(x: TypedArray, dy: TypedArray, xShape: Shape, dyShape: Shape, wShape: Shape, attrs: ConvAttrs, dw: TypedArray): void {
  const g = geometry(xShape, wShape, dyShape, attrs);
  const positions = g.oh * g.ow;
  const taps = g.cg * g.kh * g.kw;
  const cols = new Float64Array(taps * positions);
  const acc = new Float64Array(g.outChannels * taps);
  const dyRowBuf = new Float64Array(positions);
  for (let n = 0; n < g.batch; n++) {
    for (let group = 0; group < g.groups; group++) {
      im2col(x, n, group, g, cols);
      for (let o = group * g.og; o < (group + 1) * g.og; o++) {
        const dyRow = (n * g.outChannels + o) * positions;
        for (let p = 0; p < positions; p++) dyRowBuf[p] = dy[dyRow + p]!;
        // Four taps per pass: each dy value is loaded once for four dot products.
        let k = 0;
        for (; k + 4 <= taps; k += 4) {
          const c0 = k * positions, c1 = c0 + positions, c2 = c1 + positions, c3 = c2 + positions;
          let s0 = 0, s1 = 0, s2 = 0, s3 = 0;
          for (let p = 0; p < positions; p++) {
            const d = dyRowBuf[p]!;
            s0 += d * cols[c0 + p]!;
            s1 += d * cols[c1 + p]!;
            s2 += d * cols[c2 + p]!;
            s3 += d * cols[c3 + p]!;
          }
          acc[o * taps + k]! += s0;
          acc[o * taps + k + 1]! += s1;
          acc[o * taps + k + 2]! += s2;
          acc[o * taps + k + 3]! += s3;
        }
        for (; k < taps; k++) {
          const cRow = k * positions;
          let s = 0;
          for (let p = 0; p < positions; p++) s += dyRowBuf[p]! * cols[cRow + p]!;
          acc[o * taps + k]! += s;
        }
      }
    }
  }
  dw.set(acc);
}
