/**
 * PNG and JPEG bytes -> planar 8-bit pixels with 1 (grey) or 3 (RGB) channels. The format is
 * chosen by the file's magic bytes, not its name. Alpha is dropped (as PIL's convert('RGB') does,
 * which is what EDM's dataset tool uses); grey is ITU-R BT.601 luma, as PIL's convert('L').
 */
import { left, right, type Either } from 'fp-ts/lib/Either.js';
import jpeg from 'jpeg-js';
import { PNG } from 'pngjs';

/** A decoded PNG or JPEG: its size and its pixels as [C, H, W] bytes. */
export interface DecodedImage {
  readonly width: number;
  readonly height: number;
  readonly channels: 1 | 3;
  /** [channels, height, width] */
  readonly pixels: Uint8Array;
}

function isPng(b: Uint8Array): boolean {
  return b.length >= 8 && b[0] === 0x89 && b[1] === 0x50 && b[2] === 0x4e && b[3] === 0x47;
}

function isJpeg(b: Uint8Array): boolean {
  return b.length >= 3 && b[0] === 0xff && b[1] === 0xd8 && b[2] === 0xff;
}

function toPlanar(rgba: Uint8Array, width: number, height: number, channels: 1 | 3): Uint8Array {
  const n = width * height;
  const out = new Uint8Array(channels * n);
  for (let p = 0; p < n; p++) {
    const r = rgba[4 * p]!;
    const g = rgba[4 * p + 1]!;
    const b = rgba[4 * p + 2]!;
    if (channels === 1) {
      out[p] = Math.round((r * 299 + g * 587 + b * 114) / 1000);
    } else {
      out[p] = r;
      out[n + p] = g;
      out[2 * n + p] = b;
    }
  }
  return out;
}

/**
 * Decodes one image, or says why the bytes are not a readable PNG or JPEG (the caller adds the path).
 * @example
 * const image = decodeImage(await readFile('cat.png'), 3);   // Right({ width, height, channels: 3, pixels }) or Left(why)
 * if (image._tag === 'Left') throw new Error(`cat.png: ${image.left}`);
 */
export function decodeImage(bytes: Uint8Array, channels: 1 | 3): Either<string, DecodedImage> {
  let rgba: { width: number; height: number; data: Uint8Array };
  try {
    if (isPng(bytes)) rgba = PNG.sync.read(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength));
    else if (isJpeg(bytes)) rgba = jpeg.decode(bytes, { useTArray: true, formatAsRGBA: true, maxMemoryUsageInMB: 1024 });
    else return left(`not a PNG or JPEG file (first bytes: ${Buffer.from(bytes.subarray(0, 4)).toString('hex') || 'none, the file is empty'})`);
  } catch (e) {
    return left(`cannot be decoded: ${(e as Error).message}`);
  }
  if (rgba.width < 1 || rgba.height < 1 || rgba.data.length < 4 * rgba.width * rgba.height) {
    return left(`decoded to ${rgba.data.length} bytes, too few for ${rgba.width}x${rgba.height} pixels`);
  }
  return right({ width: rgba.width, height: rgba.height, channels, pixels: toPlanar(rgba.data, rgba.width, rgba.height, channels) });
}
