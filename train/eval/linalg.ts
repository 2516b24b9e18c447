/**
 * The little dense linear algebra the metrics need, on the host in float64: Gaussian statistics of
 * feature rows, a symmetric eigendecomposition, and square roots of symmetric positive
 * semi-definite matrices. Matrices are row-major Float64Arrays of n x n.
 *
 * Why not the tensor backends: Fréchet distances subtract large, nearly equal traces, so float32
 * would lose most digits (pytorch-fid computes in float64 with scipy for the same reason), and the
 * matrices are small (128 x 128), so host loops take milliseconds.
 */
import { TesseraError } from '../../core/errors.ts';

/** Mean and covariance of feature rows. */
export interface GaussianStats {
  readonly dim: number;
  readonly count: number;
  readonly mean: Float64Array;
  /** Row-major dim x dim, unbiased (divides by count - 1, as numpy.cov). */
  readonly cov: Float64Array;
}

/** Fits a Gaussian to `count` rows of `dim` features. */
export function gaussianStats(features: ArrayLike<number>, count: number, dim: number): GaussianStats {
  if (features.length !== count * dim) throw new TesseraError(`gaussianStats: ${features.length} values are not ${count} rows of ${dim}`);
  if (count < 2) throw new TesseraError(`gaussianStats: need at least 2 rows, got ${count}`);
  const mean = new Float64Array(dim);
  for (let i = 0; i < count; i++) for (let j = 0; j < dim; j++) mean[j]! += features[i * dim + j]!;
  for (let j = 0; j < dim; j++) mean[j]! /= count;
  const cov = new Float64Array(dim * dim);
  const row = new Float64Array(dim);
  for (let i = 0; i < count; i++) {
    for (let j = 0; j < dim; j++) row[j] = features[i * dim + j]! - mean[j]!;
    for (let a = 0; a < dim; a++) {
      const ra = row[a]!;
      if (ra === 0) continue;
      for (let b = a; b < dim; b++) cov[a * dim + b]! += ra * row[b]!;
    }
  }
  for (let a = 0; a < dim; a++) {
    for (let b = a; b < dim; b++) {
      const v = cov[a * dim + b]! / (count - 1);
      cov[a * dim + b] = v;
      cov[b * dim + a] = v;
    }
  }
  return { dim, count, mean, cov };
}

/** A x B for n x n matrices. */
export function matmulSquare(a: Float64Array, b: Float64Array, n: number): Float64Array {
  const out = new Float64Array(n * n);
  for (let i = 0; i < n; i++) {
    for (let k = 0; k < n; k++) {
      const aik = a[i * n + k]!;
      if (aik === 0) continue;
      for (let j = 0; j < n; j++) out[i * n + j]! += aik * b[k * n + j]!;
    }
  }
  return out;
}

export function trace(a: Float64Array, n: number): number {
  let s = 0;
  for (let i = 0; i < n; i++) s += a[i * n + i]!;
  return s;
}

/** Eigenvalues and eigenvectors of a symmetric matrix: A = V diag(values) V^T, columns of V. */
export interface SymmetricEigen {
  readonly values: Float64Array;
  /** Row-major n x n; column k is the eigenvector of values[k]. */
  readonly vectors: Float64Array;
}

/**
 * Cyclic Jacobi (Golub & Van Loan, Matrix Computations, Alg. 8.5.3; the rotation of Numerical
 * Recipes' `jacobi`): sweeps of plane rotations A <- J^T A J, each zeroing one off-diagonal pair,
 * until the off-diagonal mass is negligible. Slower than QR for big matrices but simple, accurate
 * to working precision for symmetric input, and converges quadratically (under 10 sweeps for our
 * sizes). Only the symmetric part of `a` is used.
 */
export function symmetricEigen(a: Float64Array, n: number, maxSweeps = 60): SymmetricEigen {
  if (a.length !== n * n) throw new TesseraError(`symmetricEigen: ${a.length} values are not ${n} x ${n}`);
  const m = new Float64Array(n * n);
  for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) m[i * n + j] = 0.5 * (a[i * n + j]! + a[j * n + i]!);
  const v = new Float64Array(n * n);
  for (let i = 0; i < n; i++) v[i * n + i] = 1;
  let total = 0;
  for (let i = 0; i < n * n; i++) total += m[i]! * m[i]!;
  for (let sweep = 0; sweep < maxSweeps; sweep++) {
    let off = 0;
    for (let p = 0; p < n; p++) for (let q = p + 1; q < n; q++) off += m[p * n + q]! ** 2;
    if (off <= 1e-30 * total || off === 0) break;
    for (let p = 0; p < n - 1; p++) {
      for (let q = p + 1; q < n; q++) {
        const apq = m[p * n + q]!;
        if (apq === 0) continue;
        const theta = (m[q * n + q]! - m[p * n + p]!) / (2 * apq);
        const t = (theta >= 0 ? 1 : -1) / (Math.abs(theta) + Math.sqrt(theta * theta + 1));
        const c = 1 / Math.sqrt(t * t + 1);
        const s = t * c;
        for (let k = 0; k < n; k++) {
          const akp = m[k * n + p]!;
          const akq = m[k * n + q]!;
          m[k * n + p] = c * akp - s * akq;
          m[k * n + q] = s * akp + c * akq;
        }
        for (let k = 0; k < n; k++) {
          const apk = m[p * n + k]!;
          const aqk = m[q * n + k]!;
          m[p * n + k] = c * apk - s * aqk;
          m[q * n + k] = s * apk + c * aqk;
        }
        for (let k = 0; k < n; k++) {
          const vkp = v[k * n + p]!;
          const vkq = v[k * n + q]!;
          v[k * n + p] = c * vkp - s * vkq;
          v[k * n + q] = s * vkp + c * vkq;
        }
      }
    }
  }
  const values = new Float64Array(n);
  for (let i = 0; i < n; i++) values[i] = m[i * n + i]!;
  return { values, vectors: v };
}

/**
 * The principal square root of a symmetric positive semi-definite matrix, V diag(sqrt(l)) V^T.
 * Eigenvalues that rounding left slightly negative are treated as 0.
 */
export function sqrtPsd(a: Float64Array, n: number): Float64Array {
  const { values, vectors } = symmetricEigen(a, n);
  const out = new Float64Array(n * n);
  for (let k = 0; k < n; k++) {
    const r = Math.sqrt(Math.max(values[k]!, 0));
    if (r === 0) continue;
    for (let i = 0; i < n; i++) {
      const vik = vectors[i * n + k]! * r;
      if (vik === 0) continue;
      for (let j = 0; j < n; j++) out[i * n + j]! += vik * vectors[j * n + k]!;
    }
  }
  return out;
}

/**
 * Tr((S1 S2)^{1/2}) for PSD S1, S2, through the symmetric form Tr((S1^{1/2} S2 S1^{1/2})^{1/2}):
 * S1 S2 is similar to S1^{1/2} S2 S1^{1/2}, which is symmetric PSD, so its eigenvalues are real and
 * non-negative and the trace of the root is the sum of their square roots. No complex arithmetic,
 * unlike scipy.linalg.sqrtm of the non-symmetric product.
 */
export function traceSqrtProduct(s1: Float64Array, s2: Float64Array, n: number): number {
  const r = sqrtPsd(s1, n);
  const { values } = symmetricEigen(matmulSquare(matmulSquare(r, s2, n), r, n), n);
  let sum = 0;
  for (const l of values) sum += Math.sqrt(Math.max(l, 0));
  return sum;
}
