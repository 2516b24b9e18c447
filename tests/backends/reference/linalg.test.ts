import assert from 'node:assert/strict';
import { test } from 'node:test';
import { conv2d, conv2dGradInput, conv2dGradWeight, matmul, tensor, type ConvOptions } from '../../../core/ops.ts';
import { sizeOf } from '../../../core/shape.ts';
import { assertClose, evalCpu, randomValues, values } from './helpers.ts';

const f64 = (v: number[], shape: number[]) => tensor(v, shape, 'float64');
const dot = (a: ArrayLike<number>, b: ArrayLike<number>) => Array.from(a).reduce((s, v, i) => s + v * b[i]!, 0);

test('matmul by hand', async () => {
  assert.deepEqual(await values(matmul(tensor([[1, 2], [3, 4]]), tensor([[5, 6], [7, 8]]))), [19, 22, 43, 50]);
  assert.deepEqual(await values(matmul(tensor([[1, 2, 3]]), tensor([[1], [0], [-1]]))), [-2]);
});

test('batched matmul matches the definition, float32 is the float64 result rounded', async () => {
  const [b, m, k, n] = [3, 4, 5, 2];
  const a = randomValues(1, b * m * k);
  const c = randomValues(2, b * k * n);
  const expected: number[] = [];
  for (let t = 0; t < b; t++)
    for (let i = 0; i < m; i++)
      for (let j = 0; j < n; j++) {
        let s = 0;
        for (let p = 0; p < k; p++) s += a[(t * m + i) * k + p]! * c[(t * k + p) * n + j]!;
        expected.push(s);
      }
  const got64 = await values(matmul(f64(a, [b, m, k]), f64(c, [b, k, n])));
  assertClose(got64, expected, 1e-14, 'float64');
  const a32 = a.map(Math.fround);
  const c32 = c.map(Math.fround);
  const [ref] = await evalCpu(matmul(f64(a32, [b, m, k]), f64(c32, [b, k, n])));
  assertClose(await values(matmul(tensor(a32, [b, m, k]), tensor(c32, [b, k, n]))), Array.from(ref!, Math.fround), 0, 'float32');
});

test('matmul with an empty inner dimension is zeros', async () => {
  assert.deepEqual(await values(matmul(tensor([], [2, 0]), tensor([], [0, 3]))), [0, 0, 0, 0, 0, 0]);
});

interface ConvCase {
  x: [number, number, number, number];
  w: [number, number, number, number];
  opts: Required<ConvOptions> & { stride: [number, number]; padding: [number, number]; dilation: [number, number] };
}

const CASES: ConvCase[] = [
  { x: [2, 3, 5, 6], w: [4, 3, 3, 3], opts: { stride: [1, 1], padding: [1, 1], dilation: [1, 1], groups: 1 } },
  { x: [1, 2, 6, 7], w: [3, 2, 2, 3], opts: { stride: [2, 1], padding: [0, 2], dilation: [1, 2], groups: 1 } },
  { x: [2, 4, 7, 6], w: [6, 2, 3, 3], opts: { stride: [2, 2], padding: [1, 1], dilation: [1, 1], groups: 2 } },
  { x: [1, 3, 8, 5], w: [3, 1, 3, 2], opts: { stride: [1, 2], padding: [2, 1], dilation: [2, 1], groups: 3 } },
  { x: [2, 2, 7, 7], w: [5, 2, 1, 1], opts: { stride: [3, 3], padding: [0, 0], dilation: [1, 1], groups: 1 } },
];

