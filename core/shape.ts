import { ShapeError, fmtShape } from './errors.ts';

/** Dimensions, outermost first: `[batch, channels, height, width]` for images. */
export type Shape = readonly number[];

/**
 * The number of elements of a shape (1 for `[]`).
 * @example
 * sizeOf([2, 3, 4]);                                  // 24
 */
export function sizeOf(shape: Shape): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

/**
 * Row-major strides.
 * @example
 * stridesOf([2, 3, 4]);                               // [12, 4, 1]
 */
export function stridesOf(shape: Shape): number[] {
  const s = new Array<number>(shape.length);
  let acc = 1;
  for (let i = shape.length - 1; i >= 0; i--) {
    s[i] = acc;
    acc *= shape[i]!;
  }
  return s;
}

/**
 * Whether two shapes are the same.
 * @example
 * shapesEqual(x.shape, [2, 3]);
 */
export function shapesEqual(a: Shape, b: Shape): boolean {
  return a.length === b.length && a.every((d, i) => d === b[i]);
}

/**
 * NumPy broadcasting of two shapes; throws a ShapeError that names `op`.
 * @example
 * broadcastShapes('myOp', [4, 1, 3], [5, 1]);         // [4, 5, 3]
 * broadcastShapes('myOp', [2], [3]);                  // throws a ShapeError naming myOp
 */
export function broadcastShapes(op: string, a: Shape, b: Shape): number[] {
  const rank = Math.max(a.length, b.length);
  const out = new Array<number>(rank);
  for (let i = 0; i < rank; i++) {
    const da = a[a.length - rank + i] ?? 1;
    const db = b[b.length - rank + i] ?? 1;
    if (da !== db && da !== 1 && db !== 1) {
      throw new ShapeError(`${op}: shapes cannot be broadcast: ${fmtShape(a)} and ${fmtShape(b)} (axis ${i - rank}: ${da} vs ${db})`);
    }
    out[i] = da === 1 ? db : da;
  }
  return out;
}

/**
 * Normalises possibly negative axes against a rank; checks range and duplicates.
 * @example
 * normalizeAxes('myOp', [-1, 0], 4);                  // [0, 3] (sorted)
 */
export function normalizeAxes(op: string, axes: readonly number[], rank: number): number[] {
  const out = axes.map((a) => {
    if (!Number.isInteger(a) || a < -rank || a >= rank) {
      throw new ShapeError(`${op}: axis ${a} is out of range for rank ${rank}`);
    }
    return a < 0 ? a + rank : a;
  });
  if (new Set(out).size !== out.length) throw new ShapeError(`${op}: repeated axis in [${axes.join(',')}]`);
  return out.sort((x, y) => x - y);
}

/**
 * `axis` made non-negative for `rank` (-1 is the last); throws a ShapeError naming `op` when out of range.
 * @example
 * normalizeAxis('myOp', -1, 4);                       // 3
 */
export function normalizeAxis(op: string, axis: number, rank: number): number {
  return normalizeAxes(op, [axis], rank)[0]!;
}

/**
 * Throws a ShapeError naming `op` unless `shape` holds non-negative integers.
 * @example
 * checkShape('myOp', [2, 3]);                         // fine
 * checkShape('myOp', [2, 1.5]);                       // throws a ShapeError naming myOp
 */
export function checkShape(op: string, shape: Shape): void {
  for (const d of shape) {
    if (!Number.isInteger(d) || d < 0) throw new ShapeError(`${op}: invalid shape ${fmtShape(shape)} (dimensions must be integers >= 0)`);
  }
}
