/**
 * Sample-quality metrics in a feature space, computed on the host in float64 from feature rows
 * (see features.ts for the features of images):
 *
 * - FD, the Fréchet distance between Gaussians fitted to two feature sets (FID's formula, Heusel
 *   et al. 2017, "GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash
 *   Equilibrium", eq. 6): ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^{1/2}); optionally with a
 *   bootstrap standard error (both sets resampled with replacement).
 * - KID (Binkowski et al. 2018, "Demystifying MMD GANs", Sec. 4 / eq. 4): the unbiased estimate of
 *   MMD^2 with the cubic polynomial kernel k(x, y) = (x.y / d + 1)^3, averaged over random subsets,
 *   with the jackknife standard error of the whole-set estimate. Unlike FD it is unbiased, so small
 *   sample counts compare fairly.
 * - Precision and recall of Kynkäänniemi et al. 2019 ("Improved Precision and Recall Metric for
 *   Assessing Generative Models", Sec. 2): each set's manifold is the union of balls around its
 *   points reaching their k-th nearest neighbour; precision is the fraction of generated points
 *   inside the real manifold (fidelity), recall the fraction of real points inside the generated
 *   one (coverage).
 */
import { TesseraError } from '../../core/errors.ts';
import { below, mixSeed, permutation, splitmix32 } from '../data/prng.ts';
import { gaussianStats, trace, traceSqrtProduct, type GaussianStats } from './linalg.ts';

/** Rows of features: `count` x `dim`, row-major. */
export interface FeatureSet {
  readonly count: number;
  readonly dim: number;
  readonly data: ArrayLike<number>;
}

export function featureSet(data: ArrayLike<number>, dim: number): FeatureSet {
  if (data.length % dim !== 0) throw new TesseraError(`featureSet: ${data.length} values are not rows of ${dim}`);
  return { count: data.length / dim, dim, data };
}

function sameDim(what: string, a: FeatureSet, b: FeatureSet): number {
  if (a.dim !== b.dim) throw new TesseraError(`${what}: feature sets of ${a.dim} and ${b.dim} dimensions`);
  return a.dim;
}

/** The Fréchet distance between two fitted Gaussians (Heusel et al. 2017, eq. 6). */
export function frechetDistanceOfStats(a: GaussianStats, b: GaussianStats): number {
  if (a.dim !== b.dim) throw new TesseraError(`frechetDistance: statistics of ${a.dim} and ${b.dim} dimensions`);
  const n = a.dim;
  let meanTerm = 0;
  for (let i = 0; i < n; i++) meanTerm += (a.mean[i]! - b.mean[i]!) ** 2;
  // Tr((S1 S2)^{1/2}) through the symmetric form: see linalg.ts traceSqrtProduct.
  const fd = meanTerm + trace(a.cov, n) + trace(b.cov, n) - 2 * traceSqrtProduct(a.cov, b.cov, n);
  // Rounding can leave a tiny negative number for identical sets; the distance is >= 0.
  return Math.max(fd, 0);
}

/** FD between two feature sets. */
export function frechetDistance(a: FeatureSet, b: FeatureSet): number {
  sameDim('frechetDistance', a, b);
  return frechetDistanceOfStats(gaussianStats(a.data, a.count, a.dim), gaussianStats(b.data, b.count, b.dim));
}

/** k(x, y) = (x.y / d + 1)^3 for rows i of a and j of b. */
function polyKernel(a: FeatureSet, i: number, b: FeatureSet, j: number): number {
  const d = a.dim;
  let dot = 0;
  for (let k = 0; k < d; k++) dot += a.data[i * d + k]! * b.data[j * d + k]!;
  return (dot / d + 1) ** 3;
}

function kernelMatrix(a: FeatureSet, b: FeatureSet, symmetric: boolean): Float64Array {
  const out = new Float64Array(a.count * b.count);
  for (let i = 0; i < a.count; i++) {
    for (let j = symmetric ? i : 0; j < b.count; j++) {
      const v = polyKernel(a, i, b, j);
      out[i * b.count + j] = v;
      if (symmetric) out[j * b.count + i] = v;
    }
  }
  return out;
}

export interface KidOptions {
  /** Subsets drawn (default 100). */
  readonly subsets?: number;
  /** Size of each subset, from each set (default min(1000, both counts)). */
  readonly subsetSize?: number;
  readonly seed?: number;
}

export interface Kid {
  readonly mean: number;
  /** Standard deviation over subsets. */
  readonly std: number;
  /** std / sqrt(subsets). Subsets overlap, so this understates the uncertainty of the mean somewhat. */
  readonly stderr: number;
  readonly subsets: number;
  readonly subsetSize: number;
  /**
   * The jackknife standard error of the whole-set estimate (the unbiased MMD^2 over every row of
   * both sets, which `mean` is when the subset size is both counts): the two-sample delete-one
   * jackknife, the variances from leaving out each row of `a` and each row of `b` added (Arvesen
   * 1969). Unlike `stderr` it measures how far the estimate would move with other samples; it errs
   * on the large side, most when the two distributions coincide (a degenerate U-statistic).
   */
  readonly jackknife: number;
}

