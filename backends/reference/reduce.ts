/**
 * Sum and max over axes. The input is first permuted so that the reduced axes come last; each
 * output element is then the reduction of one contiguous run.
 *
 * Float sums accumulate in double and round once on store (the reference for WebGPU's float32
 * tree sums, compared with a tolerance). int32 sums wrap. max propagates NaN. Over an empty run,
 * sum is 0 and max is -Infinity (float) or INT32_MIN (int32); ops.ts rejects empty max, though.
 */
import { allocate, isFloat, type DType, type TypedArray } from '../../core/dtype.ts';
import { sizeOf, type Shape } from '../../core/shape.ts';
import { permute } from './movement.ts';

export function reduce(fn: 'sum' | 'max', x: TypedArray, inShape: Shape, axes: readonly number[], dtype: DType, out: TypedArray): void {
  const kept = inShape.map((_, d) => d).filter((d) => !axes.includes(d));
  const perm = [...kept, ...axes];
  let runs = x;
  if (perm.some((p, d) => p !== d)) {
    runs = allocate(dtype, x.length);
    permute(x, inShape, perm, runs);
  }
  const n = sizeOf(axes.map((d) => inShape[d]!));
  const float = isFloat(dtype);
  for (let o = 0; o < out.length; o++) {
    const base = o * n;
    if (fn === 'sum') {
      let acc = 0;
      if (float) for (let j = 0; j < n; j++) acc += runs[base + j]!;
      else for (let j = 0; j < n; j++) acc = (acc + runs[base + j]!) | 0;
      out[o] = acc;
    } else {
      let acc = float ? -Infinity : -2147483648;
      for (let j = 0; j < n; j++) {
        const v = runs[base + j]!;
        if (v > acc || v !== v) acc = v;
        if (acc !== acc) break;
      }
      out[o] = acc;
    }
  }
}
