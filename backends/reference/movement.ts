/**
 * Movement primitives as one strided copy: permute, broadcast and slice read the input through
 * strides; pad and concat write the input through strides into the output. Reshape copies nothing
 * (the interpreter passes the array through).
 */
import type { TypedArray } from '../../core/dtype.ts';
import { sizeOf, stridesOf, type Shape } from '../../core/shape.ts';

/**
 * For every index i of `shape` (row-major), dst[dstOffset + Σ i_d dstStrides_d] = src[srcOffset + Σ i_d srcStrides_d].
 * An odometer walks the outer axes; the last axis is a plain loop.
 */
export function copyStrided(
  shape: Shape,
  src: TypedArray,
  srcOffset: number,
  srcStrides: readonly number[],
  dst: TypedArray,
  dstOffset: number,
  dstStrides: readonly number[],
): void {
  const rank = shape.length;
  if (sizeOf(shape) === 0) return;
  if (rank === 0) {
    dst[dstOffset] = src[srcOffset]!;
    return;
  }
  const inner = shape[rank - 1]!;
  const sInner = srcStrides[rank - 1]!;
  const dInner = dstStrides[rank - 1]!;
  const counter = new Array<number>(rank).fill(0);
  let s = srcOffset;
  let d = dstOffset;
  for (;;) {
    for (let j = 0; j < inner; j++) dst[d + j * dInner] = src[s + j * sInner]!;
    let axis = rank - 2;
    for (; axis >= 0; axis--) {
      s += srcStrides[axis]!;
      d += dstStrides[axis]!;
      if (++counter[axis]! < shape[axis]!) break;
      s -= srcStrides[axis]! * shape[axis]!;
      d -= dstStrides[axis]! * shape[axis]!;
      counter[axis] = 0;
    }
    if (axis < 0) return;
  }
}

/** out[i_0, ..., i_r] = x[i at the positions of perm], i.e. out axis d is input axis perm[d]. */
export function permute(x: TypedArray, inShape: Shape, perm: readonly number[], out: TypedArray): void {
  const inStrides = stridesOf(inShape);
  const outShape = perm.map((p) => inShape[p]!);
  copyStrided(outShape, x, 0, perm.map((p) => inStrides[p]!), out, 0, stridesOf(outShape));
}

/** NumPy broadcasting: the input is right-aligned against the output; its size-1 axes repeat. */
export function broadcast(x: TypedArray, inShape: Shape, outShape: Shape, out: TypedArray): void {
  const inStrides = stridesOf(inShape);
  const lead = outShape.length - inShape.length;
  const srcStrides = outShape.map((_, d) => (d < lead || inShape[d - lead] === 1 ? 0 : inStrides[d - lead]!));
  copyStrided(outShape, x, 0, srcStrides, out, 0, stridesOf(outShape));
}

/** out[i] = x[start + i * step] per axis. */
export function slice(x: TypedArray, inShape: Shape, starts: readonly number[], steps: readonly number[], outShape: Shape, out: TypedArray): void {
  const inStrides = stridesOf(inShape);
  const offset = inStrides.reduce((acc, s, d) => acc + s * starts[d]!, 0);
  copyStrided(outShape, x, offset, inStrides.map((s, d) => s * steps[d]!), out, 0, stridesOf(outShape));
}

/** Fills with `value`, then writes x[i] at lo + i * (interior + 1) per axis. */
export function pad(
  x: TypedArray,
  inShape: Shape,
  lo: readonly number[],
  interior: readonly number[],
  value: number,
  outShape: Shape,
  out: TypedArray,
): void {
  out.fill(value);
  const outStrides = stridesOf(outShape);
  const offset = outStrides.reduce((acc, s, d) => acc + s * lo[d]!, 0);
  copyStrided(inShape, x, 0, stridesOf(inShape), out, offset, outStrides.map((s, d) => s * (interior[d]! + 1)));
}

/** The inputs one after another along `axis`. */
export function concat(xs: readonly TypedArray[], inShapes: readonly Shape[], axis: number, outShape: Shape, out: TypedArray): void {
  const outStrides = stridesOf(outShape);
  let start = 0;
  xs.forEach((x, i) => {
    const shape = inShapes[i]!;
    copyStrided(shape, x, 0, stridesOf(shape), out, start * outStrides[axis]!, outStrides);
    start += shape[axis]!;
  });
}

/** out[a, j, b] = x[a, clamp(idx[j], 0, n - 1), b] with a, b the indices before and after `axis`. */
export function gather(x: TypedArray, xShape: Shape, idx: TypedArray, axis: number, out: TypedArray): void {
  const outer = sizeOf(xShape.slice(0, axis));
  const n = xShape[axis]!;
  const inner = sizeOf(xShape.slice(axis + 1));
  let o = 0;
  for (let a = 0; a < outer; a++) {
    for (let j = 0; j < idx.length; j++) {
      const k = Math.min(Math.max(idx[j]!, 0), n - 1);
      const base = (a * n + k) * inner;
      for (let b = 0; b < inner; b++) out[o++] = x[base + b]!;
    }
  }
}
