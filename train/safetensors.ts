/**
 * The safetensors format (https://github.com/huggingface/safetensors), the file PyTorch and JAX
 * users already exchange weights in:
 *
 *   [8 bytes: header length N, little-endian u64][N bytes: JSON header][data section]
 *
 * The header maps each tensor name to {dtype, shape, data_offsets: [begin, end]} (offsets relative
 * to the data section) plus an optional "__metadata__" map of strings. We write tensors sorted by
 * name, packed without gaps, and pad the header with spaces so the data section starts on an
 * 8-byte boundary (so a reader can view F64 data in place). Reading checks everything a malformed
 * or truncated file could get wrong and names the file and byte offset of the first problem.
 */
import { left, right, type Either } from 'fp-ts/lib/Either.js';
import * as t from 'io-ts';
import { allocate, matchesDType, type DType, type TypedArray } from '../core/dtype.ts';
import { fmtShape } from '../core/errors.ts';
import { sizeOf } from '../core/shape.ts';
import { integer } from './codecs.ts';
import { formatDecodeErrors } from './decodeErrors.ts';
import { SafetensorsError } from './errors.ts';
import { checkJsonDepth, MAX_JSON_DEPTH, topLevelKeyOffsets } from './jsonScan.ts';

/** A tensor's values on the host, as stored in a file. */
export interface HostTensor {
  readonly dtype: DType;
  readonly shape: readonly number[];
  readonly data: TypedArray;
}

/** A decoded safetensors file: tensors by name and the string metadata. */
export interface Safetensors {
  /** Tensors by name (sort the keys for file order: JS lists integer-like keys first). */
  readonly tensors: Readonly<Record<string, HostTensor>>;
  readonly metadata: Readonly<Record<string, string>>;
}

const FILE_DTYPE = { float32: 'F32', float64: 'F64', int32: 'I32', bool: 'BOOL' } as const satisfies Record<DType, string>;
type FileDType = (typeof FILE_DTYPE)[DType];
const FROM_FILE_DTYPE: Record<FileDType, DType> = { F32: 'float32', F64: 'float64', I32: 'int32', BOOL: 'bool' };
const BYTES: Record<DType, number> = { float32: 4, float64: 8, int32: 4, bool: 1 };

const METADATA_KEY = '__metadata__';

// Typed arrays are copied byte for byte; that is the file's little-endian layout only on a
// little-endian host, which every platform Tessera targets is. Fail loudly rather than silently.
const HOST_IS_LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;
function assertLittleEndianHost(): void {
  if (!HOST_IS_LITTLE_ENDIAN) throw new SafetensorsError('safetensors: big-endian hosts are not supported');
}

const TensorInfo = t.type({
  dtype: t.keyof({ F32: null, F64: null, I32: null, BOOL: null }),
  shape: t.array(integer(0)),
  data_offsets: t.tuple([integer(0), integer(0)]),
}, 'tensor info');

const Metadata = t.record(t.string, t.string, 'metadata of strings');

// ---------------------------------------------------------------- writing

/**
 * Serialises tensors (any names except "__metadata__") and string metadata. Throws a
 * SafetensorsError naming the entry when a shape does not match its data or the data's array type
 * is not the one for its dtype: these are programming errors, not bad input files.
 * @example
 * const bytes = encodeSafetensors({ weight: { dtype: 'float32', shape: [2, 2], data: new Float32Array([1, 2, 3, 4]) } }, { note: 'mine' });
 * const { tensors, metadata } = orThrow(decodeSafetensors(bytes, 'mine.safetensors'));
 */
