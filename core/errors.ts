/** Typed errors. Every message names the operation and the values that were wrong. */
export class TesseraError extends Error {
  override readonly name: string = 'TesseraError';
}

/** A shape or attribute that an op cannot accept, e.g. `matmul: inner dimensions differ: [2,3] x [4,5]`. */
export class ShapeError extends TesseraError {
  override readonly name = 'ShapeError';
}

/** An element type that an op cannot accept. */
export class DTypeError extends TesseraError {
  override readonly name = 'DTypeError';
}

/** Pytrees that do not match, or a value where a tensor was expected. */
export class TreeError extends TesseraError {
  override readonly name = 'TreeError';
}

/** A failure inside a backend: device loss, validation, out of memory. Names program and kernel. */
export class BackendError extends TesseraError {
  override readonly name = 'BackendError';
}

/**
 * A shape as messages print it: `[2,3]`.
 * @example
 * fmtShape([2, 3]);                                   // '[2,3]'
 */
export function fmtShape(shape: readonly number[]): string {
  return `[${shape.join(',')}]`;
}