/**
 * KID: per subset of m real and m generated rows, the unbiased MMD^2 (Binkowski et al. 2018, eq. 4;
 * Gretton et al. 2012, Lemma 6):
 *   1/(m(m-1)) sum_{i != j} k(x_i, x_j) + 1/(m(m-1)) sum_{i != j} k(y_i, y_j) - 2/m^2 sum_{i,j} k(x_i, y_j).
 * The kernel matrices are computed once; subsets only index them. Seeded, so repeatable.
 */
export function kernelInceptionDistance(a: FeatureSet, b: FeatureSet, options: KidOptions = {}): Kid {
  sameDim('kernelInceptionDistance', a, b);
  const m = options.subsetSize ?? Math.min(1000, a.count, b.count);
  const subsets = options.subsets ?? 100;
  if (m < 2 || m > a.count || m > b.count) throw new TesseraError(`kernelInceptionDistance: subset size ${m} must be in [2, min(${a.count}, ${b.count})]`);
  const kaa = kernelMatrix(a, a, true);
  const kbb = kernelMatrix(b, b, true);
  const kab = kernelMatrix(a, b, false);
  const values: number[] = [];
  for (let s = 0; s < subsets; s++) {
    const ia = permutation(a.count, mixSeed(options.seed ?? 0, s, 0)).subarray(0, m);
    const ib = permutation(b.count, mixSeed(options.seed ?? 0, s, 1)).subarray(0, m);
    let xx = 0;
    let yy = 0;
    let xy = 0;
    for (let p = 0; p < m; p++) {
      for (let q = 0; q < m; q++) {
        if (p !== q) {
          xx += kaa[ia[p]! * a.count + ia[q]!]!;
          yy += kbb[ib[p]! * b.count + ib[q]!]!;
        }
        xy += kab[ia[p]! * b.count + ib[q]!]!;
      }
    }
    values.push(xx / (m * (m - 1)) + yy / (m * (m - 1)) - (2 * xy) / (m * m));
  }
  const mean = values.reduce((s, v) => s + v, 0) / subsets;
  const std = subsets > 1 ? Math.sqrt(values.reduce((s, v) => s + (v - mean) ** 2, 0) / (subsets - 1)) : 0;
  return { mean, std, stderr: std / Math.sqrt(subsets), subsets, subsetSize: m, jackknife: kidJackknife(kaa, kbb, kab, a.count, b.count) };
}

/**
 * The delete-one jackknife standard error of the whole-set KID, from its kernel matrices. With
 * within-set sums S_aa = sum_{i != j} k(a_i, a_j) (and S_bb), the cross sum S_ab, and row l's
 * shares r_l = sum_{j != l} k(a_l, a_j) and c_l = sum_j k(a_l, b_j), leaving out a_l gives
 *   (S_aa - 2 r_l) / ((n-1)(n-2)) + S_bb / (m(m-1)) - 2 (S_ab - c_l) / ((n-1) m),
 * so every leave-one-out value costs O(1) once the row sums are known.
 */
function kidJackknife(kaa: Float64Array, kbb: Float64Array, kab: Float64Array, n: number, m: number): number {
  if (n < 3 || m < 3) return NaN;
  const within = (k: Float64Array, size: number) => {
    const rows = new Float64Array(size);
    for (let i = 0; i < size; i++) for (let j = 0; j < size; j++) if (i !== j) rows[i]! += k[i * size + j]!;
    return { rows, total: rows.reduce((s, r) => s + r, 0) };
  };
  const aa = within(kaa, n);
  const bb = within(kbb, m);
  const crossA = new Float64Array(n);
  const crossB = new Float64Array(m);
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < m; j++) {
      crossA[i]! += kab[i * m + j]!;
      crossB[j]! += kab[i * m + j]!;
    }
  }
  const sab = crossA.reduce((s, r) => s + r, 0);
  const variance = (values: Float64Array) => {
    const mean = values.reduce((s, v) => s + v, 0) / values.length;
    return ((values.length - 1) / values.length) * values.reduce((s, v) => s + (v - mean) ** 2, 0);
  };
  const leaveA = aa.rows.map((r, l) => (aa.total - 2 * r) / ((n - 1) * (n - 2)) + bb.total / (m * (m - 1)) - (2 * (sab - crossA[l]!)) / ((n - 1) * m));
  const leaveB = bb.rows.map((r, l) => aa.total / (n * (n - 1)) + (bb.total - 2 * r) / ((m - 1) * (m - 2)) - (2 * (sab - crossB[l]!)) / (n * (m - 1)));
  return Math.sqrt(variance(leaveA) + variance(leaveB));
}

