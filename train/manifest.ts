/**
 * The codec of a checkpoint's manifest.json (see `checkpoint.ts` for the folder it describes). It
 * touches no file, so a browser can check a manifest it fetched.
 */
import * as t from 'io-ts';
import { integer, jsonValue, strictStruct } from './codecs.ts';

export const FORMAT = 'tessera-checkpoint';
export const VERSION = 1;

const int32 = integer(-(2 ** 31), 2 ** 31 - 1);
const sha256Hex = new t.Type<string, string, unknown>(
  'lowercase hex SHA-256 (64 characters)',
  (u): u is string => typeof u === 'string' && /^[0-9a-f]{64}$/.test(u),
  (u, c) => (typeof u === 'string' && /^[0-9a-f]{64}$/.test(u) ? t.success(u) : t.failure(u, c)),
  t.identity,
);

const FileEntry = strictStruct('file entry', { name: t.string, sha256: sha256Hex, bytes: integer(0) });

/**
 * The io-ts codec of a checkpoint's manifest.json (step, config, PRNG key, data position, file checksums).
 */
export const Manifest = strictStruct('checkpoint manifest', {
  format: t.literal(FORMAT),
  version: t.literal(VERSION),
  step: integer(0),
  config: jsonValue,
  prng_key: t.tuple([int32, int32], '[int32, int32]'),
  data_position: jsonValue,
  files: t.array(FileEntry),
}, { created: t.string });
/** A decoded checkpoint manifest. */
export type Manifest = t.TypeOf<typeof Manifest>;
