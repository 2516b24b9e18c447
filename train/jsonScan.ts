/**
 * Single-pass scans of JSON text, for files that may be hostile: bounding the nesting depth before
 * anything recursive (JSON.parse, io-ts, JSON.stringify in messages) sees the value, and finding the
 * byte offset of every top-level key at once (for messages), instead of searching the text once per
 * key. Both work on the raw UTF-8 bytes: JSON's structural characters are ASCII, and no byte of a
 * multi-byte UTF-8 sequence is below 0x80, so offsets are byte offsets in the file.
 */
import { left, right, type Either } from 'fp-ts/lib/Either.js';

/** The deepest nesting any file we read legitimately needs is far below this. */
export const MAX_JSON_DEPTH = 64;

const QUOTE = 0x22;
const BACKSLASH = 0x5c;
const OPEN_BRACE = 0x7b;
const CLOSE_BRACE = 0x7d;
const OPEN_BRACKET = 0x5b;
const CLOSE_BRACKET = 0x5d;
const COMMA = 0x2c;

/** The index just past the string that starts (with its quote) at `start`; bytes.length if unterminated. */
function skipString(bytes: Uint8Array, start: number): number {
  let i = start + 1;
  while (i < bytes.length) {
    const c = bytes[i]!;
    if (c === BACKSLASH) i += 2;
    else if (c === QUOTE) return i + 1;
    else i += 1;
  }
  return bytes.length;
}

/**
 * Left with a message naming the byte offset (`base` + index in `bytes`) where the nesting of
 * objects and arrays first exceeds `maxDepth`; Right otherwise. Does not check that the text is
 * valid JSON.
 */
export function checkJsonDepth(bytes: Uint8Array, maxDepth = MAX_JSON_DEPTH, base = 0): Either<string, void> {
  let depth = 0;
  for (let i = 0; i < bytes.length;) {
    const c = bytes[i]!;
    if (c === QUOTE) {
      i = skipString(bytes, i);
      continue;
    }
    if (c === OPEN_BRACE || c === OPEN_BRACKET) {
      depth += 1;
      if (depth > maxDepth) return left(`JSON nested deeper than ${maxDepth} levels at byte ${base + i}`);
    } else if (c === CLOSE_BRACE || c === CLOSE_BRACKET) {
      depth -= 1;
    }
    i += 1;
  }
  return right(undefined);
}

/**
 * The byte offset (relative to `bytes`) of the opening quote of each key of the top-level object,
 * in one pass; a repeated key maps to its last occurrence, the one JSON.parse keeps. Keys whose
 * text is not valid JSON are left out.
 */
export function topLevelKeyOffsets(bytes: Uint8Array): Map<string, number> {
  const out = new Map<string, number>();
  const decoder = new TextDecoder();
  let depth = 0;
  let expectKey = false;
  for (let i = 0; i < bytes.length;) {
    const c = bytes[i]!;
    if (c === QUOTE) {
      const end = skipString(bytes, i);
      if (depth === 1 && expectKey) {
        try {
          out.set(JSON.parse(decoder.decode(bytes.subarray(i, end))) as string, i);
        } catch {
          // An invalid key: JSON.parse of the whole header reports it.
        }
        expectKey = false;
      }
      i = end;
      continue;
    }
    if (c === OPEN_BRACE || c === OPEN_BRACKET) {
      depth += 1;
      expectKey = depth === 1 && c === OPEN_BRACE;
    } else if (c === CLOSE_BRACE || c === CLOSE_BRACKET) {
      depth -= 1;
    } else if (c === COMMA && depth === 1) {
      expectKey = true;
    }
    i += 1;
  }
  return out;
}

/**
 * JSON.parse with the nesting depth checked first, so a hostile file gets a message instead of
 * exhausting the stack in whatever walks the value next. Left: a message without the file name
 * (callers prefix it).
 */
export function parseJsonBounded(text: string | Uint8Array, maxDepth = MAX_JSON_DEPTH): Either<string, unknown> {
  const bytes = typeof text === 'string' ? new TextEncoder().encode(text) : text;
  const depth = checkJsonDepth(bytes, maxDepth);
  if (depth._tag === 'Left') return depth;
  try {
    return right(JSON.parse(typeof text === 'string' ? text : new TextDecoder().decode(text)) as unknown);
  } catch (e) {
    return left(`not valid JSON: ${(e as Error).message}`);
  }
}
