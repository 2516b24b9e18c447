/**
 * Threefry-2x32 with 20 rounds (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11),
 * the Random123 variant that JAX uses: a counter-based generator, so value i is a pure function of
 * (key, i) and every backend can compute any element independently, bit for bit.
 *
 * The host functions here are the reference; `THREEFRY_WGSL` is the same function for WebGPU kernels.
 */

/** Rotation amounts of Threefry-2x32, cycled over rounds (Random123's R_32x2). */
export const THREEFRY_ROTATIONS = [13, 15, 26, 6, 17, 29, 16, 24] as const;
const ROTATIONS = THREEFRY_ROTATIONS;

/** The key-schedule parity constant of Threefish/Threefry for 32-bit words. */
export const THREEFRY_PARITY = 0x1bd11bda;
const KS_PARITY = THREEFRY_PARITY;

function rotl32(x: number, r: number): number {
  return ((x << r) | (x >>> (32 - r))) >>> 0;
}

/**
 * Encrypts the counter (x0, x1) under the key (k0, k1); all values are uint32 (inputs are taken
 * modulo 2^32, so int32 bit patterns work too). Returns two uint32 words.
 */
export function threefry2x32(k0: number, k1: number, x0: number, x1: number): [number, number] {
  const ks = [k0 >>> 0, k1 >>> 0, (KS_PARITY ^ k0 ^ k1) >>> 0] as const;
  let a = (x0 + ks[0]) >>> 0;
  let b = (x1 + ks[1]) >>> 0;
  for (let round = 0; round < 20; round++) {
    a = (a + b) >>> 0;
    b = rotl32(b, ROTATIONS[round % 8]!) ^ a;
    if (round % 4 === 3) {
      // Key injection s = 1..5 after every four rounds.
      const s = (round + 1) / 4;
      a = (a + ks[s % 3]!) >>> 0;
      b = (b + ks[(s + 1) % 3]! + s) >>> 0;
    }
  }
  return [a >>> 0, b >>> 0];
}

/**
 * The `randomBits` primitive on the host: out[i] = word (i mod 2) of threefry2x32(key, (0, c)) with
 * counter c = (offset + floor(i / 2)) mod 2^32, stored as int32 bit patterns.
 */
export function randomBitsHost(key0: number, key1: number, size: number, offset: number): Int32Array {
  const out = new Int32Array(size);
  for (let i = 0; i < size; i += 2) {
    const [w0, w1] = threefry2x32(key0, key1, 0, (offset + i / 2) >>> 0);
    out[i] = w0;
    if (i + 1 < size) out[i + 1] = w1;
  }
  return out;
}

/** The 'uniformFromBits' unary on one value: the top 24 bits as a float32 in [0, 1), exactly. */
export function uniformFromBitsScalar(bits: number): number {
  return (bits >>> 8) * 2 ** -24;
}

/** `uniformFromBitsScalar` over an array of int32 bits. */
export function uniformFromBitsHost(bits: Int32Array): Float32Array {
  const out = new Float32Array(bits.length);
  for (let i = 0; i < bits.length; i++) out[i] = uniformFromBitsScalar(bits[i]!);
  return out;
}

function wgslRounds(rotations: readonly number[]): string {
  return rotations.map((r) => `  v = threefry_round(v, ${r}u);`).join('\n');
}

function wgslInjection(s: number): string {
  return `  v = v + vec2<u32>(ks[${s % 3}], ks[${(s + 1) % 3}] + ${s}u);`;
}

/**
 * WGSL for `fn threefry2x32(k: vec2<u32>, x: vec2<u32>) -> vec2<u32>`, identical to `threefry2x32`
 * (u32 arithmetic wraps in WGSL; no rotation is 0, so no shift reaches 32).
 */
export const THREEFRY_WGSL = `
fn threefry_round(v: vec2<u32>, r: u32) -> vec2<u32> {
  let a = v.x + v.y;
  let b = ((v.y << r) | (v.y >> (32u - r))) ^ a;
  return vec2<u32>(a, b);
}

fn threefry2x32(k: vec2<u32>, x: vec2<u32>) -> vec2<u32> {
  let ks = array<u32, 3>(k.x, k.y, ${'0x' + KS_PARITY.toString(16)}u ^ k.x ^ k.y);
  var v = x + k;
${[1, 2, 3, 4, 5].map((s) => `${wgslRounds(s % 2 === 1 ? ROTATIONS.slice(0, 4) : ROTATIONS.slice(4))}\n${wgslInjection(s)}`).join('\n')}
  return v;
}
`;

/**
 * JavaScript source of `function threefryWord(k0, k1, c, w)`: word `w` (0 or 1) of
 * threefry2x32(key, (0, c)) as an int32 value, identical to `threefry2x32` and straight-line (for
 * kernels compiled from source text, which cannot close over this module).
 */
export const THREEFRY_JS = (() => {
  const lines = ['function threefryWord(k0, k1, c, w) {', '  const ks0 = k0 >>> 0, ks1 = k1 >>> 0, ks2 = (0x' + KS_PARITY.toString(16) + ' ^ k0 ^ k1) >>> 0;', '  let a = ks0, b = (c + ks1) >>> 0;'];
  const ks = ['ks0', 'ks1', 'ks2'];
  for (let round = 0; round < 20; round++) {
    const r = ROTATIONS[round % 8]!;
    lines.push(`  a = (a + b) >>> 0; b = (((b << ${r}) | (b >>> ${32 - r})) ^ a) >>> 0;`);
    if (round % 4 === 3) {
      const s = (round + 1) / 4;
      lines.push(`  a = (a + ${ks[s % 3]}) >>> 0; b = (b + ${ks[(s + 1) % 3]} + ${s}) >>> 0;`);
    }
  }
  lines.push('  return (w === 0 ? a : b) | 0;', '}');
  return lines.join('\n');
})();