/** conv2d from its definition over an explicitly zero-padded input, one output element at a time. */
function naiveConv(x: number[], w: number[], c: ConvCase): { y: number[]; shape: number[] } {
  const [n, ch, h, wd] = c.x;
  const [o, cg, kh, kw] = c.w;
  const { stride: [sh, sw], padding: [ph, pw], dilation: [dh, dw], groups } = c.opts;
  const [hp, wp] = [h + 2 * ph, wd + 2 * pw];
  const xp = (b: number, k: number, i: number, j: number) => {
    const [r, s] = [i - ph, j - pw];
    return r < 0 || r >= h || s < 0 || s >= wd ? 0 : x[((b * ch + k) * h + r) * wd + s]!;
  };
  const oh = Math.floor((hp - dh * (kh - 1) - 1) / sh) + 1;
  const ow = Math.floor((wp - dw * (kw - 1) - 1) / sw) + 1;
  const y: number[] = [];
  for (let b = 0; b < n; b++)
    for (let oc = 0; oc < o; oc++) {
      const g = Math.floor(oc / (o / groups));
      for (let i = 0; i < oh; i++)
        for (let j = 0; j < ow; j++) {
          let s = 0;
          for (let k = g * cg; k < (g + 1) * cg; k++)
            for (let a = 0; a < kh; a++)
              for (let e = 0; e < kw; e++) s += w[((oc * cg + (k - g * cg)) * kh + a) * kw + e]! * xp(b, k, i * sh + a * dh, j * sw + e * dw);
          y.push(s);
        }
    }
  return { y, shape: [n, o, oh, ow] };
}

test('conv2d matches its definition (stride, padding, dilation, groups)', async () => {
  for (const [i, c] of CASES.entries()) {
    const x = randomValues(10 + i, sizeOf(c.x));
    const w = randomValues(20 + i, sizeOf(c.w));
    const ref = naiveConv(x, w, c);
    const y = conv2d(f64(x, c.x), f64(w, c.w), c.opts);
    assert.deepEqual(y.shape, ref.shape);
    assertClose(await values(y), ref.y, 1e-13, `case ${i}`);
  }
});

test('conv2d in float32 is the float64 result of the same values, rounded', async () => {
  const c = CASES[2]!;
  const x = randomValues(3, sizeOf(c.x)).map(Math.fround);
  const w = randomValues(4, sizeOf(c.w)).map(Math.fround);
  const ref = await values(conv2d(f64(x, c.x), f64(w, c.w), c.opts));
  assertClose(await values(conv2d(tensor(x, c.x), tensor(w, c.w), c.opts)), ref.map(Math.fround), 0);
});

test('conv2dGradInput and conv2dGradWeight are the adjoints: <conv(x,w), dy> = <x, gradInput(dy,w)> = <w, gradWeight(x,dy)>', async () => {
  for (const [i, c] of CASES.entries()) {
    for (let draw = 0; draw < 3; draw++) {
      const seed = 100 * i + 10 * draw;
      const x = randomValues(seed + 1, sizeOf(c.x));
      const w = randomValues(seed + 2, sizeOf(c.w));
      const yShape = naiveConv(x, w, c).shape;
      const dy = randomValues(seed + 3, sizeOf(yShape));
      const gi = conv2dGradInput(f64(dy, yShape), f64(w, c.w), c.x, c.opts);
      const gw = conv2dGradWeight(f64(x, c.x), f64(dy, yShape), c.w, c.opts);
      assert.deepEqual(gi.shape, c.x);
      assert.deepEqual(gw.shape, c.w);
      const [y, dx, dw] = await evalCpu(conv2d(f64(x, c.x), f64(w, c.w), c.opts), gi, gw);
      const lhs = dot(y!, dy);
      assertClose([dot(x, dx!), dot(w, dw!)], [lhs, lhs], 1e-12, `case ${i} draw ${draw}`);
    }
  }
});

test('conv2dGradInput of a stride-2 1x1 kernel spreads dy onto the strided grid (transposed convolution)', async () => {
  const dy = tensor([[[[1, 2], [3, 4]]]]);
  const w = tensor([[[[10]]]]);
  assert.deepEqual(await values(conv2dGradInput(dy, w, [1, 1, 3, 4], { stride: 2 })), [10, 0, 20, 0, 0, 0, 0, 0, 30, 0, 40, 0]);
});

test('conv2dGradWeight by hand: a 1x1 kernel is the sum of x times dy', async () => {
  const x = tensor([[[[1, 2], [3, 4]]], [[[5, 6], [7, 8]]]]);
  const dy = tensor([[[[1, 0], [0, 1]]], [[[0, 1], [1, 0]]]]);
  assert.deepEqual(await values(conv2dGradWeight(x, dy, [1, 1, 1, 1])), [1 + 4 + 6 + 7]);
});