export function encodeSafetensors(
  entries: Readonly<Record<string, HostTensor>>,
  metadata: Readonly<Record<string, string>> = {},
): Uint8Array {
  assertLittleEndianHost();
  const names = Object.keys(entries).sort();
  // Entries are collected as pairs and built with fromEntries, which defines own properties, so
  // even a name like "__proto__" is stored as a key (assignment would set the prototype instead).
  const header: [string, unknown][] = [];
  if (Object.keys(metadata).length > 0) header.push([METADATA_KEY, { ...metadata }]);
  let offset = 0;
  for (const name of names) {
    if (name === METADATA_KEY) throw new SafetensorsError(`safetensors: "${METADATA_KEY}" is reserved and cannot name a tensor`);
    const e = entries[name]!;
    if (!matchesDType(e.data, e.dtype)) {
      throw new SafetensorsError(`safetensors: tensor '${name}' has dtype ${e.dtype} but its data is a ${e.data.constructor.name}`);
    }
    if (e.shape.some((d) => !Number.isInteger(d) || d < 0) || sizeOf(e.shape) !== e.data.length) {
      throw new SafetensorsError(`safetensors: tensor '${name}' has ${e.data.length} values, not the ${sizeOf(e.shape)} of shape ${fmtShape(e.shape)}`);
    }
    const bytes = e.data.length * BYTES[e.dtype];
    header.push([name, { dtype: FILE_DTYPE[e.dtype], shape: [...e.shape], data_offsets: [offset, offset + bytes] }]);
    offset += bytes;
  }
  const json = new TextEncoder().encode(JSON.stringify(Object.fromEntries(header)));
  const headerLength = Math.ceil((8 + json.length) / 8) * 8 - 8;
  const out = new Uint8Array(8 + headerLength + offset);
  new DataView(out.buffer).setBigUint64(0, BigInt(headerLength), true);
  out.set(json, 8);
  out.fill(0x20, 8 + json.length, 8 + headerLength);
  let at = 8 + headerLength;
  for (const name of names) {
    const d = entries[name]!.data;
    out.set(new Uint8Array(d.buffer, d.byteOffset, d.byteLength), at);
    at += d.byteLength;
  }
  return out;
}

// ---------------------------------------------------------------- reading

/** The most header bytes we read (the reference implementation's limit is 100 MB). */
export const MAX_HEADER_BYTES = 100_000_000;

/**
 * Reads a safetensors file. `fileName` is named in every message. The result's typed arrays are
 * fresh copies (aligned, independent of `bytes`).
 *
 * Time is linear in the file's size: the header is scanned once for its nesting depth before
 * JSON.parse, and the byte offsets of tensor keys (for messages) are found in one more pass only
 * when there is something to report.
 * @example
 * const { tensors, metadata } = orThrow(decodeSafetensors(await readFile('model.safetensors'), 'model.safetensors'));
 * tensors['weight'];                                  // { dtype, shape, data }
 */
export function decodeSafetensors(bytes: Uint8Array, fileName: string): Either<SafetensorsError, Safetensors> {
  assertLittleEndianHost();
  try {
    return decode(bytes, fileName);
  } catch (e) {
    // Nothing below should throw; if something does, the message still names the file.
    return left(new SafetensorsError(`${fileName}: cannot be decoded (${(e as Error).message})`));
  }
}

