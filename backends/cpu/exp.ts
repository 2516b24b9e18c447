/**
 * exp on two f64 lanes, bit-identical to V8's Math.exp, so that fused kernels with exp and sigmoid
 * (SiLU is in every UNet block) need no call out of WebAssembly per element and still match the
 * reference, which computes with Math.exp.
 *
 * V8's Math.exp is fdlibm's `__ieee754_exp` (src/base/ieee754.cc, FreeBSD's variant: the result is
 * scaled by multiplying with 2^k, and exp(1) returns E exactly). Its steps, for finite |x| < 708:
 *   - |x| <= 0.5 ln2 (by the high word of x, as fdlibm tests it): k = 0, r = x; |x| < 2^-28: 1 + x;
 *   - otherwise k = (int)(x / ln2 +- 0.5) (toward zero), hi = x - k ln2HI (exact), lo = k ln2LO,
 *     r = hi - lo (fdlibm's separate branch for |x| < 1.5 ln2 gives the same k, hi and lo);
 *   - t = r^2, c = r - t (P1 + t (P2 + t (P3 + t (P4 + t P5)))),
 *     k = 0: 1 - ((r c) / (c - 2) - r); else (1 - ((lo - (r c) / (2 - c)) - hi)) * 2^k.
 * The branches become lane selects. Arguments outside (-708, 708) (overflow, underflow, subnormal
 * results) and NaN are the caller's to send to Math.exp itself (`EXP_FAST_LIMIT`).
 */
import type { FunctionBody, Local } from './wasm.ts';

/** |x| below which `emitExpF64x2` is exact; beyond it (or NaN) call Math.exp. */
export const EXP_FAST_LIMIT = 708;

/** The double with the given high and low 32-bit words. */
function fromWords(hi: number, lo: number): number {
  const u = new Uint32Array([lo >>> 0, hi >>> 0]);
  return new Float64Array(u.buffer)[0]!;
}

const LN2_HI = fromWords(0x3fe62e42, 0xfee00000);
const LN2_LO = fromWords(0x3dea39ef, 0x35793c76);
const INV_LN2 = fromWords(0x3ff71547, 0x652b82fe);
const P1 = fromWords(0x3fc55555, 0x5555553e);
const P2 = fromWords(0xbf66c16c, 0x16bebd93);
const P3 = fromWords(0x3f11566a, 0xaf25de2c);
const P4 = fromWords(0xbebbbd41, 0xc5d26bf1);
const P5 = fromWords(0x3e663769, 0x72bea4d0);
const E = fromWords(0x4005bf0a, 0x8b145769);
/** The smallest |x| whose high word exceeds 0x3fd62e42 (fdlibm's "|x| > 0.5 ln2"). */
const REDUCE_FROM = fromWords(0x3fd62e43, 0);
/** 2^-28 (fdlibm's "|x| < 2**-28", high word below 0x3e300000). */
const TINY_BELOW = fromWords(0x3e300000, 0);

/** Pushes exp of the two f64 lanes of `x` (each finite with |x| < EXP_FAST_LIMIT). */
export function emitExpF64x2(f: FunctionBody, x: Local): void {
  const splat = (v: number): void => {
    f.f64x2([v, v]);
  };
  const reduce = f.local('v128');
  const k = f.local('v128');
  const t = f.local('v128');
  const hi = f.local('v128');
  const lo = f.local('v128');
  const r = f.local('v128');
  const rr = f.local('v128');
  const c = f.local('v128');
  const q = f.local('v128');
  const y = f.local('v128');
  // reduce = |x| > 0.5 ln2 (all ones in the lanes that reduce).
  f.get(x).op('f64x2.abs');
  splat(REDUCE_FROM);
  f.op('f64x2.ge').set(reduce);
  // k = reduce ? (int)(x * invln2 + copysign(0.5, x)) : 0, as i32 lanes 0 and 1.
  f.get(x);
  splat(INV_LN2);
  f.op('f64x2.mul');
  splat(0.5);
  f.get(x);
  f.f64x2([-0, -0]).op('v128.and').op('v128.or').op('f64x2.add');
  f.op('i32x4.trunc_sat_f64x2_s_zero');
  // The 64-bit lane masks of `reduce` narrowed to i32 lanes 0 and 1 (lanes 2 and 3 zero).
  f.get(reduce).i32x4([0, 0, 0, 0]).shuffle([0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 16, 17, 18, 19]);
  f.op('v128.and').set(k);
  // t = k as f64; hi = x - t ln2HI; lo = t ln2LO; r = hi - lo.
  f.get(k).op('f64x2.convert_low_i32x4_s').set(t);
  f.get(x).get(t);
  splat(LN2_HI);
  f.op('f64x2.mul').op('f64x2.sub').set(hi);
  f.get(t);
  splat(LN2_LO);
  f.op('f64x2.mul').set(lo);
  f.get(hi).get(lo).op('f64x2.sub').set(r);
  // c = r - rr (P1 + rr (P2 + rr (P3 + rr (P4 + rr P5)))).
  f.get(r).get(r).op('f64x2.mul').set(rr);
  f.get(r).get(rr);
  splat(P1);
  f.get(rr);
  splat(P2);
  f.get(rr);
  splat(P3);
  f.get(rr);
  splat(P4);
  f.get(rr);
  splat(P5);
  f.op('f64x2.mul').op('f64x2.add').op('f64x2.mul').op('f64x2.add').op('f64x2.mul').op('f64x2.add').op('f64x2.mul').op('f64x2.add');
  f.op('f64x2.mul').op('f64x2.sub').set(c);
  // q = r c / (2 - c); r c / (c - 2) is exactly -q (c - 2 = -(2 - c), and division is sign-symmetric).
  f.get(r).get(c).op('f64x2.mul');
  splat(2);
  f.get(c).op('f64x2.sub').op('f64x2.div').set(q);
  // Reduced lanes: (1 - ((lo - q) - hi)) * 2^k, 2^k built from its exponent bits.
  splat(1);
  f.get(lo).get(q).op('f64x2.sub').get(hi).op('f64x2.sub').op('f64x2.sub');
  f.get(k).op('i64x2.extend_low_i32x4_s').i32x4([1023, 0, 1023, 0]).op('i64x2.add').i32(52).op('i64x2.shl');
  f.op('f64x2.mul');
  // Other lanes: 1 - (r c / (c - 2) - r) = 1 - (-q - r).
  splat(1);
  f.get(q).op('f64x2.neg').get(r).op('f64x2.sub').op('f64x2.sub');
  f.get(reduce).op('v128.bitselect');
  // |x| < 2^-28: 1 + x.
  f.set(y);
  splat(1);
  f.get(x).op('f64x2.add').get(y);
  f.get(x).op('f64x2.abs');
  splat(TINY_BELOW);
  f.op('f64x2.lt').op('v128.bitselect').set(y);
  // x = 1: E (V8's special case, which the formula misses by one bit).
  splat(E);
  f.get(y).get(x);
  splat(1);
  f.op('f64x2.eq').op('v128.bitselect');
}
