import assert from 'node:assert/strict';
import { test } from 'node:test';
import { featureSet, frechetDistance, kernelInceptionDistance, precisionRecall } from '../../../train/eval/metrics.ts';

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
