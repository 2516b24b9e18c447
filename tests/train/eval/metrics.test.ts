import assert from 'node:assert/strict';
import { test } from 'node:test';
import { fdBootstrapStderr, featureSet, frechetDistance, kernelInceptionDistance, precisionRecall } from '../../../train/eval/metrics.ts';

/** `count` rows of `dim` independent N(shift, scale^2) features. */
function gaussianRows(count: number, dim: number, seed: number, shift = 0, scale = 1) {
  let s = seed >>> 0;
  const next = () => {
    s = (Math.imul(s ^ (s >>> 15), 0x2c1b3c6d) + 0x6d2b79f5) >>> 0;
    return (s + 1) / 2 ** 32;
  };
  return featureSet(Float64Array.from({ length: count * dim }, () => shift + scale * Math.sqrt(-2 * Math.log(next())) * Math.cos(2 * Math.PI * next())), dim);
}

test('FD of 1-D Gaussians matches (m1 - m2)^2 + (s1 - s2)^2', () => {
  // Two exact 2-point sets: means 0 and 3, sample variances 2 and 8 (std sqrt2, 2 sqrt2).
  const a = featureSet([-1, 1], 1);
  const b = featureSet([1, 5], 1);
  const fd = frechetDistance(a, b);
  assert.ok(Math.abs(fd - (9 + (Math.SQRT2 - 2 * Math.SQRT2) ** 2)) < 1e-12, `${fd}`);
});

test('FD is symmetric and near 0 for samples of the same Gaussian; far larger for a shifted one', () => {
  const a = gaussianRows(2000, 8, 1);
  const b = gaussianRows(2000, 8, 2);
  const c = gaussianRows(2000, 8, 3, 0.5);
  const ab = frechetDistance(a, b);
  assert.ok(Math.abs(ab - frechetDistance(b, a)) < 1e-9);
  assert.ok(ab < 0.05, `same distribution: ${ab}`);
  assert.ok(frechetDistance(a, c) > 1.5, `shifted by 0.5 in 8 dims: ${frechetDistance(a, c)} (expected about 2)`);
});

test('KID is about 0 (within 3 standard errors) for the same distribution and clearly positive for another', () => {
  const a = gaussianRows(400, 8, 4);
  const b = gaussianRows(400, 8, 5);
  const c = gaussianRows(400, 8, 6, 0, 1.5);
  const same = kernelInceptionDistance(a, b, { subsets: 20, subsetSize: 200 });
  assert.ok(Math.abs(same.mean) < 3 * same.std, `same: ${same.mean} +- ${same.std}`);
  const other = kernelInceptionDistance(a, c, { subsets: 20, subsetSize: 200 });
  assert.ok(other.mean > 10 * same.std && other.mean > 0, `other: ${other.mean}`);
});

test('precision and recall: a set covers itself; a disjoint cluster is neither precise nor covering', () => {
  const a = gaussianRows(300, 4, 7);
  assert.deepEqual(precisionRecall(a, a, 3), { precision: 1, recall: 1, k: 3 });
  const far = gaussianRows(300, 4, 8, 20);
  const pr = precisionRecall(a, far, 3);
  assert.equal(pr.precision, 0);
  assert.equal(pr.recall, 0);
  // A generator collapsed onto half the data: precise, but recall falls.
  const half = featureSet(Float64Array.from(a.data).filter((_, i) => (a.data[i - (i % 4)] as number) > 0), 4);
  const collapsed = precisionRecall(a, half, 3);
  assert.ok(collapsed.precision > 0.95 && collapsed.recall < 0.8, JSON.stringify(collapsed));
});

const spread = (xs: readonly number[]) => {
  const m = xs.reduce((s, x) => s + x, 0) / xs.length;
  return Math.sqrt(xs.reduce((s, x) => s + (x - m) ** 2, 0) / (xs.length - 1));
};

test('KID\'s jackknife standard error equals the brute-force leave-one-out jackknife and matches the spread over fresh samples', () => {
  const a = gaussianRows(30, 3, 11);
  const b = gaussianRows(25, 3, 12, 0.3);
  // Brute force: the whole-set estimate with one row left out, from scratch.
  const k = (x: ArrayLike<number>, i: number, y: ArrayLike<number>, j: number) => ((x[i * 3]! * y[j * 3]! + x[i * 3 + 1]! * y[j * 3 + 1]! + x[i * 3 + 2]! * y[j * 3 + 2]!) / 3 + 1) ** 3;
  const mmd = (x: number[], y: number[]) => {
    let xx = 0; let yy = 0; let xy = 0;
    for (const i of x) for (const j of x) if (i !== j) xx += k(a.data, i, a.data, j);
    for (const i of y) for (const j of y) if (i !== j) yy += k(b.data, i, b.data, j);
    for (const i of x) for (const j of y) xy += k(a.data, i, b.data, j);
    return xx / (x.length * (x.length - 1)) + yy / (y.length * (y.length - 1)) - (2 * xy) / (x.length * y.length);
  };
  const rowsA = Array.from({ length: a.count }, (_, i) => i);
  const rowsB = Array.from({ length: b.count }, (_, i) => i);
  const jackVar = (values: number[]) => {
    const m = values.reduce((s, v) => s + v, 0) / values.length;
    return ((values.length - 1) / values.length) * values.reduce((s, v) => s + (v - m) ** 2, 0);
  };
  const expected = Math.sqrt(jackVar(rowsA.map((l) => mmd(rowsA.filter((i) => i !== l), rowsB))) + jackVar(rowsB.map((l) => mmd(rowsA, rowsB.filter((j) => j !== l)))));
  const kid = kernelInceptionDistance(a, b, { subsets: 3, subsetSize: 20 });
  assert.ok(Math.abs(kid.jackknife - expected) < 1e-9 * Math.max(1, expected), `${kid.jackknife} vs ${expected}`);
  // On average over draws, against the spread of whole-set KIDs over fresh draws of both sets: close, on the
  // conservative side (the jackknife overstates a U-statistic's variance somewhat).
  const fresh = Array.from({ length: 40 }, (_, s) => kernelInceptionDistance(gaussianRows(150, 4, 100 + s), gaussianRows(150, 4, 200 + s, 0.3), { subsets: 1, subsetSize: 150 }));
  const ratio = fresh.reduce((s, f) => s + f.jackknife, 0) / fresh.length / spread(fresh.map((f) => f.mean));
  assert.ok(ratio > 0.8 && ratio < 1.6, `mean jackknife over the spread of fresh samples: ${ratio}`);
});

test('FD\'s bootstrap standard error is seeded and matches the spread of FD over fresh samples', () => {
  const a = gaussianRows(300, 4, 21);
  const b = gaussianRows(300, 4, 22, 0.3);
  const se = fdBootstrapStderr(a, b, { replicates: 40, seed: 1 });
  assert.equal(fdBootstrapStderr(a, b, { replicates: 40, seed: 1 }), se);
  const fresh = Array.from({ length: 40 }, (_, s) => [gaussianRows(300, 4, 400 + s), gaussianRows(300, 4, 500 + s, 0.3)] as const);
  const meanSe = fresh.slice(0, 10).reduce((acc, [x, y], s) => acc + fdBootstrapStderr(x, y, { replicates: 40, seed: s }), 0) / 10;
  const ratio = meanSe / spread(fresh.map(([x, y]) => frechetDistance(x, y)));
  assert.ok(ratio > 0.7 && ratio < 1.4, `mean bootstrap s.e. over the spread of fresh samples: ${ratio}`);
  assert.throws(() => fdBootstrapStderr(a, b, { replicates: 1 }), /replicates must be an integer >= 2/);
});
