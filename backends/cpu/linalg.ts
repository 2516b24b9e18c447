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

/** y = conv2d(x, w) of shape [N, O, OH, OW]. */
export function conv2d(x: TypedArray, w: TypedArray, xShape: Shape, wShape: Shape, yShape: Shape, attrs: ConvAttrs, y: TypedArray): void {
  const g = geometry(xShape, wShape, yShape, attrs);
  const plane = new Float64Array(g.oh * g.ow);
  for (let n = 0; n < g.batch; n++) {
    for (let o = 0; o < g.outChannels; o++) {
      const group = Math.floor(o / g.og);
      plane.fill(0);
      for (let c = 0; c < g.cg; c++) {
        const xPlane = (n * g.inChannels + group * g.cg + c) * g.h * g.w;
        for (let ky = 0; ky < g.kh; ky++) {
          const [oy0, oy1] = validRange(ky, g.h, g.oh, 0, attrs);
          for (let kx = 0; kx < g.kw; kx++) {
            const [ox0, ox1] = validRange(kx, g.w, g.ow, 1, attrs);
            const wv = w[((o * g.cg + c) * g.kh + ky) * g.kw + kx]!;
            const sx = attrs.stride[1];
            for (let oy = oy0; oy < oy1; oy++) {
              const xRow = xPlane + inputPos(oy, ky, 0, attrs) * g.w + inputPos(0, kx, 1, attrs);
              const pRow = oy * g.ow;
              for (let ox = ox0; ox < ox1; ox++) plane[pRow + ox]! += wv * x[xRow + ox * sx]!;
            }
          }
        }
      }
      y.set(plane, (n * g.outChannels + o) * g.oh * g.ow);
    }
  }
}

/** dx = conv2dGradInput(dy, w) of shape xShape = [N, C, H, W]: every dy element scattered back along the conv's index map. */
export function conv2dGradInput(dy: TypedArray, w: TypedArray, dyShape: Shape, wShape: Shape, xShape: Shape, attrs: ConvAttrs, dx: TypedArray): void {
  const g = geometry(xShape, wShape, dyShape, attrs);
  const plane = new Float64Array(g.h * g.w);
  for (let n = 0; n < g.batch; n++) {
    for (let ci = 0; ci < g.inChannels; ci++) {
      const group = Math.floor(ci / g.cg);
      const c = ci - group * g.cg;
      plane.fill(0);
      for (let o = group * g.og; o < (group + 1) * g.og; o++) {
        const dyPlane = (n * g.outChannels + o) * g.oh * g.ow;
        for (let ky = 0; ky < g.kh; ky++) {
          const [oy0, oy1] = validRange(ky, g.h, g.oh, 0, attrs);
          for (let kx = 0; kx < g.kw; kx++) {
            const [ox0, ox1] = validRange(kx, g.w, g.ow, 1, attrs);
            const wv = w[((o * g.cg + c) * g.kh + ky) * g.kw + kx]!;
            const sx = attrs.stride[1];
            for (let oy = oy0; oy < oy1; oy++) {
              const pRow = inputPos(oy, ky, 0, attrs) * g.w + inputPos(0, kx, 1, attrs);
              const dyRow = dyPlane + oy * g.ow;
              for (let ox = ox0; ox < ox1; ox++) plane[pRow + ox * sx]! += wv * dy[dyRow + ox]!;
            }
          }
        }
      }
      dx.set(plane, (n * g.inChannels + ci) * g.h * g.w);
    }
  }
}

/** dw = conv2dGradWeight(x, dy) of shape wShape = [O, C/groups, KH, KW]: x correlated with dy. */
export function conv2dGradWeight(x: TypedArray, dy: TypedArray, xShape: Shape, dyShape: Shape, wShape: Shape, attrs: ConvAttrs, dw: TypedArray): void {
  const g = geometry(xShape, wShape, dyShape, attrs);
  const sx = attrs.stride[1];
  for (let o = 0; o < g.outChannels; o++) {
    const group = Math.floor(o / g.og);
    for (let c = 0; c < g.cg; c++) {
      for (let ky = 0; ky < g.kh; ky++) {
        const [oy0, oy1] = validRange(ky, g.h, g.oh, 0, attrs);
        for (let kx = 0; kx < g.kw; kx++) {
          const [ox0, ox1] = validRange(kx, g.w, g.ow, 1, attrs);
          let acc = 0;
          for (let n = 0; n < g.batch; n++) {
            const xPlane = (n * g.inChannels + group * g.cg + c) * g.h * g.w;
            const dyPlane = (n * g.outChannels + o) * g.oh * g.ow;
            for (let oy = oy0; oy < oy1; oy++) {
              const xRow = xPlane + inputPos(oy, ky, 0, attrs) * g.w + inputPos(0, kx, 1, attrs);
              const dyRow = dyPlane + oy * g.ow;
              for (let ox = ox0; ox < ox1; ox++) acc += dy[dyRow + ox]! * x[xRow + ox * sx]!;
            }
          }
          dw[((o * g.cg + c) * g.kh + ky) * g.kw + kx] = acc;
        }
      }
    }
  }
}
