/** iota: a value made from attributes alone. (randomBits is `randomBitsHost` of core/threefry.ts.) */
import type { TypedArray } from '../../core/dtype.ts';
import { stridesOf, type Shape } from '../../core/shape.ts';

/** The index along `axis`; written as a number, so a bool iota is 0 then 1 (x != 0) for every later index. */
export function iota(shape: Shape, axis: number, bool: boolean, out: TypedArray): void {
  const stride = stridesOf(shape)[axis]!;
  const n = shape[axis]!;
  for (let i = 0; i < out.length; i++) {
    const v = Math.floor(i / stride) % n;
    out[i] = bool ? (v !== 0 ? 1 : 0) : v;
  }
}