/**
 * The bootstrap standard error of FD: the standard deviation of FD over `replicates` pairs of sets
 * drawn with replacement from `a` and from `b` (seeded). Both sets are resampled, so the error
 * covers the reference set's noise as well as the generated set's. Each replicate repeats the
 * duplicates it draws, which biases its FD upwards (FD's bias grows as the effective count falls);
 * the spread, not the level, is what is used.
 */
export function fdBootstrapStderr(a: FeatureSet, b: FeatureSet, options: { replicates: number; seed?: number }): number {
  const d = sameDim('fdBootstrapStderr', a, b);
  if (!(Number.isInteger(options.replicates) && options.replicates >= 2)) throw new TesseraError(`fdBootstrapStderr: replicates must be an integer >= 2, got ${options.replicates}`);
  const resample = (set: FeatureSet, next: () => number) => {
    const out = new Float64Array(set.count * d);
    for (let i = 0; i < set.count; i++) {
      const row = below(next, set.count);
      for (let k = 0; k < d; k++) out[i * d + k] = set.data[row * d + k]!;
    }
    return featureSet(out, d);
  };
  const values: number[] = [];
  for (let r = 0; r < options.replicates; r++) {
    const next = splitmix32(mixSeed(options.seed ?? 0, r, 0xb007));
    values.push(frechetDistance(resample(a, next), resample(b, next)));
  }
  const mean = values.reduce((s, v) => s + v, 0) / values.length;
  return Math.sqrt(values.reduce((s, v) => s + (v - mean) ** 2, 0) / (values.length - 1));
}

/** Squared Euclidean distances between rows of a and rows of b. */
function squaredDistances(a: FeatureSet, b: FeatureSet): Float64Array {
  const d = a.dim;
  const out = new Float64Array(a.count * b.count);
  for (let i = 0; i < a.count; i++) {
    for (let j = 0; j < b.count; j++) {
      let s = 0;
      for (let k = 0; k < d; k++) s += (a.data[i * d + k]! - b.data[j * d + k]!) ** 2;
      out[i * b.count + j] = s;
    }
  }
  return out;
}

/** Squared distance from each row to its k-th nearest other row (the ball radii of the manifold). */
function kthNeighbourRadii(set: FeatureSet, k: number): Float64Array {
  if (k >= set.count) throw new TesseraError(`precisionRecall: k = ${k} needs more than ${set.count} points`);
  const d = squaredDistances(set, set);
  const radii = new Float64Array(set.count);
  const row = new Float64Array(set.count);
  for (let i = 0; i < set.count; i++) {
    row.set(d.subarray(i * set.count, (i + 1) * set.count));
    row.sort();
    // row[0] is the point itself (distance 0); row[k] is the k-th nearest other point.
    radii[i] = row[k]!;
  }
  return radii;
}

/** Fraction of `queries` rows inside the manifold of `support` (rows with ball radii). */
function coverage(queries: FeatureSet, support: FeatureSet, radii: Float64Array): number {
  const d = squaredDistances(queries, support);
  let inside = 0;
  for (let i = 0; i < queries.count; i++) {
    for (let j = 0; j < support.count; j++) {
      if (d[i * support.count + j]! <= radii[j]!) {
        inside++;
        break;
      }
    }
  }
  return inside / queries.count;
}

export interface PrecisionRecall {
  readonly precision: number;
  readonly recall: number;
  readonly k: number;
}

/** Kynkäänniemi et al. 2019's improved precision and recall with k-NN balls (default k = 3, as the paper). */
export function precisionRecall(real: FeatureSet, generated: FeatureSet, k = 3): PrecisionRecall {
  sameDim('precisionRecall', real, generated);
  return {
    precision: coverage(generated, real, kthNeighbourRadii(real, k)),
    recall: coverage(real, generated, kthNeighbourRadii(generated, k)),
    k,
  };
}

/** All three, as an evaluation reports them. */
export interface SampleMetrics {
  readonly fd: number;
  /** FD's bootstrap standard error (`fdBootstrapStderr`), when asked for. */
  readonly fdStderr?: number;
  readonly kid: Kid;
  readonly precision: number;
  readonly recall: number;
  readonly k: number;
  readonly real: number;
  readonly generated: number;
}

export function sampleMetrics(real: FeatureSet, generated: FeatureSet, options: { kid?: KidOptions; k?: number; fdBootstrap?: number } = {}): SampleMetrics {
  const pr = precisionRecall(real, generated, options.k);
  return {
    fd: frechetDistance(real, generated),
    ...(options.fdBootstrap === undefined ? {} : { fdStderr: fdBootstrapStderr(real, generated, { replicates: options.fdBootstrap, seed: options.kid?.seed }) }),
    kid: kernelInceptionDistance(real, generated, options.kid),
    precision: pr.precision,
    recall: pr.recall,
    k: pr.k,
    real: real.count,
    generated: generated.count,
  };
}
