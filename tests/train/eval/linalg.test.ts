import assert from 'node:assert/strict';
import { test } from 'node:test';
import { gaussianStats, matmulSquare, sqrtPsd, symmetricEigen, traceSqrtProduct } from '../../../train/eval/linalg.ts';
import { splitmix32 } from '../../../train/data/prng.ts';

function close(actual: number, expected: number, tol: number, what: string): void {
  assert.ok(Math.abs(actual - expected) <= tol, `${what}: ${actual} vs ${expected} (tol ${tol})`);
}

/** A random symmetric PSD n x n matrix B B^T (rank r). */
function randomPsd(n: number, r: number, seed: number): Float64Array {
  const next = splitmix32(seed);
  const b = Float64Array.from({ length: n * r }, () => next() / 2 ** 32 - 0.5);
  const out = new Float64Array(n * n);
  for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) for (let k = 0; k < r; k++) out[i * n + j]! += b[i * r + k]! * b[j * r + k]!;
  return out;
}

test('symmetricEigen: [[2,1],[1,2]] has eigenvalues 1 and 3 with orthonormal eigenvectors', () => {
  const { values, vectors } = symmetricEigen(Float64Array.from([2, 1, 1, 2]), 2);
  assert.deepEqual([...values].map((v) => Math.round(v * 1e12) / 1e12).sort(), [1, 3]);
  const dot = vectors[0]! * vectors[1]! + vectors[2]! * vectors[3]!;
  close(dot, 0, 1e-12, 'orthogonal');
  close(vectors[0]! ** 2 + vectors[2]! ** 2, 1, 1e-12, 'unit length');
});

test('symmetricEigen reconstructs a random 40x40 symmetric matrix: V diag(l) V^T = A', () => {
  const n = 40;
  const a = randomPsd(n, 40, 3);
  for (let i = 0; i < n; i++) a[i * n + i]! -= 2; // indefinite too
  const { values, vectors } = symmetricEigen(a, n);
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < n; j++) {
      let s = 0;
      for (let k = 0; k < n; k++) s += vectors[i * n + k]! * values[k]! * vectors[j * n + k]!;
      close(s, a[i * n + j]!, 1e-10, `A[${i},${j}]`);
    }
  }
});

test('sqrtPsd: the root of [[5,4],[4,5]] is [[2,1],[1,2]], and a random PSD root squares back', () => {
  const r = sqrtPsd(Float64Array.from([5, 4, 4, 5]), 2);
  [2, 1, 1, 2].forEach((v, i) => close(r[i]!, v, 1e-12, `root[${i}]`));
  const n = 30;
  const a = randomPsd(n, 10, 7); // rank-deficient: zero eigenvalues must not break it
  const sq = matmulSquare(sqrtPsd(a, n), sqrtPsd(a, n), n);
  a.forEach((v, i) => close(sq[i]!, v, 1e-10, `root^2[${i}]`));
});

test('traceSqrtProduct: commuting diagonal matrices give sum sqrt(a_i b_i); symmetric in its arguments', () => {
  const a = Float64Array.from([4, 0, 0, 0, 9, 0, 0, 0, 1]);
  const b = Float64Array.from([1, 0, 0, 0, 4, 0, 0, 0, 16]);
  close(traceSqrtProduct(a, b, 3), 2 + 6 + 4, 1e-12, 'diagonal');
  const x = randomPsd(20, 20, 1);
  const y = randomPsd(20, 20, 2);
  close(traceSqrtProduct(x, y, 20), traceSqrtProduct(y, x, 20), 1e-9, 'Tr sqrt(XY) = Tr sqrt(YX)');
});

test('gaussianStats: mean and unbiased covariance of a small set', () => {
  const s = gaussianStats([1, 2, 3, 6, 5, 10], 3, 2);
  assert.deepEqual([...s.mean], [3, 6]);
  assert.deepEqual([...s.cov], [4, 8, 8, 16]);
});