function decode(bytes: Uint8Array, fileName: string): Either<SafetensorsError, Safetensors> {
  const fail = (msg: string): Either<SafetensorsError, Safetensors> => left(new SafetensorsError(`${fileName}: ${msg}`));
  if (bytes.length < 8) return fail(`file is ${bytes.length} bytes, too short for the 8-byte header length at byte 0`);
  const n = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength).getBigUint64(0, true);
  if (n > BigInt(bytes.length - 8)) return fail(`header length ${n} at byte 0 exceeds file size ${bytes.length}`);
  if (n > BigInt(MAX_HEADER_BYTES)) return fail(`header length ${n} at byte 0 is over the ${MAX_HEADER_BYTES}-byte limit`);
  const headerLength = Number(n);
  const dataStart = 8 + headerLength;
  const headerBytes = bytes.subarray(8, dataStart);
  let headerText: string;
  let raw: unknown;
  try {
    headerText = new TextDecoder('utf-8', { fatal: true }).decode(headerBytes);
  } catch {
    return fail(`header at bytes 8..${dataStart} is not valid UTF-8`);
  }
  // A valid header nests three levels (header, tensor info, shape); bound it before parsing.
  const depth = checkJsonDepth(headerBytes, MAX_JSON_DEPTH, 8);
  if (depth._tag === 'Left') return fail(`header at bytes 8..${dataStart}: ${depth.left}`);
  try {
    raw = JSON.parse(headerText);
  } catch (e) {
    return fail(`header at bytes 8..${dataStart} is not valid JSON (${(e as Error).message})`);
  }
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) return fail(`header at byte 8 is not a JSON object`);

  // File byte offset of a key in the header, for messages only: one pass over the header, on demand.
  let offsets: Map<string, number> | undefined;
  const keyOffset = (name: string): number => 8 + ((offsets ??= topLevelKeyOffsets(headerBytes)).get(name) ?? 0);

  const record = raw as Record<string, unknown>;
  let metadata: Record<string, string> = {};
  if (record[METADATA_KEY] !== undefined) {
    const m = Metadata.decode(record[METADATA_KEY]);
    if (m._tag === 'Left') return fail(`header "${METADATA_KEY}" at byte ${keyOffset(METADATA_KEY)}: ${formatDecodeErrors(m.left).join('; ')}`);
    metadata = m.right;
  }

  const names = Object.keys(record).filter((k) => k !== METADATA_KEY).sort();
  const infos: { name: string; info: t.TypeOf<typeof TensorInfo> }[] = [];
  for (const name of names) {
    const info = TensorInfo.decode(record[name]);
    if (info._tag === 'Left') return fail(`tensor '${name}' at header byte ${keyOffset(name)}: ${formatDecodeErrors(info.left).join('; ')}`);
    infos.push({ name, info: info.right });
  }

  // The data section must be covered exactly: no overlaps (two tensors sharing bytes), no gaps
  // (bytes no tensor owns, often a sign of truncation or a bad writer), nothing past the end.
  const dataLength = bytes.length - dataStart;
  const byBegin = [...infos].sort((a, b) => a.info.data_offsets[0] - b.info.data_offsets[0]);
  let covered = 0;
  let previous = '';
  for (const { name, info } of byBegin) {
    const [begin, end] = info.data_offsets;
    const dtype = FROM_FILE_DTYPE[info.dtype];
    const expected = sizeOf(info.shape) * BYTES[dtype];
    const where = (): string => `tensor '${name}' data_offsets [${begin},${end}] at header byte ${keyOffset(name)}`;
    if (end < begin || end - begin !== expected) {
      return fail(`${where()} do not match shape ${fmtShape(info.shape)} ${info.dtype} (${expected} bytes)`);
    }
    if (end > dataLength) {
      return fail(`${where()} reach past the end of the data section (file bytes ${dataStart + begin}..${dataStart + end}, file size ${bytes.length})`);
    }
    if (begin !== covered) {
      return fail(begin < covered
        ? `${where()} overlap '${previous}', which ends at data offset ${covered}`
        : `${where()} leave a gap of ${begin - covered} bytes at data offset ${covered} (file byte ${dataStart + covered})`);
    }
    covered = end;
    previous = name;
  }
  if (covered !== dataLength) {
    return fail(`data section at byte ${dataStart} has ${dataLength} bytes but the tensors cover ${covered} (trailing bytes from file byte ${dataStart + covered})`);
  }

  const tensors: [string, HostTensor][] = [];
  for (const { name, info } of infos) {
    const dtype = FROM_FILE_DTYPE[info.dtype];
    const [begin, end] = info.data_offsets;
    const data = allocate(dtype, sizeOf(info.shape));
    new Uint8Array(data.buffer).set(bytes.subarray(dataStart + begin, dataStart + end));
    if (dtype === 'bool') {
      const bad = data.findIndex((v) => v > 1);
      if (bad >= 0) return fail(`tensor '${name}' BOOL element ${bad} at file byte ${dataStart + begin + bad} is ${data[bad]}, not 0 or 1`);
    }
    tensors.push([name, { dtype, shape: Object.freeze([...info.shape]), data }]);
  }
  return right({ tensors: Object.fromEntries(tensors), metadata });
}
