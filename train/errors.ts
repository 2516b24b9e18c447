/**
 * Errors at the boundary of the training layer: files, configs and data sources that cannot be
 * used. Boundary functions return an fp-ts `Either` whose Left is one of these; `orThrow` is for callers (scripts,
 * tests) that would rather fail fast. Every message names the file (or config path) and what was
 * wrong, so a user can fix the input without reading our code.
 */
import { isLeft, type Either } from 'fp-ts/lib/Either.js';
import { TesseraError } from '../core/errors.ts';

/** A safetensors file that cannot be read or an entry that cannot be written. */
export class SafetensorsError extends TesseraError {
  override readonly name = 'SafetensorsError';
}

/** A checkpoint that is missing, incomplete, corrupt, or written for another config. */
export class CheckpointError extends TesseraError {
  override readonly name = 'CheckpointError';
}

/** A config that does not decode; `lines` holds one line per problem, each starting with its path. */
export class ConfigError extends TesseraError {
  override readonly name = 'ConfigError';
  constructor(readonly lines: readonly string[]) {
    super(`invalid config:\n  ${lines.join('\n  ')}`);
  }
}

/** A data source that cannot be opened, or an image in it that cannot be decoded. */
export class DataError extends TesseraError {
  override readonly name = 'DataError';
}

/** A run that must stop: a non-finite loss, data that does not fit the model. */
export class TrainingError extends TesseraError {
  override readonly name = 'TrainingError';
}

/** A command line the CLI cannot take: an unknown command or flag, a missing or out-of-range value (exit code 2). */
export class UsageError extends TesseraError {
  override readonly name = 'UsageError';
}

/**
 * Unwraps a Right, or throws the Left (which is always an Error in this layer).
 * @example
 * const file = orThrow(decodeSafetensors(bytes, 'model.safetensors'));   // throws the SafetensorsError naming the file
 */
export function orThrow<E extends Error, A>(result: Either<E, A>): A {
  if (isLeft(result)) throw result.left;
  return result.right;
}
